// BlockFile: the one seam between the engine and storage (leveldb's Env).
//
// The engine and the tools talk only to this interface; the io_uring, in-memory
// and fault-injecting implementations live beside it. Every operation is a
// coroutine returning a value: bytes (>= 0) or -errno. Nothing throws.
//
// Contracts shared by every implementation:
//  - ReadV/WriteV transfer the whole iovec or fail: on success they return the
//    total length. Short transfers are retried internally.
//  - Reads past the end of the file yield zeros (and count as read), so a
//    backing file shorter than its overlay reads as zero past its end.
//  - WriteV past the end of the file extends it; size_bytes() reflects every
//    completed write, truncate and fallocate.
//  - Flush() makes every write that completed before it was issued durable
//    (fdatasync semantics). Writes still in flight when Flush is issued are not
//    covered.
//  - Discard() deallocates (punch hole, size unchanged); the range then reads
//    as zero. WriteZeroes() makes the range read as zero, extending the file if
//    the range ends past EOF.
//  - Reserve() allocates space for the range without changing any byte
//    already there (fallocate mode 0), extending the file if the range ends
//    past EOF; bytes it adds read as zero. Optional: -EOPNOTSUPP where the
//    file cannot or gains nothing by it (the default; buffered files), and
//    callers then simply write.
//  - Buffers must stay valid until the operation's Task completes.
//
// Thread-safety: an instance is used from one thread (its event loop).
#ifndef UQ_SRC_IO_BLOCK_FILE_H_
#define UQ_SRC_IO_BLOCK_FILE_H_

#include <sys/uio.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <span>

#include "src/io/task.h"

namespace uq::io {

class BlockFile {
 public:
  virtual ~BlockFile() = default;

  virtual Task<int64_t> ReadV(uint64_t offset_bytes, std::span<const iovec> iov) = 0;
  virtual Task<int64_t> WriteV(uint64_t offset_bytes, std::span<const iovec> iov) = 0;
  virtual Task<int> Flush() = 0;
  virtual Task<int> Discard(uint64_t offset_bytes, uint64_t length_bytes) = 0;
  virtual Task<int> WriteZeroes(uint64_t offset_bytes, uint64_t length_bytes) = 0;
  virtual Task<int> Truncate(uint64_t size_bytes) = 0;
  virtual Task<int> Reserve(uint64_t /*offset_bytes*/, uint64_t /*length_bytes*/) {
    return ReadyTask(-EOPNOTSUPP);
  }
  virtual uint64_t size_bytes() const = 0;
  virtual bool read_only() const = 0;

  // Single-buffer conveniences over ReadV/WriteV.
  Task<int64_t> Read(uint64_t offset_bytes, std::span<std::byte> buf) {
    iovec v{buf.data(), buf.size()};
    co_return co_await ReadV(offset_bytes, std::span<const iovec>(&v, 1));
  }
  Task<int64_t> Write(uint64_t offset_bytes, std::span<const std::byte> buf) {
    iovec v{const_cast<std::byte*>(buf.data()), buf.size()};
    co_return co_await WriteV(offset_bytes, std::span<const iovec>(&v, 1));
  }
  // Writes zeros over the range with ordinary writes (WriteZeroes' last
  // resort; full preallocation), from one buffer of up to 1 MiB allocated
  // per call and aligned for O_DIRECT. Returns 0 or -errno.
  Task<int> WriteZeroBuffers(uint64_t offset_bytes, uint64_t length_bytes);
};

}  // namespace uq::io

#endif  // UQ_SRC_IO_BLOCK_FILE_H_
