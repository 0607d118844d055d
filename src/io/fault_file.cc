#include "src/io/fault_file.h"

#include <algorithm>

#include "src/io/iovec.h"

namespace uq::io {

int FaultFile::AddRule(const FaultRule& rule) {
  int id = next_rule_id_++;
  rules_.push_back(ActiveRule{id, rule});
  return id;
}

void FaultFile::RemoveRule(int id) {
  std::erase_if(rules_, [id](const ActiveRule& r) { return r.id == id; });
}

void FaultFile::ClearRules() { rules_.clear(); }

uint64_t FaultFile::rule_fired(int id) const {
  for (const ActiveRule& r : rules_) {
    if (r.id == id) return r.fired;
  }
  return 0;
}

int FaultFile::FailNth(uint64_t n, int error) {
  return AddRule({.skip = n > 0 ? n - 1 : 0, .error = error});
}

int FaultFile::FailNthOf(OpKind kind, uint64_t n, int error) {
  return AddRule({.kinds = OpKindBit(kind), .skip = n > 0 ? n - 1 : 0, .error = error});
}

int FaultFile::FailAlways(OpKind kind, int error) {
  return AddRule({.kinds = OpKindBit(kind), .error = error, .once = false});
}

const FaultFile::ActiveRule* FaultFile::Check(OpKind kind, bool has_range, uint64_t offset_bytes,
                                              uint64_t length_bytes) {
  ++ops_seen_;
  ++ops_by_kind_[static_cast<int>(kind)];
  const ActiveRule* firing = nullptr;
  for (ActiveRule& r : rules_) {
    if ((r.rule.kinds & OpKindBit(kind)) == 0) continue;
    bool whole_file = r.rule.offset_bytes == 0 && r.rule.length_bytes == FaultRule::kWholeFile;
    if (!whole_file) {
      if (!has_range || length_bytes == 0) continue;
      uint64_t rule_end = r.rule.length_bytes > FaultRule::kWholeFile - r.rule.offset_bytes
                              ? FaultRule::kWholeFile
                              : r.rule.offset_bytes + r.rule.length_bytes;
      uint64_t op_end = length_bytes > FaultRule::kWholeFile - offset_bytes
                            ? FaultRule::kWholeFile
                            : offset_bytes + length_bytes;
      if (offset_bytes >= rule_end || r.rule.offset_bytes >= op_end) continue;
    }
    ++r.matched;
    if (firing != nullptr) continue;
    if (r.matched <= r.rule.skip) continue;
    if (r.rule.once && r.fired > 0) continue;
    ++r.fired;
    firing = &r;
  }
  if (firing != nullptr) ++faults_injected_;
  if (recording_) log_.push_back({kind, offset_bytes, length_bytes, firing != nullptr});
  return firing;
}

template <typename T, typename Io>
Task<T> FaultFile::Guarded(OpKind kind, bool has_range, uint64_t offset_bytes,
                           uint64_t length_bytes, Io io) {
  const ActiveRule* f = Check(kind, has_range, offset_bytes, length_bytes);
  if (f == nullptr) co_return co_await io();
  // Copied before awaiting: AddRule may move the rules meanwhile.
  const int error = f->rule.error;
  if (f->rule.effect == FaultEffect::kFailAfterIo) co_await io();
  co_return -error;
}

Task<int64_t> FaultFile::ReadV(uint64_t offset_bytes, std::span<const iovec> iov) {
  return Guarded<int64_t>(OpKind::kRead, true, offset_bytes, IovLength(iov),
                          [=, this] { return base()->ReadV(offset_bytes, iov); });
}

Task<int64_t> FaultFile::WriteV(uint64_t offset_bytes, std::span<const iovec> iov) {
  return Guarded<int64_t>(OpKind::kWrite, true, offset_bytes, IovLength(iov),
                          [=, this] { return base()->WriteV(offset_bytes, iov); });
}

Task<int> FaultFile::Flush() {
  return Guarded<int>(OpKind::kFlush, false, 0, 0, [this] { return base()->Flush(); });
}

Task<int> FaultFile::Discard(uint64_t offset_bytes, uint64_t length_bytes) {
  return Guarded<int>(OpKind::kDiscard, true, offset_bytes, length_bytes,
                      [=, this] { return base()->Discard(offset_bytes, length_bytes); });
}

Task<int> FaultFile::WriteZeroes(uint64_t offset_bytes, uint64_t length_bytes) {
  return Guarded<int>(OpKind::kWriteZeroes, true, offset_bytes, length_bytes,
                      [=, this] { return base()->WriteZeroes(offset_bytes, length_bytes); });
}

Task<int> FaultFile::Truncate(uint64_t size_bytes) {
  return Guarded<int>(OpKind::kTruncate, false, size_bytes, 0,
                      [=, this] { return base()->Truncate(size_bytes); });
}

}  // namespace uq::io
