// Image locking compatible with QEMU's (block/file-posix.c "lock bytes").
//
// QEMU takes open-file-description (OFD) read locks on single bytes: byte
// 100 + i while it holds permission i, byte 200 + i while it refuses to share
// permission i, then checks with F_OFD_GETLK that nobody else holds the
// opposite byte. Using the same bytes means ublk-qcow2, qemu-img and a
// running QEMU refuse each other the way two QEMUs do:
//   exclusive (writer): holds consistent-read, write, resize; shares neither
//                       write nor resize. Refused if anyone reads or writes.
//   shared (reader):    holds consistent-read; shares neither write nor
//                       resize. Refused if anyone writes; readers coexist.
// These are the bytes QEMU 7.2 takes for a qcow2 image opened read-write /
// read-only (a raw image in QEMU shares writes, so it does not conflict).
//
// Locks belong to the open file description behind `fd`: they are released
// when every fd sharing it is closed (or by UnlockImage), they do not conflict
// with other fds of the same description, and they are not inherited by
// unrelated open()s of the same file in this process (two opens conflict).
//
// Thread-safety: plain syscalls; safe from any thread.
#ifndef UQ_SRC_IO_FILE_LOCK_H_
#define UQ_SRC_IO_FILE_LOCK_H_

#include "absl/status/status.h"

namespace uq::io {

// Takes the image lock on `fd`. On conflict returns FailedPreconditionError
// whose message starts "image is locked by another process" (and names the
// permission), leaving no lock bytes held. If the filesystem does not support
// OFD locks (EINVAL/ENOLCK/EOPNOTSUPP), returns OK without locking, as QEMU
// does. Other errors: InternalError with the errno text.
// Calling again on the same fd switches mode (e.g. shared -> exclusive).
absl::Status LockImage(int fd, bool exclusive);

// Drops every lock byte this fd's description holds. Idempotent.
absl::Status UnlockImage(int fd);

}  // namespace uq::io

#endif  // UQ_SRC_IO_FILE_LOCK_H_
