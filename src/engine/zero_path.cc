#include "src/engine/zero_path.h"

#include <algorithm>
#include <utility>

namespace uq::engine {

using format::ClusterType;
using format::L2Entry;

Task<int> ZeroPath::Zero(uint64_t offset_bytes, uint64_t length_bytes, bool may_unmap,
                         bool discard) {
  const Geometry& geo = p_->geo;
  // A version 2 image has no zero flag: a discarded cluster would show the
  // backing file again, so (as QEMU) discards are ignored there.
  if (discard && p_->meta->version() < 3 && p_->backing) co_return 0;
  const uint64_t span = geo.table_span_bytes();
  uint64_t pos = 0;
  while (pos < length_bytes) {
    const uint64_t g = offset_bytes + pos;
    // Ranges under an unallocated L2 table with nothing below already read
    // as zero: skip the whole table's span (a discard of a mostly empty disk
    // is then cheap).
    if (!p_->backing && !p_->meta->data_file_raw() && !p_->l2->HasTable(geo.Locate(g))) {
      pos += std::min(length_bytes - pos, span - g % span);
      continue;
    }
    const uint64_t n =
        std::min(length_bytes - pos, geo.cluster_bytes - (g & (geo.cluster_bytes - 1)));
    const bool whole = geo.ClusterAligned(g) && (n == geo.cluster_bytes || g + n == p_->size_bytes);
    if (!discard || whole) {
      int r = co_await ZeroPiece(g, n, may_unmap);
      if (r < 0) co_return r;
    }
    pos += n;
  }
  co_return 0;
}

Task<int> ZeroPath::Unallocate(uint64_t offset_bytes, uint64_t length_bytes) {
  const Geometry& geo = p_->geo;
  const uint64_t span = geo.table_span_bytes();
  uint64_t pos = 0;
  while (pos < length_bytes) {
    const uint64_t g = offset_bytes + pos;
    // Nothing to drop under an unallocated L2 table.
    if (!p_->l2->HasTable(geo.Locate(g))) {
      pos += std::min(length_bytes - pos, span - g % span);
      continue;
    }
    const uint64_t n =
        std::min(length_bytes - pos, geo.cluster_bytes - (g & (geo.cluster_bytes - 1)));
    const bool whole = geo.ClusterAligned(g) && (n == geo.cluster_bytes || g + n == p_->size_bytes);
    if (whole) {
      int r = co_await ZeroInEntry(geo.Locate(g), 0, geo.cluster_bytes, true, true);
      if (r < 0) co_return r;
    }
    pos += n;
  }
  co_return 0;
}

Task<int> ZeroPath::WriteZerosIfNeeded(uint64_t g, uint64_t n) {
  bool zero = false;
  int r = co_await read_->ReadsZero(g, n, &zero);
  if (r < 0 || zero) co_return r;
  co_return co_await write_->WritePiece(g, n, {});
}

Task<int> ZeroPath::ZeroPiece(uint64_t g, uint64_t n, bool may_unmap) {
  const Geometry& geo = p_->geo;
  const GuestAddress a = geo.Locate(g);
  const uint64_t in_off = a.in_cluster_bytes;
  // A raw data file must read as the guest disk by itself: write real zeros.
  // Version 2 has no zero flag: with a backing file only real zeros hide it.
  if (p_->meta->data_file_raw() || (p_->meta->version() < 3 && p_->backing)) {
    co_return co_await WriteZerosIfNeeded(g, n);
  }
  // [begin, end): the whole (sub)clusters; the edges around them get real
  // zeros. A piece that reaches the end of the disk covers the rest of its
  // (sub)cluster too: nothing past the end is read (QEMU zeroes so).
  const bool at_end = g + n == p_->size_bytes;
  uint64_t begin = in_off;
  uint64_t end = in_off + n;
  if (geo.extended_l2) {
    const uint64_t sub = geo.subcluster_bytes;
    begin = (in_off + sub - 1) / sub * sub;
    end = at_end ? (in_off + n + sub - 1) / sub * sub : (in_off + n) / sub * sub;
    if (begin >= end) begin = end = in_off + n;  // no whole subcluster
  } else if (in_off == 0 && at_end) {
    end = geo.cluster_bytes;
  } else if (n != geo.cluster_bytes) {
    begin = end = in_off + n;  // partial cluster: real zeros
  }
  const uint64_t gco = a.cluster_offset_bytes();
  for (auto [s, e] : {std::pair{in_off, std::min(begin, in_off + n)},
                      std::pair{std::max(end, begin), in_off + n}}) {
    if (s >= e) continue;
    int r = co_await WriteZerosIfNeeded(gco + s, e - s);
    if (r < 0) co_return r;
  }
  if (begin >= end) co_return 0;
  co_return co_await ZeroInEntry(a, begin, end, may_unmap);
}

Task<int> ZeroPath::ZeroInEntry(const GuestAddress& a, uint64_t begin, uint64_t end, bool may_unmap,
                                bool unallocate) {
  ClusterEntry ce;
  co_await p_->cluster_locks.Lock(a.cluster, true);
  ce.lock.Adopt(&p_->cluster_locks, a.cluster, true);
  // No table and nothing below: already reads as zero (checked under the
  // lock: a write of this cluster in flight may be creating the table).
  if (!p_->l2->HasTable(a) && (!p_->backing || unallocate)) co_return 0;
  {
    int r = co_await p_->l2->FindForWrite(a, &ce.slot);
    if (r >= 0) r = co_await p_->l2->Decode(ce.slot, a, &ce.entry);
    if (r < 0) co_return r;
  }
  const L2Entry& old = ce.entry;
  bool free_old = false;
  bool rewrite = false;
  L2Entry ne;
  if (unallocate) {
    free_old = true;  // ne stays unallocated, with no zero bits
  } else {
    ne = ZeroedEntry(old, begin, end, may_unmap, &free_old, &rewrite);
  }
  if (rewrite) {
    // Subcluster bits cannot describe part of a compressed cluster:
    // decompress into a normal cluster with real zeros instead.
    ce.Release();
    const uint64_t stop = std::min(end, p_->size_bytes - a.cluster_offset_bytes());
    co_return co_await write_->WritePiece(a.cluster_offset_bytes() + begin, stop - begin, {});
  }
  p_->l2->Store(ce.slot, ne);
  if (free_old) p_->l2->QueueFree(old);  // after the entry that replaces it
  const bool external = p_->meta->external_data();
  const bool has_host = (old.type == ClusterType::kNormal || old.type == ClusterType::kZeroAlloc) &&
                        (old.host_offset != 0 || external);
  if (free_old && has_host && external && may_unmap) {
    co_await p_->meta->data_file().Discard(a.cluster_offset_bytes(), p_->geo.cluster_bytes);
  }
  co_return 0;
}

L2Entry ZeroPath::ZeroedEntry(const L2Entry& old, uint64_t begin, uint64_t end, bool may_unmap,
                              bool* free_old, bool* rewrite) const {
  const Geometry& geo = p_->geo;
  const bool external = p_->meta->external_data();
  const bool v3 = p_->meta->version() >= 3;
  const bool backing = p_->backing != nullptr;
  const bool whole = begin == 0 && end == geo.cluster_bytes;
  const bool has_host = (old.type == ClusterType::kNormal || old.type == ClusterType::kZeroAlloc) &&
                        (old.host_offset != 0 || external);
  const bool keep_host = has_host && !may_unmap && (old.copied || external);
  L2Entry ne;
  if (!geo.extended_l2) {
    if (keep_host && v3) {
      ne.type = ClusterType::kZeroAlloc;
      ne.host_offset = old.host_offset;
      ne.copied = true;
    } else {
      ne.type = (backing && v3) ? ClusterType::kZeroPlain : ClusterType::kUnallocated;
      *free_old = true;
    }
    return ne;
  }
  if (old.type == ClusterType::kCompressed && !whole) {
    *rewrite = true;
    return ne;
  }
  if (old.type == ClusterType::kCompressed || (whole && !keep_host)) {
    ne.type = ClusterType::kUnallocated;
    ne.zero_bitmap = backing ? 0xffffffffu : 0;
    *free_old = true;
    return ne;
  }
  const uint32_t m = SubclusterMask(geo.Subcluster(begin), geo.Subcluster(end));
  ne = old;
  ne.alloc_bitmap &= ~m;
  ne.zero_bitmap |= m;
  return ne;
}

}  // namespace uq::engine
