// OpenPath: the one way src/cli and tools/ open an image by path as a Device.
//
// The caller says how files are opened (its FileOpener: descriptors, locks,
// O_DIRECT, a descriptor per queue thread) and what the user asked for; this
// function owns everything else: the format (named or probed), the backing
// chain (always read-only, in the format the image names), the data file
// (--data-file, or the image's name under the host-path policy of
// named_file.h), --allow-devices, snapshots, cache budgets, O_DIRECT
// alignment and metadata write-through.
//
// Thread-safety: runs on the event loop of the calling thread; the opener is
// called on it.
#ifndef UQ_SRC_ENGINE_OPEN_PATH_H_
#define UQ_SRC_ENGINE_OPEN_PATH_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "src/engine/device.h"
#include "src/engine/image.h"
#include "src/io/block_file.h"
#include "src/io/task.h"

namespace uq::engine {

struct PathOptions {
  ImageFormat format = ImageFormat::kAuto;  // kAuto: qcow2 if the magic says so
  bool read_only = false;
  std::string snapshot;  // serve this internal snapshot (read-only)
  // Metadata cache budgets in bytes; 0 = the engine's default (image.h).
  uint64_t l2_cache_bytes = 0;
  uint64_t refcount_cache_bytes = 0;
  // > 1: the files need I/O aligned to this many bytes (O_DIRECT).
  uint32_t file_alignment_bytes = 0;
  // Writable opens: metadata written through before each request completes
  // (OpenOptions::metadata_writethrough).
  bool metadata_writethrough = false;
  // --data-file PATH: the user names the external data file; it replaces the
  // header's name and may be opened writable wherever it lies.
  std::string data_file;
  // --allow-devices: block devices named by the image may be opened
  // (named_file.h: other special files never are).
  bool allow_devices = false;
  // Opens the image (OpenPath only), its backing files (writable = false)
  // and its data file. Required.
  FileOpener opener;
};

// Opens the image at `path` through options.opener (writable unless
// options.read_only). Errors are one line (the caller adds the image name).
Task<absl::StatusOr<std::unique_ptr<Device>>> OpenPath(const std::string& path,
                                                       PathOptions options);

// The same for the image file the caller already opened (and locked), e.g. to
// choose the alignment from how that open went.
Task<absl::StatusOr<std::unique_ptr<Device>>> OpenPathOnFile(const std::string& path,
                                                             std::unique_ptr<io::BlockFile> file,
                                                             PathOptions options);

}  // namespace uq::engine

#endif  // UQ_SRC_ENGINE_OPEN_PATH_H_
