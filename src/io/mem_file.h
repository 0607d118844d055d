// MemFile: an in-memory BlockFile for tests and fuzzers (leveldb's memenv).
//
// The contents are one dense std::vector<std::byte>; size_bytes() is its size.
// Two completion modes:
//  - kImmediate: every operation completes synchronously; the Task finishes
//    the first time it is resumed and never suspends, so it can be driven with
//    RunSync(nullptr, ...).
//  - kDeferred: every operation is queued when it starts and does nothing
//    until the test completes it with RunOne(index) / RunAll() /
//    RunRandom(rng). The operation takes effect (bytes copied, size changed)
//    at completion, in completion order, so a test can hold many requests in
//    flight and reorder their completions the way a real disk may.
//
// Beyond the BlockFile contract: writes that would make the file larger than
// max_size_bytes() fail with -EFBIG (a fuzzed image cannot make the test
// allocate unbounded memory); writes to a read-only file fail with -EROFS;
// offset + length overflowing uint64 fails with -EINVAL.
//
// Flush() has nothing to make durable here and returns 0; PowerLossFile models
// durability on top of any BlockFile.
//
// Thread-safety: in kImmediate mode the operations may run on several threads
// at once (a mutex covers the contents, size and counters), as the queue
// threads of one image do; the accessors (data(), counters(), mode changes)
// and the whole of kDeferred mode are for one thread. Pending operations are
// coroutine handles owned by whoever owns their Tasks: destroying a MemFile
// with operations still queued neither resumes nor destroys them (their
// owners must not resume them either).
#ifndef UQ_SRC_IO_MEM_FILE_H_
#define UQ_SRC_IO_MEM_FILE_H_

#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <random>
#include <vector>

#include "src/io/block_file.h"
#include "src/io/op_kind.h"

namespace uq::io {

class MemFile final : public BlockFile {
 public:
  enum class Mode { kImmediate, kDeferred };

  // Issued-operation counters (counted when an operation starts, whether or
  // not it later fails).
  struct Counters {
    uint64_t reads = 0;
    uint64_t writes = 0;
    uint64_t flushes = 0;
    uint64_t discards = 0;
    uint64_t write_zeroes = 0;
    uint64_t truncates = 0;
    uint64_t bytes_read = 0;
    uint64_t bytes_written = 0;
  };

  // A queued operation as the test sees it. For kTruncate, offset_bytes is the
  // new size and length_bytes is 0; kFlush has neither.
  struct PendingOp {
    OpKind kind;
    uint64_t offset_bytes;
    uint64_t length_bytes;
  };

  static constexpr uint64_t kDefaultMaxSizeBytes = uint64_t{1} << 30;

  explicit MemFile(Mode mode = Mode::kImmediate) : mode_(mode) {}
  MemFile(Mode mode, std::vector<std::byte> contents) : mode_(mode), data_(std::move(contents)) {}
  MemFile(const MemFile&) = delete;
  MemFile& operator=(const MemFile&) = delete;
  ~MemFile() override = default;

  Task<int64_t> ReadV(uint64_t offset_bytes, std::span<const iovec> iov) override;
  Task<int64_t> WriteV(uint64_t offset_bytes, std::span<const iovec> iov) override;
  Task<int> Flush() override;
  Task<int> Discard(uint64_t offset_bytes, uint64_t length_bytes) override;
  Task<int> WriteZeroes(uint64_t offset_bytes, uint64_t length_bytes) override;
  Task<int> Truncate(uint64_t size_bytes) override;
  uint64_t size_bytes() const override {
    std::lock_guard<std::mutex> g(mu_);
    return data_.size();
  }
  bool read_only() const override { return read_only_; }

  // The contents. Tests may read and modify them freely between operations
  // (e.g. to corrupt an image); resizing the vector resizes the file.
  std::vector<std::byte>& data() { return data_; }
  const std::vector<std::byte>& data() const { return data_; }

  void set_read_only(bool read_only) { read_only_ = read_only; }
  uint64_t max_size_bytes() const { return max_size_bytes_; }
  void set_max_size_bytes(uint64_t max_size_bytes) { max_size_bytes_ = max_size_bytes; }

  // Switching mode affects operations started afterwards; queued ones stay
  // queued until run.
  Mode mode() const { return mode_; }
  void set_mode(Mode mode) { mode_ = mode; }

  const Counters& counters() const { return counters_; }
  void ResetCounters() { counters_ = {}; }

  // --- Deferred mode -------------------------------------------------------
  // Queued operations, oldest first.
  size_t pending_count() const { return queue_.size(); }
  // REQUIRES: index < pending_count().
  const PendingOp& pending(size_t index) const { return queue_[index].op; }

  // Completes the queued operation at `index` (removing it from the queue).
  // Its awaiter runs before this returns and may queue new operations.
  // REQUIRES: index < pending_count().
  void RunOne(size_t index);
  // Completes queued operations oldest-first until the queue is empty,
  // including operations queued by the completions themselves. Returns how
  // many were completed.
  size_t RunAll();
  // Like RunAll, but always completes a uniformly chosen queued operation.
  size_t RunRandom(std::mt19937_64& rng);
  // Completes one uniformly chosen queued operation; false if none is queued.
  bool RunRandomOne(std::mt19937_64& rng);

 private:
  struct Queued {
    PendingOp op;
    std::coroutine_handle<> handle;
  };
  // co_await Gate{...}: suspends into the queue in deferred mode.
  struct Gate {
    MemFile* file;
    PendingOp op;
    bool await_ready() const noexcept { return file->mode_ == Mode::kImmediate; }
    void await_suspend(std::coroutine_handle<> h) { file->queue_.push_back({op, h}); }
    void await_resume() const noexcept {}
  };

  // Zeroes [offset, offset + length) clipped to the current size.
  void ZeroClipped(uint64_t offset_bytes, uint64_t length_bytes);
  // Grows the file to at least `end_bytes`; -EFBIG past the limit.
  int GrowTo(uint64_t end_bytes);

  Mode mode_;
  mutable std::mutex mu_;  // contents, size, counters (see Thread-safety)
  std::vector<std::byte> data_;
  bool read_only_ = false;
  uint64_t max_size_bytes_ = kDefaultMaxSizeBytes;
  Counters counters_;
  std::vector<Queued> queue_;
};

}  // namespace uq::io

#endif  // UQ_SRC_IO_MEM_FILE_H_
