// AlignedFile: makes any byte-granular I/O legal on a BlockFile that needs
// aligned buffers, offsets and lengths (O_DIRECT files: 4096).
//
// Aligned requests (offset, every iovec base and length a multiple of the
// alignment) pass straight through. Others go through an aligned bounce
// buffer: reads read the covering aligned range; writes read-modify-write the
// covering range. A read-modify-write rewrites bytes it does not own, so it
// is serialised against every other in-flight write overlapping its covering
// range (in-flight writes are tracked in an intrusive list, no allocation);
// aligned writes only wait for overlapping read-modify-writes. Discard and
// WriteZeroes pass the aligned middle through and zero the edges by
// read-modify-write, keeping the "reads as zero" contract.
//
// The engine wraps the image, backing and data files in one when
// OpenOptions.file_alignment_bytes > 1, so the engine's own small metadata
// writes (8-byte refcount table entries, L1 tables, compressed clusters at
// sector offsets, sub-4K clusters) stay correct under O_DIRECT. Flush,
// Truncate and the size pass through (FileWrapper).
//
// Thread-safety: safe to share between threads when the wrapped file is (a
// PerLoopFile under the queue threads of one device): the in-flight list is
// under a mutex, and a parked write is resumed on its own executor
// (io::ResumeOn), never on the thread that woke it.
#ifndef UQ_SRC_IO_ALIGNED_FILE_H_
#define UQ_SRC_IO_ALIGNED_FILE_H_

#include <atomic>
#include <coroutine>
#include <cstdint>
#include <memory>
#include <mutex>

#include "src/io/executor.h"
#include "src/io/file_wrapper.h"

namespace uq::io {

class AlignedFile final : public FileWrapper {
 public:
  // Owns `inner`. REQUIRES: alignment_bytes is a power of two >= 512.
  AlignedFile(std::unique_ptr<BlockFile> inner, uint32_t alignment_bytes);
  ~AlignedFile() override;

  Task<int64_t> ReadV(uint64_t offset_bytes, std::span<const iovec> iov) override;
  Task<int64_t> WriteV(uint64_t offset_bytes, std::span<const iovec> iov) override;
  Task<int> Discard(uint64_t offset_bytes, uint64_t length_bytes) override;
  Task<int> WriteZeroes(uint64_t offset_bytes, uint64_t length_bytes) override;

  uint32_t alignment_bytes() const { return align_; }
  uint64_t bounced_ops() const { return bounced_ops_.load(std::memory_order_relaxed); }

 private:
  // A coroutine parked until an in-flight write leaves; the node lives in
  // the parked coroutine's frame, so parking allocates nothing.
  struct Waiter {
    std::coroutine_handle<> handle;
    Executor* executor = nullptr;
    Waiter* next = nullptr;
  };
  struct InFlight {
    InFlight(uint64_t b, uint64_t e, bool r) : begin(b), end(e), rmw(r) {}
    uint64_t begin;
    uint64_t end;
    bool rmw;
    InFlight* prev = nullptr;
    InFlight* next = nullptr;
    Waiter* waiters = nullptr;  // resumed, all at once, by Leave()
  };

  bool Aligned(uint64_t offset_bytes, std::span<const iovec> iov) const;
  // Registers a write covering [begin, end) once nothing conflicting is in flight.
  Task<void> Enter(InFlight* w);
  void Leave(InFlight* w);
  // Read-modify-write of [offset, offset + len) from `src` (nullptr = zeros).
  Task<int64_t> WriteBounced(uint64_t offset_bytes, std::span<const iovec> iov, uint64_t len);

  uint32_t align_;
  std::mutex mu_;
  InFlight* head_ = nullptr;  // guarded by mu_
  std::atomic<uint64_t> bounced_ops_{0};
};

}  // namespace uq::io

#endif  // UQ_SRC_IO_ALIGNED_FILE_H_
