// The target of qcow2-img convert: creating it (a fresh qcow2 layout or an
// empty raw file, preallocated as -o preallocation= asks) and removing it
// again if the convert fails.
//
// Thread-safety: used from the command's one thread.
#ifndef UQ_TOOLS_CONVERT_TARGET_H_
#define UQ_TOOLS_CONVERT_TARGET_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "format/create.h"
#include "src/io/event_loop.h"
#include "tools/convert_options.h"

namespace uq::tools {

// Creates `path` (or empties it) under the writer's lock, taken before the
// truncation so an image in use is left alone. With `layout`, writes that
// fresh qcow2 layout (whose data clusters, with preallocation, follow its
// metadata); without, sizes the raw file to `raw_size_bytes`. Then
// preallocates the data as `prealloc` says: kFalloc reserves it
// (fallocate), kFull writes zeros over it, as QEMU's file driver does. The
// engine then reopens (and relocks) the file, with O_DIRECT if asked.
absl::Status PrepareDestination(io::EventLoop& loop, const std::string& path,
                                const format::ImageLayout* layout, uint64_t raw_size_bytes,
                                TargetPreallocation prealloc);

// Removes the target this convert created (or emptied) unless Keep() is
// called: a half-written image is worse than none. Only armed once the
// target is ours (created, or locked and truncated), never for -n.
class CreatedTarget {
 public:
  CreatedTarget() = default;
  CreatedTarget(const CreatedTarget&) = delete;
  CreatedTarget& operator=(const CreatedTarget&) = delete;
  ~CreatedTarget();
  void Arm(const std::string& path) { path_ = path; }
  void Keep() { path_.clear(); }

 private:
  std::string path_;
};

}  // namespace uq::tools

#endif  // UQ_TOOLS_CONVERT_TARGET_H_
