#include "src/engine/overlap_map.h"

#include <algorithm>
#include <thread>
#include <utility>

#include "format/tables.h"

namespace uq::engine {

namespace {

constexpr size_t kMinCapacity = 16;

uint64_t EndKind(const OverlapMap::Region& r) {
  return r.end_cluster << 8 | static_cast<uint64_t>(r.kind);
}

}  // namespace

const char* MetadataName(Metadata kind) {
  switch (kind) {
    case Metadata::kHeader:
      return "qcow2_header";
    case Metadata::kActiveL1:
      return "active L1 table";
    case Metadata::kActiveL2:
      return "active L2 table";
    case Metadata::kRefcountTable:
      return "refcount table";
    case Metadata::kRefcountBlock:
      return "refcount block";
    case Metadata::kSnapshotTable:
      return "snapshot table";
    case Metadata::kInactiveL1:
      return "inactive L1 table";
  }
  return "metadata";
}

OverlapMap::OverlapMap(uint32_t cluster_bits) : cluster_bits_(cluster_bits) {
  arrays_.push_back(std::make_unique<Array>(kMinCapacity));
  array_.store(arrays_.back().get(), std::memory_order_release);
}

OverlapMap::Region OverlapMap::RegionOf(Metadata kind, uint64_t offset_bytes,
                                        uint64_t length_bytes) const {
  if (length_bytes == 0) return {kind, 0, 0};
  const uint64_t cs = uint64_t{1} << cluster_bits_;
  const uint64_t first = offset_bytes >> cluster_bits_;
  // No overflow: the byte counts are at most a table's (a few GiB).
  const uint64_t in_cluster = offset_bytes & (cs - 1);
  const uint64_t clusters = (in_cluster + length_bytes + cs - 1) >> cluster_bits_;
  return {kind, first, first + clusters};
}

// Sequence number odd while the slots change. The slot stores that follow
// are release stores, so a reader that sees any of them also sees the odd
// number when it checks again, and discards what it read.
void OverlapMap::BeginWrite() {
  seq_.store(seq_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}

void OverlapMap::EndWrite() {
  seq_.store(seq_.load(std::memory_order_relaxed) + 1, std::memory_order_release);
}

void OverlapMap::Recompute(Array& a, size_t from, size_t n) {
  uint64_t max_end = from == 0 ? 0 : a.slots[from - 1].max_end.load(std::memory_order_relaxed);
  for (size_t i = from; i < n; ++i) {
    max_end = std::max(max_end, a.slots[i].end_kind.load(std::memory_order_relaxed) >> 8);
    a.slots[i].max_end.store(max_end, std::memory_order_release);
  }
}

void OverlapMap::Reset(std::vector<Region> regions) {
  std::erase_if(regions, [](const Region& r) { return r.end_cluster <= r.first_cluster; });
  std::sort(regions.begin(), regions.end(),
            [](const Region& a, const Region& b) { return a.first_cluster < b.first_cluster; });
  auto fresh = std::make_unique<Array>(std::max(kMinCapacity, regions.size() * 3 / 2));
  for (size_t i = 0; i < regions.size(); ++i) {
    fresh->slots[i].first.store(regions[i].first_cluster, std::memory_order_relaxed);
    fresh->slots[i].end_kind.store(EndKind(regions[i]), std::memory_order_relaxed);
  }
  Recompute(*fresh, 0, regions.size());
  std::lock_guard<std::mutex> g(mu_);
  BeginWrite();
  array_.store(fresh.get(), std::memory_order_release);
  size_.store(regions.size(), std::memory_order_release);
  arrays_.push_back(std::move(fresh));
  EndWrite();
}

void OverlapMap::InsertLocked(const Region& r) {
  if (r.end_cluster <= r.first_cluster) return;
  Array* a = array_.load(std::memory_order_relaxed);
  const size_t n = size_.load(std::memory_order_relaxed);
  if (n == a->capacity) {
    // Readers of the old array keep their copy; the new one is complete
    // before it is published.
    auto bigger = std::make_unique<Array>(a->capacity * 2);
    for (size_t i = 0; i < n; ++i) {
      bigger->slots[i].first.store(a->slots[i].first.load(std::memory_order_relaxed),
                                   std::memory_order_relaxed);
      bigger->slots[i].end_kind.store(a->slots[i].end_kind.load(std::memory_order_relaxed),
                                      std::memory_order_relaxed);
      bigger->slots[i].max_end.store(a->slots[i].max_end.load(std::memory_order_relaxed),
                                     std::memory_order_relaxed);
    }
    a = bigger.get();
    array_.store(a, std::memory_order_release);
    arrays_.push_back(std::move(bigger));
  }
  // After the regions starting at or before r: appends (new tables at the
  // end of the file, the common case) move nothing.
  size_t pos = n;
  while (pos > 0 && a->slots[pos - 1].first.load(std::memory_order_relaxed) > r.first_cluster) {
    --pos;
  }
  for (size_t i = n; i > pos; --i) {
    a->slots[i].first.store(a->slots[i - 1].first.load(std::memory_order_relaxed),
                            std::memory_order_release);
    a->slots[i].end_kind.store(a->slots[i - 1].end_kind.load(std::memory_order_relaxed),
                               std::memory_order_release);
  }
  a->slots[pos].first.store(r.first_cluster, std::memory_order_release);
  a->slots[pos].end_kind.store(EndKind(r), std::memory_order_release);
  Recompute(*a, pos, n + 1);
  size_.store(n + 1, std::memory_order_release);
}

void OverlapMap::RemoveLocked(const Region& r) {
  if (r.end_cluster <= r.first_cluster) return;
  Array* a = array_.load(std::memory_order_relaxed);
  const size_t n = size_.load(std::memory_order_relaxed);
  size_t pos = n;
  for (size_t i = n; i > 0; --i) {
    const uint64_t first = a->slots[i - 1].first.load(std::memory_order_relaxed);
    if (first < r.first_cluster) break;
    if (first == r.first_cluster &&
        a->slots[i - 1].end_kind.load(std::memory_order_relaxed) == EndKind(r)) {
      pos = i - 1;
      break;
    }
  }
  if (pos == n) return;
  for (size_t i = pos; i + 1 < n; ++i) {
    a->slots[i].first.store(a->slots[i + 1].first.load(std::memory_order_relaxed),
                            std::memory_order_release);
    a->slots[i].end_kind.store(a->slots[i + 1].end_kind.load(std::memory_order_relaxed),
                               std::memory_order_release);
  }
  size_.store(n - 1, std::memory_order_release);
  Recompute(*a, pos, n - 1);
}

void OverlapMap::Add(const Region& r) {
  std::lock_guard<std::mutex> g(mu_);
  BeginWrite();
  InsertLocked(r);
  EndWrite();
}

void OverlapMap::Remove(const Region& r) {
  std::lock_guard<std::mutex> g(mu_);
  BeginWrite();
  RemoveLocked(r);
  EndWrite();
}

void OverlapMap::Replace(const Region& from, const Region& to) {
  if (from == to) return;
  std::lock_guard<std::mutex> g(mu_);
  BeginWrite();
  RemoveLocked(from);
  InsertLocked(to);
  EndWrite();
}

std::optional<Metadata> OverlapMap::Search(const Array& a, size_t n, uint64_t first, uint64_t end,
                                           uint32_t ignore) const {
  // k = the number of regions starting before `end`; a region among them
  // overlaps iff it ends after `first`, and max_end says whether any does.
  size_t lo = 0, hi = n;
  while (lo < hi) {
    const size_t mid = lo + (hi - lo) / 2;
    if (a.slots[mid].first.load(std::memory_order_acquire) < end) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  for (size_t i = lo; i > 0; --i) {
    const Slot& s = a.slots[i - 1];
    if (s.max_end.load(std::memory_order_acquire) <= first) break;
    const uint64_t end_kind = s.end_kind.load(std::memory_order_acquire);
    const auto kind = static_cast<Metadata>(end_kind & 0xff);
    if ((end_kind >> 8) > first && !(ignore & Ignore(kind))) return kind;
  }
  return std::nullopt;
}

std::optional<Metadata> OverlapMap::Find(uint64_t offset_bytes, uint64_t length_bytes,
                                         uint32_t ignore) const {
  if (length_bytes == 0) return std::nullopt;
  const uint64_t first = offset_bytes >> cluster_bits_;
  const uint64_t last = (offset_bytes + (length_bytes - 1)) >> cluster_bits_;
  const uint64_t end = offset_bytes + (length_bytes - 1) < offset_bytes ? ~uint64_t{0} : last + 1;
  for (;;) {
    const uint64_t before = seq_.load(std::memory_order_acquire);
    if (before & 1) {
      std::this_thread::yield();
      continue;
    }
    const Array* a = array_.load(std::memory_order_acquire);
    const size_t n = std::min(size_.load(std::memory_order_acquire), a->capacity);
    const std::optional<Metadata> found = Search(*a, n, first, end, ignore);
    // The acquire loads above keep this one after them.
    if (seq_.load(std::memory_order_relaxed) == before) return found;
  }
}

std::vector<OverlapMap::Region> MetadataRegions(const OverlapMap& map, const format::Header& h,
                                                std::span<const uint64_t> l1,
                                                std::span<const uint64_t> reftable,
                                                const std::vector<format::Snapshot>& snapshots) {
  const uint64_t cs = h.cluster_size();
  std::vector<OverlapMap::Region> out;
  out.reserve(4 + l1.size() + reftable.size() + snapshots.size());
  out.push_back(map.RegionOf(Metadata::kHeader, 0, cs));
  out.push_back(map.RegionOf(Metadata::kActiveL1, h.l1_table_offset, uint64_t{h.l1_size} * 8));
  for (uint64_t raw : l1) {
    const uint64_t table = raw & format::kOffsetMask;
    if (table != 0) out.push_back(map.RegionOf(Metadata::kActiveL2, table, cs));
  }
  out.push_back(map.RegionOf(Metadata::kRefcountTable, h.refcount_table_offset,
                             uint64_t{h.refcount_table_clusters} * cs));
  for (uint64_t block : reftable) {
    if (block != 0) out.push_back(map.RegionOf(Metadata::kRefcountBlock, block, cs));
  }
  if (!snapshots.empty()) {
    out.push_back(map.RegionOf(Metadata::kSnapshotTable, h.snapshots_offset,
                               format::SnapshotTableSize(snapshots)));
  }
  for (const format::Snapshot& s : snapshots) {
    out.push_back(map.RegionOf(Metadata::kInactiveL1, s.l1_table_offset, uint64_t{s.l1_size} * 8));
  }
  return out;
}

}  // namespace uq::engine
