// PowerCut: a file wrapper for the power-loss tests of one engine operation
// (resize, snapshots): the power goes after a given number of mutations. Files
// that lose power together (an overlay and its backing file under commit)
// share one PowerBudget.
#ifndef UQ_TESTS_ENGINE_POWER_LOSS_POWER_CUT_H_
#define UQ_TESTS_ENGINE_POWER_LOSS_POWER_CUT_H_

#include <cerrno>
#include <cstdint>
#include <span>

#include "src/io/file_wrapper.h"

namespace uq::engine::testing {

// The mutations still allowed to reach the files sharing it.
struct PowerBudget {
  explicit PowerBudget(uint64_t b) : budget(b) {}
  // Counts one mutation; false once the power is gone.
  bool Pass() {
    if (cut || mutations >= budget) {
      cut = true;
      return false;
    }
    ++mutations;
    return true;
  }
  uint64_t budget;
  uint64_t mutations = 0;
  bool cut = false;
};

// Passes the first `budget` mutating operations (writes, flushes, truncates,
// discards) through and fails every operation from then on with -EIO: the
// power is gone.
class PowerCut final : public io::FileWrapper {
 public:
  PowerCut(io::BlockFile* base, uint64_t budget)
      : io::FileWrapper(base), own_(budget), budget_(&own_) {}
  // Shares `budget` (which must outlive this file) with other files.
  PowerCut(io::BlockFile* base, PowerBudget* budget)
      : io::FileWrapper(base), own_(0), budget_(budget) {}
  uint64_t mutations() const { return budget_->mutations; }

  Task<int64_t> ReadV(uint64_t offset_bytes, std::span<const iovec> iov) override {
    if (budget_->cut) co_return -EIO;
    co_return co_await base()->ReadV(offset_bytes, iov);
  }
  Task<int64_t> WriteV(uint64_t offset_bytes, std::span<const iovec> iov) override {
    if (!Pass()) co_return -EIO;
    co_return co_await base()->WriteV(offset_bytes, iov);
  }
  Task<int> Flush() override {
    if (!Pass()) co_return -EIO;
    co_return co_await base()->Flush();
  }
  Task<int> Discard(uint64_t offset_bytes, uint64_t length_bytes) override {
    if (!Pass()) co_return -EIO;
    co_return co_await base()->Discard(offset_bytes, length_bytes);
  }
  Task<int> WriteZeroes(uint64_t offset_bytes, uint64_t length_bytes) override {
    if (!Pass()) co_return -EIO;
    co_return co_await base()->WriteZeroes(offset_bytes, length_bytes);
  }
  Task<int> Truncate(uint64_t size_bytes) override {
    if (!Pass()) co_return -EIO;
    co_return co_await base()->Truncate(size_bytes);
  }

 private:
  bool Pass() { return budget_->Pass(); }

  PowerBudget own_;
  PowerBudget* budget_;
};

}  // namespace uq::engine::testing

#endif  // UQ_TESTS_ENGINE_POWER_LOSS_POWER_CUT_H_
