// The host-path policy for files an image names (its backing file, its
// external data file). Images are untrusted input: a guest writes most of
// their bytes, and `mount` exists to open images of unknown origin. So a name
// in an image header may only reach:
//  - regular files, and block devices only with --allow-devices. Character
//    devices, FIFOs, sockets and directories are never opened: they cannot
//    hold an image (io::UringFile serves regular files and block devices),
//    and opening a FIFO would block;
//  - for writing, only a data file in the image's own directory, compared
//    after resolving both (so neither "../" nor a symlink leads out of it).
//    A data file elsewhere is opened read-only, or writable when the user
//    names it with --data-file (then this check is not asked at all).
// Backing files are always opened read-only (qcow2_open.cc).
//
// The check looks at the path before the caller opens it (a FIFO would block
// the open itself); whoever can swap the file between the two can also
// change the image, so the window adds nothing an image's author controls.
//
// Backing loops are found by file identity (device and inode, after
// following symlinks), not only by the depth limit: a chain a -> b -> a, or
// one that comes back through a symlink or a hard link under another name,
// is refused with one line naming both names of the file. A data file that is
// the image itself or one of its backing images is refused the same way (it
// would put guest data over metadata).
//
// A backing file whose format its overlay does not name is probed; if it
// looks like qcow2, the backing and data files it names are not followed
// (CheckProbedFollows): a raw disk whose guest wrote a qcow2 header must not
// make us open host files.
//
// Thread-safety: plain syscalls; safe from any thread.
#ifndef UQ_SRC_ENGINE_NAMED_FILE_H_
#define UQ_SRC_ENGINE_NAMED_FILE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "format/header.h"

namespace uq::engine {

enum class NamedRole { kBacking, kDataFile };

struct NamedFile {
  std::string image_path;  // the image that names the file
  std::string path;        // the name, resolved against image_path's directory
  NamedRole role = NamedRole::kBacking;
  bool writable = false;
};

// OK if `file` may be opened as asked. A file that does not exist is OK here:
// the open then reports it in its usual words. Otherwise one line saying why
// not and how to allow it.
absl::Status CheckNamedFile(const NamedFile& file, bool allow_devices);

// A file's identity after following symlinks: st_dev and st_ino.
struct FileId {
  uint64_t dev = 0;
  uint64_t ino = 0;
  bool operator==(const FileId&) const = default;
};
// nullopt if `path` cannot be stat'ed (opening it then reports why).
std::optional<FileId> IdentifyFile(const std::string& path);

// An image of a backing chain, as opened.
struct ChainImage {
  FileId id;
  std::string path;
};

// OK unless `file.path` is one of `chain` (the images above it, top first,
// and the one naming it): then one line naming both names and the loop.
absl::Status CheckNotInChain(const NamedFile& file, const std::vector<ChainImage>& chain);

// Called for a qcow2 image opened as the backing file of `overlay_path`,
// which names it `backing_name` but not its format: OK if `h` names no
// backing or data file, else one line telling the user to name the format.
absl::Status CheckProbedFollows(const format::Header& h, const std::string& overlay_path,
                                const std::string& backing_name);

}  // namespace uq::engine

#endif  // UQ_SRC_ENGINE_NAMED_FILE_H_
