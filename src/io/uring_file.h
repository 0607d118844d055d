// UringFile: a BlockFile on a regular file or block device, doing its I/O
// through one EventLoop's io_uring.
//
// Data path: ReadV/WriteV are IORING_OP_READ/WRITE (one iovec) or READV/WRITEV;
// short transfers are retried from where they stopped (-EINTR/-EAGAIN a few
// times too); reads that reach end of file are zero-filled. No heap allocation
// per request beyond the coroutine frame: the retry path resubmits the
// caller's own iovec array, or one inline iovec for a partly consumed entry.
// Flush is IORING_OP_FSYNC with DATASYNC (covers size changes too); Discard is
// fallocate(PUNCH_HOLE|KEEP_SIZE); WriteZeroes is fallocate(ZERO_RANGE), both
// via IORING_OP_FALLOCATE, with fallbacks (punch + extending fallocate, then writing
// zeros) when the filesystem refuses the mode. Truncate is a synchronous
// ftruncate (never on the hot path). On a read-only file, Flush is a no-op
// returning 0 and every mutation fails with -EROFS.
//
// Open takes no lock: callers that serve or modify an image call
// LockImage(file->fd(), exclusive) (src/io/file_lock.h) right after.
//
// size_bytes() is tracked in-process: fstat (or BLKGETSIZE64 for a block
// device) at open, then every completed write, fallocate and truncate. A block
// device's size is fixed: Truncate to at most its size succeeds without
// changing anything, larger sizes fail with -ENOSPC.
//
// O_DIRECT (OpenFlags::direct): buffers, offsets and lengths must be aligned
// to alignment_bytes() (4096, safe for 512- and 4096-sector devices); the
// kernel fails misaligned requests with -EINVAL. Open falls back to buffered
// I/O, recording why in open_note(), if the filesystem refuses O_DIRECT.
//
// Several event loops (ublk queue threads) serve one file through Clone():
// each clone has its own descriptor (dup) and its own loop, and all of them
// share one size, so a write through one is seen by size_bytes() of every
// other. Growth is a compare-and-swap maximum and no path shrinks the file
// except Truncate, so concurrent writes past the end never lose bytes.
//
// Thread-safety: one instance belongs to its EventLoop's thread; clones may
// run on other threads at the same time. REQUIRES: no operation in flight
// when the UringFile is destroyed; the loop outlives it.
#ifndef UQ_SRC_IO_URING_FILE_H_
#define UQ_SRC_IO_URING_FILE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "src/io/block_file.h"
#include "src/io/event_loop.h"

namespace uq::io {

struct OpenFlags {
  bool read_only = false;
  // O_DIRECT; see the alignment rules above.
  bool direct = false;
  // O_CREAT (mode 0644). REQUIRES: !read_only.
  bool create = false;
};

class UringFile final : public BlockFile {
 public:
  // Opens `path` (O_CLOEXEC; O_RDONLY or O_RDWR). Errors: NotFound,
  // PermissionDenied, InvalidArgument or Internal with the path and errno text.
  static absl::StatusOr<std::unique_ptr<UringFile>> Open(EventLoop* loop, const std::string& path,
                                                         OpenFlags flags);
  ~UringFile() override;
  // The same open file on `loop`: a dup'ed descriptor (same open file
  // description, so the same flags and the same image lock) sharing this
  // file's size. Errors: Internal with errno text.
  absl::StatusOr<std::unique_ptr<UringFile>> Clone(EventLoop* loop) const;
  UringFile(const UringFile&) = delete;
  UringFile& operator=(const UringFile&) = delete;

  Task<int64_t> ReadV(uint64_t offset_bytes, std::span<const iovec> iov) override;
  Task<int64_t> WriteV(uint64_t offset_bytes, std::span<const iovec> iov) override;
  Task<int> Flush() override;
  Task<int> Discard(uint64_t offset_bytes, uint64_t length_bytes) override;
  Task<int> WriteZeroes(uint64_t offset_bytes, uint64_t length_bytes) override;
  Task<int> Truncate(uint64_t size_bytes) override;
  Task<int> Reserve(uint64_t offset_bytes, uint64_t length_bytes) override;
  uint64_t size_bytes() const override { return size_->load(std::memory_order_acquire); }
  bool read_only() const override { return read_only_; }

  // The open fd (e.g. for LockImage). Owned by this object.
  int fd() const { return fd_; }
  bool direct() const { return direct_; }
  bool is_block_device() const { return block_device_; }
  // Required alignment of buffers, offsets and lengths: 1 when buffered.
  uint32_t alignment_bytes() const { return direct_ ? kDirectAlignmentBytes : 1; }
  // Non-empty when Open had to deviate from the flags (O_DIRECT fallback).
  const std::string& open_note() const { return open_note_; }
  EventLoop* loop() const { return loop_; }

  static constexpr uint32_t kDirectAlignmentBytes = 4096;

 private:
  // The file's size, shared by every clone.
  using SizeCell = std::atomic<uint64_t>;

  UringFile(EventLoop* loop, int fd, bool read_only, bool direct, bool block_device,
            std::shared_ptr<SizeCell> size);

  Task<int64_t> Transfer(bool write, uint64_t offset_bytes, std::span<const iovec> iov);
  Task<int> Fallocate(int mode, uint64_t offset_bytes, uint64_t length_bytes);
  void GrowSize(uint64_t end_bytes);

  EventLoop* loop_;
  int fd_;
  bool read_only_;
  bool direct_;
  bool block_device_;
  std::shared_ptr<SizeCell> size_;
  std::string open_note_;
  // Cleared after the filesystem first answers EOPNOTSUPP, to skip the
  // failing syscall next time.
  bool punch_hole_ok_ = true;
  bool zero_range_ok_ = true;
};

}  // namespace uq::io

#endif  // UQ_SRC_IO_URING_FILE_H_
