#include "src/io/file_lock.h"

#include <fcntl.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace uq::io {

namespace {

// QEMU's lock byte layout and permission bits (include/block/block-common.h).
constexpr off_t kPermBase = 100;
constexpr off_t kSharedBase = 200;
constexpr int kPermBits = 5;  // consistent-read, write, write-unchanged, resize, graph-mod
constexpr unsigned kPermConsistentRead = 1u << 0;
constexpr unsigned kPermWrite = 1u << 1;
constexpr unsigned kPermResize = 1u << 3;
constexpr unsigned kPermAll = (1u << kPermBits) - 1;

const char* PermName(int bit) {
  switch (bit) {
    case 0:
      return "consistent read";
    case 1:
      return "write";
    case 2:
      return "write unchanged";
    case 3:
      return "resize";
    default:
      return "change children";
  }
}

int OfdLock(int fd, int cmd, short type, off_t start, off_t len, short* held_type) {
  struct flock fl {};
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = start;
  fl.l_len = len;
  fl.l_pid = 0;  // required by OFD commands
  if (fcntl(fd, cmd, &fl) < 0) return -errno;
  if (held_type != nullptr) *held_type = fl.l_type;
  return 0;
}

bool Unsupported(int err) { return err == -EINVAL || err == -ENOLCK || err == -EOPNOTSUPP; }

absl::Status Errno(const char* what, int err) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(-err)));
}

}  // namespace

absl::Status UnlockImage(int fd) {
  int r =
      OfdLock(fd, F_OFD_SETLK, F_UNLCK, kPermBase, kSharedBase + kPermBits - kPermBase, nullptr);
  if (r < 0 && !Unsupported(r)) return Errno("unlock image", r);
  return absl::OkStatus();
}

absl::Status LockImage(int fd, bool exclusive) {
  unsigned perms =
      exclusive ? (kPermConsistentRead | kPermWrite | kPermResize) : kPermConsistentRead;
  unsigned unshared = kPermWrite | kPermResize;

  // Switching modes: start from nothing held.
  if (absl::Status s = UnlockImage(fd); !s.ok()) return s;

  // 1. Announce what we hold and what we refuse to share.
  for (int bit = 0; bit < kPermBits; ++bit) {
    for (off_t base : {kPermBase, kSharedBase}) {
      unsigned set = base == kPermBase ? perms : unshared;
      if ((set & (1u << bit)) == 0) continue;
      int r = OfdLock(fd, F_OFD_SETLK, F_RDLCK, base + bit, 1, nullptr);
      if (r == 0) continue;
      if (Unsupported(r)) return absl::OkStatus();
      (void)UnlockImage(fd);
      if (r == -EAGAIN || r == -EACCES) {
        return absl::FailedPreconditionError(absl::StrCat(
            "image is locked by another process (failed to lock byte ", base + bit, ")"));
      }
      return Errno("lock image", r);
    }
  }
  // 2. Conflicts: someone refuses to share a permission we hold, or holds one
  //    we refuse to share. A write-lock probe fails on any other reader lock.
  for (int bit = 0; bit < kPermBits; ++bit) {
    for (off_t base : {kSharedBase, kPermBase}) {
      unsigned want = base == kSharedBase ? perms : (unshared & kPermAll);
      if ((want & (1u << bit)) == 0) continue;
      short held = F_UNLCK;
      int r = OfdLock(fd, F_OFD_GETLK, F_WRLCK, base + bit, 1, &held);
      if (r < 0) {
        (void)UnlockImage(fd);
        if (Unsupported(r)) return absl::OkStatus();
        return Errno("test image lock", r);
      }
      if (held == F_UNLCK) continue;
      (void)UnlockImage(fd);
      return absl::FailedPreconditionError(
          absl::StrCat("image is locked by another process (failed to get ",
                       base == kSharedBase ? "" : "shared ", "\"", PermName(bit), "\" lock)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace uq::io
