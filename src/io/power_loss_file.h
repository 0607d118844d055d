// PowerLossFile: a BlockFile wrapper that models what survives a power cut
// (TigerBeetle's testing/storage.zig).
//
// It passes every operation to `base` (normally a MemFile, immediate or
// deferred; the live, "volatile" view) and keeps beside it the durable image:
// the bytes a disk would hold after losing power now. Mutations that complete
// successfully are journaled (in completion order, with a copy of the written
// bytes); a Flush that completes successfully moves into the durable image
// every journaled mutation that completed before that Flush was issued
// (BlockFile's contract: writes still in flight at issue are not covered).
// So flush costs the bytes written since the last one, and the journal never
// holds more than the unflushed writes: fine for 1000 seeds on multi-MiB images.
//
// Crash() returns the durable image: the base's contents minus every mutation
// not covered by a completed flush. CrashRandomSubset(rng) models a disk that
// persisted some of its volatile cache anyway: it starts from the durable image
// and applies each not-yet-durable mutation independently with probability
// 1/2, in completion order, including writes still in flight (issued, not
// completed), which are applied after the completed ones. Each write is applied
// whole or not at all (no torn sectors). Both are const: the live file is left
// as it is; build a new MemFile from the returned bytes to "reboot".
//
// A failed base operation is not journaled. Layer a FaultFile *below* this
// wrapper to make failed writes absent from the durable image, or *above* it
// to fail operations before they reach the journal at all.
//
// Thread-safety: the operations may run on several threads at once if the
// base file allows it (an immediate-mode MemFile does), as the queue threads
// of one image do; a mutex covers the journal, the durable image and the
// in-flight table (never held across a base operation). Crash() and
// CrashRandomSubset() may be called from any thread at any moment: they see
// each mutation either journaled or not, never half. durable(),
// unflushed_count() and unflushed_bytes() are for a quiescent file.
#ifndef UQ_SRC_IO_POWER_LOSS_FILE_H_
#define UQ_SRC_IO_POWER_LOSS_FILE_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <vector>

#include "src/io/file_wrapper.h"
#include "src/io/op_kind.h"

namespace uq::io {

class PowerLossFile final : public FileWrapper {
 public:
  // `durable_image` is the state of `base` as of the last power-safe point
  // (normally a copy of its current contents: MemFile::data()).
  // REQUIRES: no operation in flight on `base`.
  PowerLossFile(std::unique_ptr<BlockFile> base, std::vector<std::byte> durable_image);
  // Borrows `base`, which must outlive this wrapper.
  PowerLossFile(BlockFile* base, std::vector<std::byte> durable_image);
  PowerLossFile(const PowerLossFile&) = delete;
  PowerLossFile& operator=(const PowerLossFile&) = delete;
  ~PowerLossFile() override;

  // Reads pass through (FileWrapper); mutations are journaled.
  Task<int64_t> WriteV(uint64_t offset_bytes, std::span<const iovec> iov) override;
  Task<int> Flush() override;
  Task<int> Discard(uint64_t offset_bytes, uint64_t length_bytes) override;
  Task<int> WriteZeroes(uint64_t offset_bytes, uint64_t length_bytes) override;
  Task<int> Truncate(uint64_t size_bytes) override;
  // Not journaled, so not offered: the engine writes instead.
  Task<int> Reserve(uint64_t, uint64_t) override { return ReadyTask(-EOPNOTSUPP); }

  // The image a power cut now would leave.
  std::vector<std::byte> Crash() const;
  // The durable image plus a random subset of the unflushed mutations (see
  // the header comment). REQUIRES: buffers of in-flight writes still valid
  // (they are, while their Tasks have not completed).
  std::vector<std::byte> CrashRandomSubset(std::mt19937_64& rng) const;

  // Declares everything completed so far durable (e.g. after test setup).
  void MarkAllDurable();

  const std::vector<std::byte>& durable() const { return durable_; }
  // Completed mutations not yet covered by a flush.
  size_t unflushed_count() const { return journal_.size(); }
  uint64_t unflushed_bytes() const { return journal_bytes_; }

 private:
  struct Mutation {
    uint64_t seq;  // completion order
    OpKind kind;   // kWrite, kDiscard, kWriteZeroes or kTruncate
    uint64_t offset_bytes;
    uint64_t length_bytes;
    std::vector<std::byte> data;  // kWrite only
  };
  struct InFlightWrite {
    uint64_t offset_bytes;
    std::span<const iovec> iov;
  };

  static void Apply(const Mutation& m, std::vector<std::byte>& image);
  void Journal(Mutation m);
  // Applies journaled mutations with seq < `end_seq` to durable_.
  // REQUIRES: mu_ held.
  void MakeDurable(uint64_t end_seq);

  mutable std::mutex mu_;  // guards everything below
  std::vector<std::byte> durable_;
  std::deque<Mutation> journal_;
  uint64_t journal_bytes_ = 0;
  uint64_t next_seq_ = 0;
  std::map<uint64_t, InFlightWrite> in_flight_;
  uint64_t next_in_flight_id_ = 0;
};

}  // namespace uq::io

#endif  // UQ_SRC_IO_POWER_LOSS_FILE_H_
