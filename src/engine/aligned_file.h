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
// sector offsets, sub-4K clusters) stay correct under O_DIRECT.
//
// Thread-safety: one event loop thread, like the wrapped file.
#ifndef UQ_SRC_ENGINE_ALIGNED_FILE_H_
#define UQ_SRC_ENGINE_ALIGNED_FILE_H_

#include <cstdint>
#include <memory>

#include "cache/wait_list.h"
#include "src/io/block_file.h"

namespace uq::engine {

class AlignedFile final : public io::BlockFile {
 public:
  // REQUIRES: alignment_bytes is a power of two >= 512.
  AlignedFile(std::unique_ptr<io::BlockFile> inner, uint32_t alignment_bytes);
  ~AlignedFile() override;

  Task<int64_t> ReadV(uint64_t offset_bytes, std::span<const iovec> iov) override;
  Task<int64_t> WriteV(uint64_t offset_bytes, std::span<const iovec> iov) override;
  Task<int> Flush() override { return inner_->Flush(); }
  Task<int> Discard(uint64_t offset_bytes, uint64_t length_bytes) override;
  Task<int> WriteZeroes(uint64_t offset_bytes, uint64_t length_bytes) override;
  Task<int> Truncate(uint64_t size_bytes) override { return inner_->Truncate(size_bytes); }
  uint64_t size_bytes() const override { return inner_->size_bytes(); }
  bool read_only() const override { return inner_->read_only(); }

  uint32_t alignment_bytes() const { return align_; }
  uint64_t bounced_ops() const { return bounced_ops_; }

 private:
  struct InFlight {
    InFlight(uint64_t b, uint64_t e, bool r) : begin(b), end(e), rmw(r) {}
    uint64_t begin;
    uint64_t end;
    bool rmw;
    InFlight* prev = nullptr;
    InFlight* next = nullptr;
    cache::WaitList waiters;
  };

  bool Aligned(uint64_t offset_bytes, std::span<const iovec> iov) const;
  // Registers a write covering [begin, end) once nothing conflicting is in flight.
  Task<void> Enter(InFlight* w);
  void Leave(InFlight* w);
  // Read-modify-write of [offset, offset + len) from `src` (nullptr = zeros).
  Task<int64_t> WriteBounced(uint64_t offset_bytes, std::span<const iovec> iov, uint64_t len);

  std::unique_ptr<io::BlockFile> inner_;
  uint32_t align_;
  InFlight* head_ = nullptr;
  uint64_t bounced_ops_ = 0;
};

}  // namespace uq::engine

#endif  // UQ_SRC_ENGINE_ALIGNED_FILE_H_
