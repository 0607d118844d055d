// Opening images as Devices: qcow2 (with its backing chain and data file) or
// raw. This is the engine's entry point for src/ublk, src/cli and tools/.
#ifndef UQ_SRC_ENGINE_IMAGE_H_
#define UQ_SRC_ENGINE_IMAGE_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "src/engine/device.h"
#include "src/engine/named_file.h"
#include "src/io/block_file.h"
#include "src/io/task.h"

namespace uq::engine {

// Opens a file named by an image (backing file, external data file). `path` is
// already resolved against the naming image's directory.
using FileOpener = std::function<absl::StatusOr<std::unique_ptr<io::BlockFile>>(
    const std::string& path, bool writable)>;

enum class ImageFormat { kAuto, kQcow2, kRaw };

struct OpenOptions {
  ImageFormat format = ImageFormat::kAuto;  // kAuto: qcow2 if the magic says so
  bool read_only = false;
  // Metadata cache budgets in bytes; 0 = default (QEMU-like: the L2 cache
  // covers a 64 GiB image at 64 KiB clusters, i.e. 8 MiB of L2 entries).
  uint64_t l2_cache_bytes = 0;
  uint64_t refcount_cache_bytes = 0;
  // Serve the named internal snapshot (read-only) instead of the active layer.
  std::string snapshot;
  // Path of the image itself; relative backing / data file names are resolved
  // against its directory.
  std::string path;
  // How to open backing files (always read-only) and the external data file.
  FileOpener opener;
  // Backing chain depth still allowed below this image (guards against
  // loops such as a -> b -> a). Decremented for each backing file.
  uint32_t max_backing_depth = 64;
  // > 1: the files need I/O aligned to this many bytes (O_DIRECT: 4096). The
  // image, backing and data files are then wrapped in an AlignedFile, which
  // bounces and read-modify-writes whatever the engine issues unaligned.
  uint32_t file_alignment_bytes = 0;
  // Writable opens: every Write / Discard / WriteZeroes / WriteCompressed
  // writes the metadata it changed (L2 slices, refcount blocks, L1) to the
  // image file before it completes, without fsync, so a killed process loses
  // no completed request (the page cache survives it; ublk user recovery).
  // Power-loss safety comes from the header's dirty bit, set durably before
  // the first change (refcounts are rebuilt on the next writable open), so
  // refcount / L2 write order needs no fsync. Version 2 images have no dirty
  // bit: there each request that writes L2 slices keeps the refcount-flush +
  // fsync before them (correct, slower). Flush keeps its full fsync sequence.
  bool metadata_writethrough = false;

  // Host-path policy for the files the image names (named_file.h). OpenPath
  // turns it on; engine tests over in-memory files, whose names are not host
  // paths, leave it off.
  bool check_named_files = false;
  // Block devices named by the image may be opened.
  bool allow_devices = false;
  // The data file the user named (--data-file): used instead of the name in
  // the header and opened as asked wherever it lies. Only for an image with
  // an external data file.
  std::string data_file_path;
  // Set by the open of an overlay for a backing file whose format the overlay
  // does not name: the format is probed, and if the file looks like qcow2 its
  // own backing and data files are not followed (a raw disk whose guest wrote
  // a qcow2 header there must not make us open host files it names).
  struct UnnamedFormat {
    std::string overlay_path;  // the overlay, for the message
    std::string backing_name;  // the backing file's name as the overlay writes it
  };
  std::optional<UnnamedFormat> unnamed_format;
  // With check_named_files: the images above this one in its backing chain,
  // top first, by identity, so that a backing or data file that is one of
  // them (or this image), under any name, is refused (named_file.h).
  std::vector<ChainImage> images_above;
};

// Opens `file` as a Device. Errors are one line naming the problem (bad
// magic, unsupported feature, corrupt bit on a writable open, ...). A file
// opened as raw because probing (kAuto) found no qcow2 magic refuses writes
// that would put the qcow2 magic in its first sector (RawDevice::Format::kProbed),
// so it stays raw on the next probe; a raw image has no snapshot and no data
// file to override.
Task<absl::StatusOr<std::unique_ptr<Device>>> OpenImage(std::unique_ptr<io::BlockFile> file,
                                                        OpenOptions options);

}  // namespace uq::engine

#endif  // UQ_SRC_ENGINE_IMAGE_H_
