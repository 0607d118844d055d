// FaultFile: a BlockFile wrapper that fails chosen operations (leveldb's
// ErrorEnv, qemu-iotests 026's blkdebug rules).
//
// Rules pick operations by kind, by the byte range they touch and by count,
// and fail them with an errno, once or always. Typical uses:
//   fault.FailNthOf(OpKind::kWrite, 3, ENOSPC);          // the 3rd write from now
//   fault.AddRule({.kinds = OpKindBit(OpKind::kWrite),    // every write to the L1
//                  .offset_bytes = l1_offset, .length_bytes = l1_size,
//                  .error = EIO, .once = false});
// For a fault matrix over "every metadata write point", run the scenario once
// with recording on, read log(), then rerun it failing each write in turn
// (FailNthOf(kWrite, n)) or each recorded range.
//
// Matching: an operation is checked against every rule when it starts, in the
// order the rules were added; each matching rule counts it, and the first rule
// that is due fires. Read, write, discard and write_zeroes touch
// [offset, offset + length); flush and truncate have no range and match only
// rules whose range is the whole file (the default).
//
// Effects: kFailBeforeIo returns -error without reaching the base file (the
// write never happened); kFailAfterIo runs the operation on the base and then
// reports -error anyway (the write landed, the caller was told it failed, as
// with a lost completion).
//
// Thread-safety: single thread, like the file it wraps.
#ifndef UQ_SRC_IO_FAULT_FILE_H_
#define UQ_SRC_IO_FAULT_FILE_H_

#include <cerrno>
#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include "src/io/file_wrapper.h"
#include "src/io/op_kind.h"

namespace uq::io {

enum class FaultEffect { kFailBeforeIo, kFailAfterIo };

struct FaultRule {
  static constexpr uint64_t kWholeFile = std::numeric_limits<uint64_t>::max();

  // Bit mask of OpKindBit(kind) this rule applies to.
  uint32_t kinds = kAllOpKinds;
  // Only operations touching [offset_bytes, offset_bytes + length_bytes).
  // length_bytes == kWholeFile (with offset 0) means no range restriction.
  uint64_t offset_bytes = 0;
  uint64_t length_bytes = kWholeFile;
  // Let this many matching operations through before firing: skip = n - 1
  // fails the n-th matching operation.
  uint64_t skip = 0;
  // Positive errno reported as -error.
  int error = EIO;
  // Fire for one operation only, or for every matching operation after `skip`.
  bool once = true;
  FaultEffect effect = FaultEffect::kFailBeforeIo;
};

class FaultFile final : public FileWrapper {
 public:
  // One operation as seen by the wrapper. For kTruncate offset_bytes is the
  // new size.
  struct OpRecord {
    OpKind kind;
    uint64_t offset_bytes;
    uint64_t length_bytes;
    bool faulted;
  };

  // Owns `base` (unique_ptr) or borrows it (pointer; it must outlive this
  // wrapper).
  using FileWrapper::FileWrapper;

  Task<int64_t> ReadV(uint64_t offset_bytes, std::span<const iovec> iov) override;
  Task<int64_t> WriteV(uint64_t offset_bytes, std::span<const iovec> iov) override;
  Task<int> Flush() override;
  Task<int> Discard(uint64_t offset_bytes, uint64_t length_bytes) override;
  Task<int> WriteZeroes(uint64_t offset_bytes, uint64_t length_bytes) override;
  Task<int> Truncate(uint64_t size_bytes) override;

  // Adds a rule; returns its id. Counting for the rule starts now.
  int AddRule(const FaultRule& rule);
  void RemoveRule(int id);
  void ClearRules();
  // How many operations the rule has failed so far (0 for unknown ids).
  uint64_t rule_fired(int id) const;

  // Conveniences over AddRule.
  // The n-th operation (1-based, any kind) from now fails once.
  int FailNth(uint64_t n, int error = EIO);
  // The n-th operation of `kind` from now fails once.
  int FailNthOf(OpKind kind, uint64_t n, int error = EIO);
  // Every operation of `kind` fails from now on.
  int FailAlways(OpKind kind, int error = EIO);

  // Every operation started through this wrapper, and how many were failed.
  uint64_t ops_seen() const { return ops_seen_; }
  uint64_t faults_injected() const { return faults_injected_; }
  // Per-kind count of operations started (indexable by static_cast<int>(kind)).
  uint64_t ops_seen(OpKind kind) const { return ops_by_kind_[static_cast<int>(kind)]; }

  // With recording on, every started operation is appended to log().
  void set_recording(bool recording) { recording_ = recording; }
  const std::vector<OpRecord>& log() const { return log_; }
  void ClearLog() { log_.clear(); }

 private:
  struct ActiveRule {
    int id;
    FaultRule rule;
    uint64_t matched = 0;
    uint64_t fired = 0;
  };
  // Counts the operation against every rule; returns the rule that fires, or
  // null.
  const ActiveRule* Check(OpKind kind, bool has_range, uint64_t offset_bytes,
                          uint64_t length_bytes);
  // When started: Check()s the operation, then runs `io` (which starts the
  // operation on the base) or fails as the firing rule says.
  template <typename T, typename Io>
  Task<T> Guarded(OpKind kind, bool has_range, uint64_t offset_bytes, uint64_t length_bytes, Io io);
  std::vector<ActiveRule> rules_;
  int next_rule_id_ = 1;
  uint64_t ops_seen_ = 0;
  uint64_t ops_by_kind_[kOpKindCount] = {};
  uint64_t faults_injected_ = 0;
  bool recording_ = false;
  std::vector<OpRecord> log_;
};

}  // namespace uq::io

#endif  // UQ_SRC_IO_FAULT_FILE_H_
