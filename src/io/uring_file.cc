#include "src/io/uring_file.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "src/io/iovec.h"

namespace uq::io {

namespace {

// Kernel limit on iovecs per readv/writev (IOV_MAX).
constexpr size_t kIovMax = 1024;
// IORING_OP_READ/WRITE take an unsigned length and the CQE an int32 result:
// submit large single buffers in pieces (the retry loop continues them).
constexpr uint64_t kMaxSingleBytes = uint64_t{1} << 30;
// -EINTR / -EAGAIN retries per request before giving up.
constexpr int kMaxRetries = 8;
constexpr uint64_t kMaxOffset = static_cast<uint64_t>(std::numeric_limits<off_t>::max());

bool RangeInvalid(uint64_t offset_bytes, uint64_t length_bytes) {
  return offset_bytes > kMaxOffset || length_bytes > kMaxOffset - offset_bytes;
}

absl::Status OpenError(const std::string& path, const char* what, int err) {
  return absl::ErrnoToStatus(err, absl::StrCat(what, " ", path));
}

}  // namespace

UringFile::UringFile(EventLoop* loop, int fd, bool read_only, bool direct, bool block_device,
                     std::shared_ptr<SizeCell> size)
    : loop_(loop),
      fd_(fd),
      read_only_(read_only),
      direct_(direct),
      block_device_(block_device),
      size_(std::move(size)) {}

UringFile::~UringFile() {
  if (fd_ >= 0) close(fd_);
}

absl::StatusOr<std::unique_ptr<UringFile>> UringFile::Open(EventLoop* loop, const std::string& path,
                                                           OpenFlags flags) {
  if (loop == nullptr) return absl::InvalidArgumentError("UringFile::Open: no event loop");
  if (flags.create && flags.read_only) {
    return absl::InvalidArgumentError(absl::StrCat("cannot create read-only file ", path));
  }
  int oflags = O_CLOEXEC | (flags.read_only ? O_RDONLY : O_RDWR) | (flags.create ? O_CREAT : 0);
  bool direct = flags.direct;
  std::string note;
  int fd = open(path.c_str(), oflags | (direct ? O_DIRECT : 0), 0644);
  if (fd < 0 && direct && errno == EINVAL) {
    direct = false;
    note = absl::StrCat(path, ": O_DIRECT not supported by the filesystem, using buffered I/O");
    fd = open(path.c_str(), oflags, 0644);
  }
  if (fd < 0) return OpenError(path, "open", errno);

  struct stat st {};
  if (fstat(fd, &st) < 0) {
    int err = errno;
    close(fd);
    return OpenError(path, "fstat", err);
  }
  bool block_device = S_ISBLK(st.st_mode);
  uint64_t size_bytes = 0;
  if (block_device) {
    if (ioctl(fd, BLKGETSIZE64, &size_bytes) < 0) {
      int err = errno;
      close(fd);
      return OpenError(path, "BLKGETSIZE64", err);
    }
  } else if (S_ISREG(st.st_mode)) {
    size_bytes = static_cast<uint64_t>(st.st_size);
  } else {
    close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file or block device"));
  }

  if (direct) {
    // Some filesystems accept O_DIRECT at open and refuse it at the first
    // read: probe with one aligned block.
    void* probe = std::aligned_alloc(kDirectAlignmentBytes, kDirectAlignmentBytes);
    if (probe == nullptr) {
      close(fd);
      return absl::ResourceExhaustedError("out of memory");
    }
    ssize_t r = pread(fd, probe, kDirectAlignmentBytes, 0);
    int err = errno;
    std::free(probe);
    if (r < 0 && err == EINVAL) {
      int fl = fcntl(fd, F_GETFL);
      if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_DIRECT) < 0) {
        int e = errno;
        close(fd);
        return OpenError(path, "clear O_DIRECT on", e);
      }
      direct = false;
      note = absl::StrCat(path, ": O_DIRECT reads fail with EINVAL, using buffered I/O");
    }
  }

  std::unique_ptr<UringFile> file(new UringFile(loop, fd, flags.read_only, direct, block_device,
                                                std::make_shared<SizeCell>(size_bytes)));
  file->open_note_ = std::move(note);
  return file;
}

absl::StatusOr<std::unique_ptr<UringFile>> UringFile::Clone(EventLoop* loop) const {
  if (loop == nullptr) return absl::InvalidArgumentError("UringFile::Clone: no event loop");
  int fd = fcntl(fd_, F_DUPFD_CLOEXEC, 0);
  if (fd < 0) return absl::ErrnoToStatus(errno, "dup of an image descriptor");
  std::unique_ptr<UringFile> file(
      new UringFile(loop, fd, read_only_, direct_, block_device_, size_));
  file->open_note_ = open_note_;
  return file;
}

