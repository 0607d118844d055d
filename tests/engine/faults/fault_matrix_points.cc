// The fault matrix's write points: every mutating file operation of the
// fault-free run, classified by the region of the final layout it touches
// (FaultMatrix::Classify), the deterministic sample of them that runs
// (Sample), and the "once" and "always" fault rules aimed at one of them.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "format/endian.h"
#include "format/header.h"
#include "format/tables.h"
#include "src/io/fault_file.h"
#include "src/io/op_kind.h"
#include "tests/engine/faults/fault_matrix_util.h"
#include "tests/engine/test_util.h"

namespace uq::engine::testing {

std::vector<Point> FaultMatrix::Classify(const Outcome& clean) {
  struct Range {
    uint64_t begin, end;
    Region region;
  };
  std::vector<Range> ranges;
  const std::vector<std::byte>& b = clean.bytes;
  auto h = format::DecodeHeader(b, format::DecodeLimits{b.size()});
  EXPECT_TRUE(h.ok()) << h.status();
  const uint64_t c = cluster_bytes();
  ranges.push_back({0, c, Region::kHeader});
  if (h.ok()) {
    ranges.push_back(
        {h->l1_table_offset, h->l1_table_offset + uint64_t{h->l1_size} * 8, Region::kL1});
    const uint64_t rt_bytes = uint64_t{h->refcount_table_clusters} << h->cluster_bits;
    ranges.push_back(
        {h->refcount_table_offset, h->refcount_table_offset + rt_bytes, Region::kRefTable});
    ranges.push_back({initial_reftable_offset_, initial_reftable_offset_ + initial_reftable_bytes_,
                      Region::kRefTable});
    for (uint64_t i = 0; i < rt_bytes / 8 && h->refcount_table_offset + i * 8 + 8 <= b.size();
         ++i) {
      uint64_t off = format::LoadBE64(&b[h->refcount_table_offset + i * 8]) & format::kOffsetMask;
      if (off) ranges.push_back({off, off + c, Region::kRefBlock});
    }
    for (uint64_t i = 0; i < h->l1_size && h->l1_table_offset + i * 8 + 8 <= b.size(); ++i) {
      uint64_t off = format::LoadBE64(&b[h->l1_table_offset + i * 8]) & format::kOffsetMask;
      if (off) ranges.push_back({off, off + c, Region::kL2});
    }
  }
  std::vector<Point> points;
  size_t index = 0;
  for (const FaultFile::OpRecord& op : clean.log) {
    if ((OpKindBit(op.kind) & kMutatingKinds) == 0) continue;
    Region region = Region::kData;
    if (op.kind == OpKind::kFlush) {
      region = Region::kFlush;
    } else if (op.kind == OpKind::kTruncate) {
      region = Region::kTruncate;
    } else {
      for (const Range& r : ranges) {
        if (op.offset_bytes < r.end && r.begin < op.offset_bytes + op.length_bytes) {
          region = r.region;
          break;
        }
      }
    }
    points.push_back({index++, op, region});
  }
  return points;
}

std::vector<size_t> FaultMatrix::Sample(const std::vector<Point>& points) {
  std::vector<size_t> all(points.size());
  for (size_t i = 0; i < points.size(); ++i) all[i] = i;
  if (const char* only = std::getenv("UQ_FAULT_POINT")) {
    size_t n = std::strtoull(only, nullptr, 0);
    if (n < points.size()) return {n};
    return {};
  }
  const size_t cap = testing::EnvU64("UQ_FAULT_CAP", kSanitized ? 8 : kind_.max_points);
  if (testing::EnvU64("UQ_FAULT_FULL", 0) != 0 || points.size() <= cap) return all;
  // Rare points (header, L1, refcount table, truncate) and the operation
  // right after each (usually the fsync ordering it) are always kept; other
  // metadata points next, thinned evenly; data points fill what is left (at
  // least a few).
  std::vector<size_t> anchors, meta, data;
  for (size_t i = 0; i < points.size(); ++i) {
    const Region r = points[i].region;
    const bool rare = r == Region::kHeader || r == Region::kL1 || r == Region::kTruncate ||
                      r == Region::kRefTable;
    const bool after_rare =
        i > 0 &&
        (points[i - 1].region == Region::kHeader || points[i - 1].region == Region::kL1 ||
         points[i - 1].region == Region::kTruncate || points[i - 1].region == Region::kRefTable);
    if (rare || after_rare) {
      anchors.push_back(i);
    } else {
      (r == Region::kData ? data : meta).push_back(i);
    }
  }
  auto thin = [](const std::vector<size_t>& v, size_t keep) {
    if (v.size() <= keep) return v;
    std::vector<size_t> out;
    if (keep == 0) return out;
    if (keep == 1) return std::vector<size_t>{v.front()};
    for (size_t k = 0; k < keep; ++k) out.push_back(v[k * (v.size() - 1) / (keep - 1)]);
    out.erase(std::unique(out.begin(), out.end()), out.end());
    return out;
  };
  const size_t budget = cap > 8 ? cap - 8 : 0;
  std::vector<size_t> chosen = thin(anchors, budget / 2);
  std::vector<size_t> m = thin(meta, budget > chosen.size() ? budget - chosen.size() : 0);
  chosen.insert(chosen.end(), m.begin(), m.end());
  std::vector<size_t> d =
      thin(data, std::max<size_t>(8, cap > chosen.size() ? cap - chosen.size() : 0));
  chosen.insert(chosen.end(), d.begin(), d.end());
  std::sort(chosen.begin(), chosen.end());
  chosen.erase(std::unique(chosen.begin(), chosen.end()), chosen.end());
  return chosen;
}

FaultRule FaultMatrix::OnceRule(const Point& p, int error) const {
  FaultRule r;
  r.kinds = kMutatingKinds;
  r.skip = p.index;
  r.error = error;
  r.once = true;
  return r;
}

FaultRule FaultMatrix::AlwaysRule(const Point& p, const std::vector<FaultFile::OpRecord>& log,
                                  int error) const {
  FaultRule r;
  r.kinds = OpKindBit(p.op.kind);
  r.error = error;
  r.once = false;
  const bool ranged =
      p.op.kind != OpKind::kFlush && p.op.kind != OpKind::kTruncate && p.op.length_bytes > 0;
  if (ranged) {
    r.offset_bytes = p.op.offset_bytes;
    r.length_bytes = p.op.length_bytes;
  }
  // Matching operations before the point pass.
  size_t mutating = 0;
  for (const FaultFile::OpRecord& op : log) {
    if ((OpKindBit(op.kind) & kMutatingKinds) == 0) continue;
    if (mutating++ == p.index) break;
    if (op.kind != p.op.kind) continue;
    if (ranged && (op.length_bytes == 0 || op.offset_bytes >= r.offset_bytes + r.length_bytes ||
                   r.offset_bytes >= op.offset_bytes + op.length_bytes)) {
      continue;
    }
    ++r.skip;
  }
  return r;
}

}  // namespace uq::engine::testing
