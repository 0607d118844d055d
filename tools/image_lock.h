// Image locking for every qcow2-img command, with QEMU's byte-range locks
// (src/io/file_lock.h): a command that writes an image takes the writer's
// lock, one that only reads takes the shared lock, and -U / --force-share
// (read-only commands) takes none, as qemu-img does.
#ifndef UQ_TOOLS_IMAGE_LOCK_H_
#define UQ_TOOLS_IMAGE_LOCK_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace uq::tools {

enum class LockMode {
  kNone,       // -U / --force-share: read without locking
  kShared,     // readers coexist; refused while anyone writes
  kExclusive,  // the writer: refused while anyone else has the image open
};

// The lock for an open of an image read-only or writable, honouring -U.
// -U with a writable open is an error, as in qemu-img ("force-share=on can
// only be used with read-only images").
absl::StatusOr<LockMode> LockModeFor(bool writable, bool force_share);

// Takes `mode` on the open file `fd`. A conflict is FailedPrecondition with
// qemu-img's wording: 'Failed to get "write" lock' (we want to write and
// someone forbids it) or 'Failed to get shared "write" lock' (someone writes
// and we forbid it), followed by "(is another process using the image?)".
// The lock lasts until every descriptor of the open file is closed.
absl::Status LockImageFile(int fd, LockMode mode);

}  // namespace uq::tools

#endif  // UQ_TOOLS_IMAGE_LOCK_H_