void UringFile::GrowSize(uint64_t end_bytes) {
  if (block_device_) return;
  uint64_t now = size_->load(std::memory_order_relaxed);
  while (end_bytes > now &&
         !size_->compare_exchange_weak(now, end_bytes, std::memory_order_acq_rel)) {
  }
}

Task<int64_t> UringFile::ReadV(uint64_t offset_bytes, std::span<const iovec> iov) {
  return Transfer(/*write=*/false, offset_bytes, iov);
}

Task<int64_t> UringFile::WriteV(uint64_t offset_bytes, std::span<const iovec> iov) {
  return Transfer(/*write=*/true, offset_bytes, iov);
}

Task<int64_t> UringFile::Transfer(bool write, uint64_t offset_bytes, std::span<const iovec> iov) {
  if (write && read_only_) co_return -EROFS;
  uint64_t total = IovLength(iov);
  if (RangeInvalid(offset_bytes, total)) co_return -EINVAL;
  if (total == 0) co_return 0;

  // Position in the caller's iovec array: entry `index`, `skip` bytes into it.
  size_t index = 0;
  uint64_t skip = 0;
  uint64_t done = 0;
  int retries = 0;
  iovec partial{};
  while (done < total) {
    while (iov[index].iov_len == skip) {
      ++index;
      skip = 0;
    }
    // Resubmit straight from the caller's array when at an entry boundary;
    // only a partly transferred entry needs the one inline iovec.
    const iovec* vecs = &iov[index];
    size_t nvecs = std::min(iov.size() - index, kIovMax);
    if (skip != 0) {
      partial.iov_base = static_cast<std::byte*>(iov[index].iov_base) + skip;
      partial.iov_len = iov[index].iov_len - skip;
      vecs = &partial;
      nvecs = 1;
    }
    uint64_t pos_bytes = offset_bytes + done;
    int fd = fd_;
    int32_t res = co_await loop_->Op([&](io_uring_sqe* sqe) {
      if (nvecs == 1) {
        auto len = static_cast<unsigned>(std::min<uint64_t>(vecs[0].iov_len, kMaxSingleBytes));
        if (write) {
          io_uring_prep_write(sqe, fd, vecs[0].iov_base, len, pos_bytes);
        } else {
          io_uring_prep_read(sqe, fd, vecs[0].iov_base, len, pos_bytes);
        }
      } else if (write) {
        io_uring_prep_writev(sqe, fd, vecs, static_cast<unsigned>(nvecs), pos_bytes);
      } else {
        io_uring_prep_readv(sqe, fd, vecs, static_cast<unsigned>(nvecs), pos_bytes);
      }
    });
    if (res < 0) {
      if ((res == -EINTR || res == -EAGAIN) && ++retries <= kMaxRetries) continue;
      co_return res;
    }
    if (res == 0) {
      // End of file: the rest reads as zeros. A write that makes no progress
      // would loop forever; report it.
      if (write) co_return -EIO;
      ZeroIovFrom(iov, done);
      break;
    }
    done += static_cast<uint64_t>(res);
    for (uint64_t left = static_cast<uint64_t>(res); left > 0;) {
      uint64_t avail = iov[index].iov_len - skip;
      if (left < avail) {
        skip += left;
        left = 0;
      } else {
        left -= avail;
        ++index;
        skip = 0;
      }
    }
    if (write) {
      GrowSize(offset_bytes + done);
    } else if (done < total && offset_bytes + done >= size_bytes()) {
      // Short read at end of file. Stop here rather than retry at an offset
      // O_DIRECT could not accept.
      ZeroIovFrom(iov, done);
      break;
    }
  }
  co_return static_cast<int64_t>(total);
}

Task<int> UringFile::Flush() {
  if (read_only_) co_return 0;
  int fd = fd_;
  for (int attempt = 0;; ++attempt) {
    int32_t res = co_await loop_->Op(
        [&](io_uring_sqe* sqe) { io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC); });
    if (res == -EINTR && attempt < kMaxRetries) continue;
    co_return res < 0 ? res : 0;
  }
}

