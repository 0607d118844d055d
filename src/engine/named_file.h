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
// Thread-safety: plain syscalls; safe from any thread.
#ifndef UQ_SRC_ENGINE_NAMED_FILE_H_
#define UQ_SRC_ENGINE_NAMED_FILE_H_

#include <string>

#include "absl/status/status.h"

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

}  // namespace uq::engine

#endif  // UQ_SRC_ENGINE_NAMED_FILE_H_
