#include "src/engine/l2_map.h"

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "format/endian.h"

namespace uq::engine {

using format::ClusterType;
using format::L2Entry;

L2Map::L2Map(MetaFile* meta, RefcountStore* refs, const Geometry& geo, std::vector<uint64_t> l1,
             uint64_t l1_offset_bytes, uint64_t cache_bytes, bool writethrough)
    : meta_(meta),
      refs_(refs),
      geo_(geo),
      l1_(std::make_unique<std::atomic<uint64_t>[]>(l1.size())),
      l1_entries_(l1.size()),
      l1_offset_bytes_(l1_offset_bytes),
      cache_(
          std::make_unique<cache::SliceCache>(&meta->file(), geo.slice_bytes, cache_bytes, "L2")),
      writethrough_(writethrough),
      table_buf_(geo.cluster_bytes),
      l1_buf_(l1.size() * 8) {
  for (size_t i = 0; i < l1.size(); ++i) l1_[i].store(l1[i], std::memory_order_relaxed);
  cache_->set_write_error_hook([meta](int error) { meta->Fail(error, "L2 table write"); });
  // An L2 slice lands in its own table (an active L2 table), never on other
  // metadata (an L1 entry aimed at the refcount table, say).
  cache_->set_write_check([meta](uint64_t offset_bytes, uint64_t length_bytes) {
    return meta->CheckWrite(offset_bytes, length_bytes, Ignore(Metadata::kActiveL2));
  });
}

void L2Map::SetL1(uint64_t index, uint64_t raw) {
  const uint64_t old_table = L1(index) & format::kOffsetMask;
  const uint64_t new_table = raw & format::kOffsetMask;
  if (old_table != new_table) {
    OverlapMap& m = meta_->overlaps();
    m.Replace(m.RegionOf(Metadata::kActiveL2, old_table, old_table ? geo_.cluster_bytes : 0),
              m.RegionOf(Metadata::kActiveL2, new_table, new_table ? geo_.cluster_bytes : 0));
  }
  l1_[index].store(raw, std::memory_order_release);
  l1_dirty_.store(true, std::memory_order_release);
  meta_->NoteChange();
}

void L2Map::ReplaceL1(const std::vector<uint64_t>& entries, uint64_t offset_bytes) {
  OverlapMap& m = meta_->overlaps();
  m.Replace(m.RegionOf(Metadata::kActiveL1, l1_offset_bytes_, l1_entries_ * 8),
            m.RegionOf(Metadata::kActiveL1, offset_bytes, entries.size() * 8));
  l1_ = std::make_unique<std::atomic<uint64_t>[]>(entries.size());
  for (size_t i = 0; i < entries.size(); ++i) l1_[i].store(entries[i], std::memory_order_relaxed);
  l1_entries_ = entries.size();
  l1_offset_bytes_ = offset_bytes;
  l1_buf_.assign(entries.size() * 8, std::byte{0});
  meta_->NoteChange();
}

bool L2Map::HasTable(const GuestAddress& a) const {
  return a.l1_index < l1_entries_ && (L1(a.l1_index) & format::kOffsetMask) != 0;
}

Task<int> L2Map::Find(const GuestAddress& a, Slot* slot) {
  if (a.l1_index >= l1_entries_) {
    co_return co_await meta_->MarkCorrupt(absl::StrCat(
        "guest cluster ", a.cluster, " is beyond the L1 table (", l1_entries_, " entries)"));
  }
  auto l1e = format::DecodeL1Entry(L1(a.l1_index));
  if (!l1e.ok()) {
    co_return co_await meta_->MarkCorrupt(
        absl::StrCat("L1 entry ", a.l1_index, ": ", l1e.status().message()));
  }
  if (l1e->l2_offset == 0) {
    slot->ref.Reset();
    co_return 0;
  }
  if (!geo_.ClusterAligned(l1e->l2_offset)) {
    co_return co_await meta_->MarkCorrupt(absl::StrCat(
        "L1 entry ", a.l1_index, ": L2 table offset ", l1e->l2_offset, " is not cluster aligned"));
  }
  int r = co_await cache_->Get(l1e->l2_offset + a.slice_offset_bytes, &slot->ref);
  if (r < 0) co_return r;
  slot->byte_in_slice = a.byte_in_slice;
  co_return 0;
}

Task<int> L2Map::FindForWrite(const GuestAddress& a, Slot* slot) {
  if (a.l1_index < l1_entries_) {
    const uint64_t raw = L1(a.l1_index);
    if ((raw & format::kOffsetMask) == 0 || !(raw & format::kOflagCopied)) {
      co_await meta_->lock().Lock();
      cache::MutexGuard guard(&meta_->lock());
      int r = co_await PrepareTable(a.l1_index);
      if (r < 0) co_return r;
    }
  }
  co_return co_await Find(a, slot);
}

Task<int> L2Map::PrepareTable(uint64_t l1_index) {
  const uint64_t raw = L1(l1_index);
  const uint64_t old = raw & format::kOffsetMask;
  if (old != 0 && (raw & format::kOflagCopied)) co_return 0;  // done meanwhile
  if (old != 0) {
    if (!geo_.ClusterAligned(old)) {
      co_return co_await meta_->MarkCorrupt(absl::StrCat(
          "L1 entry ", l1_index, ": L2 table offset ", old, " is not cluster aligned"));
    }
    uint64_t rc = 0;
    int r = co_await refs_->Get(geo_.ClusterIndex(old), &rc);
    if (r < 0) co_return r;
    if (rc == 0) {
      co_return co_await meta_->MarkCorrupt(
          absl::StrCat("L2 table at ", old, " (L1 index ", l1_index, ") has refcount 0"));
    }
    if (rc == 1) {  // not shared after all: just own it
      SetL1(l1_index, raw | format::kOflagCopied);
      co_return 0;
    }
  }
  const int64_t new_offset = co_await refs_->Allocate(1);
  if (new_offset < 0) co_return static_cast<int>(new_offset);
  int r = co_await CopyTable(old, static_cast<uint64_t>(new_offset));
  // The table is written; the L1 entry reaches the disk in Flush, after an
  // fsync, so the table is never reachable before it is durable. Write-through
  // writes the L1 table at the end of this request instead: fsync the new
  // table now (rare: once per L2 table) so that still holds.
  if (r >= 0 && writethrough_) r = co_await meta_->Sync();
  if (r < 0) {
    co_await refs_->Unallocate(static_cast<uint64_t>(new_offset));
    co_return r;
  }
  SetL1(l1_index, static_cast<uint64_t>(new_offset) | format::kOflagCopied);
  if (old != 0) refs_->QueueFree(geo_.ClusterIndex(old), 1);
  co_return 0;
}

Task<int> L2Map::CopyTable(uint64_t from_offset, uint64_t to_offset) {
  if (from_offset != 0) {
    // Copy through the cache: it holds the newest version of every slice.
    for (uint64_t s = 0; s < geo_.cluster_bytes; s += geo_.slice_bytes) {
      cache::SliceCache::Ref ref;
      int r = co_await cache_->Get(from_offset + s, &ref);
      if (r < 0) co_return r;
      std::memcpy(table_buf_.data() + s, ref.data().data(), geo_.slice_bytes);
    }
  } else {
    std::fill(table_buf_.begin(), table_buf_.end(), std::byte{0});
  }
  // A cluster the allocator hands out is free, unless refcounts lie.
  int c = co_await meta_->CheckWrite(to_offset, geo_.cluster_bytes);
  if (c < 0) co_return c;
  co_await cache_->Drop(to_offset, geo_.cluster_bytes);
  int64_t w = co_await meta_->file().Write(to_offset, table_buf_);
  co_return w < 0 ? static_cast<int>(w) : 0;
}

RawL2Entry L2Map::Raw(const Slot& slot) const {
  if (!slot.ref.valid()) return {};
  const std::byte* p = slot.ref.data().data() + slot.byte_in_slice;
  return {format::LoadBE64(p), geo_.extended_l2 ? format::LoadBE64(p + 8) : 0};
}

Task<int> L2Map::Decode(const Slot& slot, const GuestAddress& a, L2Entry* out) {
  if (!slot.ref.valid()) {
    *out = L2Entry{};
    co_return 0;
  }
  const RawL2Entry raw = Raw(slot);
  const bool external = meta_->external_data();
  auto e =
      format::DecodeL2Entry(raw.entry, raw.bitmap, geo_.cluster_bits, geo_.extended_l2, external);
  if (!e.ok()) {
    co_return co_await meta_->MarkCorrupt(
        absl::StrCat("L2 entry of guest cluster ", a.cluster, ": ", e.status().message()));
  }
  if (external) {
    if (e->type == ClusterType::kCompressed) {
      co_return co_await meta_->MarkCorrupt(absl::StrCat(
          "guest cluster ", a.cluster, ": compressed cluster in an image with a data file"));
    }
    // Data clusters sit at their guest offset (host offset 0 is allocated
    // too here, and is only guest cluster 0's).
    if ((e->type == ClusterType::kNormal || e->type == ClusterType::kZeroAlloc) &&
        e->host_offset != a.cluster_offset_bytes()) {
      co_return co_await meta_->MarkCorrupt(
          absl::StrCat("guest cluster ", a.cluster, ": host offset ", e->host_offset,
                       " differs from the guest offset (data file)"));
    }
  } else if ((e->type == ClusterType::kNormal || e->type == ClusterType::kZeroAlloc) &&
             e->host_offset == 0) {
    co_return co_await meta_->MarkCorrupt(
        absl::StrCat("guest cluster ", a.cluster, " maps to the header cluster"));
  }
  if (e->type == ClusterType::kCompressed && e->compressed_length > 2 * geo_.cluster_bytes) {
    co_return co_await meta_->MarkCorrupt(absl::StrCat("guest cluster ", a.cluster,
                                                       ": compressed length ", e->compressed_length,
                                                       " exceeds two clusters"));
  }
  *out = *e;
  co_return 0;
}

void L2Map::Store(Slot& slot, const L2Entry& e) {
  format::EncodedL2 enc = format::EncodeL2Entry(e, geo_.cluster_bits, geo_.extended_l2);
  {
    auto data_lock = slot.ref.LockData();
    std::byte* p = slot.ref.data().data() + slot.byte_in_slice;
    format::StoreBE64(p, enc.entry);
    if (geo_.extended_l2) format::StoreBE64(p + 8, enc.bitmap);
  }
  slot.ref.MarkDirty();
  meta_->NoteChange();
}

Source L2Map::Classify(const L2Entry& e, uint32_t subcluster) const {
  if (e.type == ClusterType::kCompressed) return Source::kCompressed;
  if (!geo_.extended_l2) {
    switch (e.type) {
      case ClusterType::kNormal:
        return Source::kData;
      case ClusterType::kZeroPlain:
      case ClusterType::kZeroAlloc:
        return Source::kZero;
      default:
        return Source::kBacking;
    }
  }
  if ((e.alloc_bitmap >> subcluster) & 1) return Source::kData;
  if ((e.zero_bitmap >> subcluster) & 1) return Source::kZero;
  return Source::kBacking;
}

void L2Map::QueueFree(const L2Entry& e) {
  if (meta_->external_data()) return;  // data clusters are not refcounted
  if ((e.type == ClusterType::kNormal || e.type == ClusterType::kZeroAlloc) && e.host_offset) {
    refs_->QueueFree(geo_.ClusterIndex(e.host_offset), 1);
  } else if (e.type == ClusterType::kCompressed && e.compressed_length > 0) {
    const uint64_t first = geo_.ClusterIndex(e.compressed_offset);
    const uint64_t last = geo_.ClusterIndex(e.compressed_offset + e.compressed_length - 1);
    refs_->QueueFree(first, last - first + 1);
  }
}

Task<int> L2Map::WriteL1() {
  // Cleared before the copy: a change made after it sets it again.
  l1_dirty_.store(false, std::memory_order_release);
  for (size_t i = 0; i < l1_entries_; ++i) format::StoreBE64(&l1_buf_[i * 8], L1(i));
  // The L1 table may not overlap other metadata (the header, a table).
  int c = co_await meta_->CheckWrite(l1_offset_bytes_, l1_buf_.size(), Ignore(Metadata::kActiveL1));
  if (c < 0) {
    l1_dirty_ = true;
    co_return c;
  }
  ++l1_writes_in_flight_;
  int64_t w = co_await meta_->file().Write(l1_offset_bytes_, l1_buf_);
  --l1_writes_in_flight_;
  if (w < 0) {
    l1_dirty_ = true;
    co_return meta_->Fail(static_cast<int>(w), "L1 table write");
  }
  co_return 0;
}

}  // namespace uq::engine