Task<int> UringFile::Fallocate(int mode, uint64_t offset_bytes, uint64_t length_bytes) {
  int fd = fd_;
  for (int attempt = 0;; ++attempt) {
    int32_t res = co_await loop_->Op([&](io_uring_sqe* sqe) {
      io_uring_prep_fallocate(sqe, fd, mode, static_cast<off_t>(offset_bytes),
                              static_cast<off_t>(length_bytes));
    });
    if (res == -EINTR && attempt < kMaxRetries) continue;
    co_return res < 0 ? res : 0;
  }
}

Task<int> UringFile::Discard(uint64_t offset_bytes, uint64_t length_bytes) {
  if (read_only_) co_return -EROFS;
  if (RangeInvalid(offset_bytes, length_bytes)) co_return -EINVAL;
  if (length_bytes == 0) co_return 0;
  if (punch_hole_ok_) {
    int r =
        co_await Fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset_bytes, length_bytes);
    if (r != -EOPNOTSUPP) co_return r;
    punch_hole_ok_ = false;
  }
  // No hole punching here: the range must still read as zero afterwards.
  // Discard never changes the size, so only the part inside the file matters.
  const uint64_t size_bytes_now = size_bytes();
  if (offset_bytes >= size_bytes_now) co_return 0;
  length_bytes = std::min(length_bytes, size_bytes_now - offset_bytes);
  if (zero_range_ok_) {
    int r =
        co_await Fallocate(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset_bytes, length_bytes);
    if (r != -EOPNOTSUPP) co_return r;
    zero_range_ok_ = false;
  }
  co_return co_await WriteZeroBuffers(offset_bytes, length_bytes);
}

Task<int> UringFile::WriteZeroes(uint64_t offset_bytes, uint64_t length_bytes) {
  if (read_only_) co_return -EROFS;
  if (RangeInvalid(offset_bytes, length_bytes)) co_return -EINVAL;
  if (length_bytes == 0) co_return 0;
  uint64_t end_bytes = offset_bytes + length_bytes;
  if (zero_range_ok_) {
    // No KEEP_SIZE: the range may extend the file, as the contract says.
    int r = co_await Fallocate(FALLOC_FL_ZERO_RANGE, offset_bytes, length_bytes);
    if (r == 0) GrowSize(end_bytes);
    if (r != -EOPNOTSUPP) co_return r;
    zero_range_ok_ = false;
  }
  if (punch_hole_ok_ && !block_device_) {
    // Punch the part inside the file, then extend it by allocating the
    // range's last block (fallocate mode 0 only ever grows a file; an
    // ftruncate could cut off a write another queue just finished past our
    // end). The rest of the extension is a hole and reads as zero.
    uint64_t inside_end = std::min(end_bytes, size_bytes());
    int r = 0;
    if (offset_bytes < inside_end) {
      r = co_await Fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset_bytes,
                             inside_end - offset_bytes);
    }
    if (r == 0) {
      if (end_bytes > inside_end) {
        const uint64_t tail = std::min<uint64_t>(end_bytes - inside_end, kDirectAlignmentBytes);
        r = co_await Fallocate(0, end_bytes - tail, tail);
        if (r < 0) co_return r;
        GrowSize(end_bytes);
      }
      co_return 0;
    }
    if (r != -EOPNOTSUPP) co_return r;
    punch_hole_ok_ = false;
  }
  co_return co_await WriteZeroBuffers(offset_bytes, length_bytes);
}

Task<int> UringFile::Reserve(uint64_t offset_bytes, uint64_t length_bytes) {
  if (read_only_) co_return -EROFS;
  if (RangeInvalid(offset_bytes, length_bytes)) co_return -EINVAL;
  // A block device has its size; mode 0 is not one it takes. Buffered
  // writes past the end cost little, and on tmpfs (where O_DIRECT falls
  // back to buffered) reserved space would be memory: only O_DIRECT files
  // reserve, whose writes past the end the file system serialises.
  if (block_device_ || !direct_) co_return -EOPNOTSUPP;
  if (length_bytes == 0) co_return 0;
  const int r = co_await Fallocate(0, offset_bytes, length_bytes);
  if (r == 0) GrowSize(offset_bytes + length_bytes);
  co_return r;
}

Task<int> UringFile::Truncate(uint64_t size_bytes) {
  if (read_only_) co_return -EROFS;
  if (size_bytes > kMaxOffset) co_return -EINVAL;
  if (block_device_) co_return size_bytes <= this->size_bytes() ? 0 : -ENOSPC;
  if (ftruncate(fd_, static_cast<off_t>(size_bytes)) < 0) co_return -errno;
  size_->store(size_bytes, std::memory_order_release);
  co_return 0;
}

}  // namespace uq::io
