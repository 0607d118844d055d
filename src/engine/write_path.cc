#include "src/engine/write_path.h"

#include <optional>

#include "absl/strings/str_cat.h"
#include "src/io/iovec.h"
#include "src/io/join.h"

namespace uq::engine {

using format::ClusterType;
using format::L2Entry;

Task<int> WritePath::WritePiece(uint64_t g, uint64_t n, std::span<const iovec> data_iov) {
  const GuestAddress a = p_->geo.Locate(g);
  iovec zero_vec{p_->zeros.data(), n};
  std::span<const iovec> iov = data_iov.empty() ? std::span<const iovec>(&zero_vec, 1) : data_iov;
  const uint32_t sa = p_->geo.Subcluster(a.in_cluster_bytes);
  const uint32_t sb = p_->geo.Subcluster(a.in_cluster_bytes + n + p_->geo.subcluster_bytes - 1);
  const uint32_t touched = p_->geo.extended_l2 ? SubclusterMask(sa, sb) : 0;
  ClusterEntry ce;
  {
    bool done = false;
    int r = co_await TryOverwrite(a, iov, touched, &ce, &done);
    if (done) co_return r;
  }
  // Allocation, COW or a metadata update, under the exclusive lock (the
  // entry is decoded again only if it changed since the fast path saw it).
  int r = co_await p_->LockEntry(a, true, &ce);
  if (r < 0) co_return r;
  const L2Entry& old = ce.entry;
  Target t;
  r = co_await ChooseTarget(a, old, &t);
  if (r < 0) co_return r;

  auto buf = p_->cluster_pool.Acquire();
  Cow cow;
  r = co_await PrepareCow(a, n, old, t, buf.span(), &cow);
  if (r >= 0) r = co_await WriteCluster(a, n, iov, t, cow, buf.span());
  if (r >= 0) r = co_await SyncBeforeEntry(a, n, old, t, cow);
  if (r < 0) {
    co_await GiveBack(t);
    co_return r;
  }
  // The new entry first, then the free of what it replaces: a flush that
  // takes the free (on another thread) then also writes this entry.
  p_->l2->Store(ce.slot, cow.entry);
  if (!t.in_place) {
    p_->cow_writes.fetch_add(1, std::memory_order_relaxed);
    p_->l2->QueueFree(old);
  }
  co_return 0;
}

Task<int> WritePath::TryOverwrite(const GuestAddress& a, std::span<const iovec> iov,
                                  uint32_t touched, ClusterEntry* ce, bool* done) {
  int r = co_await p_->LockEntry(a, false, ce);
  if (r < 0) {
    *done = true;
    co_return r;
  }
  const L2Entry& e = ce->entry;
  const bool fast = e.type == ClusterType::kNormal && (e.copied || p_->meta->external_data()) &&
                    (!p_->geo.extended_l2 || (e.alloc_bitmap & touched) == touched);
  if (!fast) {
    ce->Release();
    co_return 0;
  }
  *done = true;
  const uint64_t host = e.host_offset + a.in_cluster_bytes;
  const std::optional<Metadata> hit = p_->meta->DataOverlap(host, io::IovLength(iov));
  if (hit) {
    ce->Release();
    co_return co_await p_->meta->RefuseOverlap(*hit, host, io::IovLength(iov));
  }
  p_->order->NoteDependency(ce->slot);
  ce->slot.ref.Reset();
  int64_t w = co_await p_->meta->data_file().WriteV(host, iov);
  ce->lock.Release();
  co_return w < 0 ? static_cast<int>(w) : 0;
}

Task<int> WritePath::TryOverwriteRange(uint64_t offset_bytes, std::span<const iovec> iov,
                                       bool* done) {
  LockedRange range;
  {
    int r = co_await p_->LockRange(offset_bytes, io::IovLength(iov), /*exclusive=*/false, &range);
    if (r < 0) {
      *done = true;
      co_return r;
    }
  }
  const uint64_t mask = p_->geo.cluster_bytes - 1;
  const bool external = p_->meta->external_data();
  for (size_t i = 0; i < range.clusters.size(); ++i) {
    const L2Entry& e = range.clusters[i].entry;
    if (!(e.copied || external) ||
        !PlainData(p_->geo, e, range.PieceOffset(i) & mask, range.PieceLength(i))) {
      co_return 0;
    }
  }
  *done = true;
  // Every piece checked before any is written: a refused request writes
  // nothing.
  for (size_t i = 0; i < range.clusters.size(); ++i) {
    const uint64_t host = range.clusters[i].entry.host_offset + (range.PieceOffset(i) & mask);
    const std::optional<Metadata> hit = p_->meta->DataOverlap(host, range.PieceLength(i));
    if (hit) {
      const uint64_t length = range.PieceLength(i);
      range.clusters.clear();  // unlocks
      co_return co_await p_->meta->RefuseOverlap(*hit, host, length);
    }
  }
  for (const ClusterEntry& c : range.clusters) p_->order->NoteDependency(c.slot);
  io::Join join;
  auto run = [&](size_t first, size_t count) {
    const uint64_t begin = range.PieceOffset(first);
    const uint64_t end =
        range.PieceOffset(first + count - 1) + range.PieceLength(first + count - 1);
    io::IovVec slice;
    io::IovSlice(iov, begin - offset_bytes, end - begin, &slice);
    join.Start(
        WriteData(range.clusters[first].entry.host_offset + (begin & mask), std::move(slice)));
  };
  p_->ForEachDataRun(
      range, [](size_t) { return true; }, run, [](size_t) {});
  co_return co_await join.Wait();
}

Task<int> WritePath::TryAllocateRange(uint64_t offset_bytes, std::span<const iovec> iov, bool* done,
                                      AllocationNotice* allocated) {
  const Geometry& geo = p_->geo;
  const uint64_t length = io::IovLength(iov);
  if (((offset_bytes | length) & (geo.cluster_bytes - 1)) != 0 || geo.extended_l2 ||
      p_->meta->external_data()) {
    co_return 0;
  }
  LockedRange range;
  {
    int r = co_await p_->LockRange(offset_bytes, length, /*exclusive=*/true, &range);
    if (r < 0) {
      *done = true;
      co_return r;
    }
  }
  for (const ClusterEntry& c : range.clusters) {
    const ClusterType t = c.entry.type;
    if (t != ClusterType::kUnallocated && t != ClusterType::kZeroPlain) co_return 0;
  }
  *done = true;
  // Runs of at most a quarter of what one refcount block counts, each one
  // I/O; the allocator may cut a run shorter (AllocateUpTo: before a
  // cluster in use or a refcount block's place), and the rest follows.
  const size_t max_run = size_t{1} << (geo.refblock_bits >= 2 ? geo.refblock_bits - 2 : 0);
  for (size_t first = 0; first < range.clusters.size();) {
    const size_t count = std::min(max_run, range.clusters.size() - first);
    size_t got = 0;
    int r = co_await AllocateRun(range, first, count, iov, allocated, &got);
    if (r < 0) co_return r;
    first += got;
  }
  co_return 0;
}

Task<int> WritePath::AllocateRun(LockedRange& range, size_t first, size_t max_count,
                                 std::span<const iovec> iov, AllocationNotice* allocated,
                                 size_t* done) {
  const Geometry& geo = p_->geo;
  int64_t host;
  uint64_t end_before;
  uint64_t got = 0;
  {
    co_await p_->meta->lock().Lock();
    cache::MutexGuard guard(&p_->meta->lock());
    end_before = p_->refs->host_end_clusters();
    host = co_await p_->refs->AllocateUpTo(max_count, &got);
  }
  if (host < 0) co_return static_cast<int>(host);  // WriteTelling tells then
  const size_t count = static_cast<size_t>(got);
  *done = count;
  if (allocated != nullptr && first + count == range.clusters.size()) allocated->Tell();
  const uint64_t bytes = count * geo.cluster_bytes;
  const uint64_t h = static_cast<uint64_t>(host);
  int r = 0;
  if (const std::optional<Metadata> hit = p_->meta->DataOverlap(h, bytes)) {
    r = co_await p_->meta->RefuseOverlap(*hit, h, bytes);
  }
  if (r >= 0) {
    io::IovVec slice;
    io::IovSlice(iov, range.PieceOffset(first) - range.offset_bytes, bytes, &slice);
    int64_t w = co_await p_->meta->data_file().WriteV(h, slice);
    if (w < 0) r = static_cast<int>(w);
  }
  // Write-through (as SyncBeforeEntry): without an fsync first, an entry
  // may reach the disk before its data; only fresh space with nothing below
  // it reads right (as zeros) then.
  if (r >= 0 && p_->order->writethrough() && p_->order->dirty_marked() &&
      (p_->backing || geo.ClusterIndex(h) < end_before)) {
    r = co_await p_->meta->Sync();
  }
  if (r < 0) {
    co_await p_->meta->lock().Lock();
    cache::MutexGuard guard(&p_->meta->lock());
    for (size_t i = 0; i < count; ++i) co_await p_->refs->Unallocate(h + i * geo.cluster_bytes);
    co_return r;
  }
  for (size_t i = 0; i < count; ++i) {
    L2Entry e;
    e.type = ClusterType::kNormal;
    e.host_offset = h + i * geo.cluster_bytes;
    e.copied = true;
    p_->l2->Store(range.clusters[first + i].slot, e);
  }
  p_->cow_writes.fetch_add(count, std::memory_order_relaxed);
  co_return 0;
}

Task<int> WritePath::WriteData(uint64_t host_offset_bytes, io::IovVec iov) {
  int64_t w = co_await p_->meta->data_file().WriteV(host_offset_bytes, iov);
  co_return w < 0 ? static_cast<int>(w) : 0;
}

Task<int> WritePath::ChooseTarget(const GuestAddress& a, const L2Entry& old, Target* t) {
  const bool external = p_->meta->external_data();
  if ((old.type == ClusterType::kNormal || old.type == ClusterType::kZeroAlloc) &&
      (old.host_offset != 0 || external)) {
    if (old.copied || external) {
      t->in_place = true;
    } else {
      // COPIED clear: shared unless the refcount says otherwise.
      uint64_t rc = 0;
      int r;
      {
        co_await p_->meta->lock().Lock();
        cache::MutexGuard guard(&p_->meta->lock());
        r = co_await p_->refs->Get(p_->geo.ClusterIndex(old.host_offset), &rc);
      }
      if (r < 0) co_return r;
      if (rc == 0) {
        co_return co_await p_->meta->MarkCorrupt(
            absl::StrCat("guest cluster ", a.cluster, " maps to host offset ", old.host_offset,
                         " whose refcount is 0"));
      }
      t->in_place = rc == 1;
    }
  }
  if (t->in_place) {
    t->host = old.host_offset;
    co_return 0;
  }
  if (external) {
    t->host = a.cluster_offset_bytes();  // data file clusters sit at the guest offset
    co_return 0;
  }
  int64_t host;
  {
    co_await p_->meta->lock().Lock();
    cache::MutexGuard guard(&p_->meta->lock());
    const uint64_t end_before = p_->refs->host_end_clusters();
    host = co_await p_->refs->Allocate(1);
    t->fresh = host >= 0 && p_->geo.ClusterIndex(static_cast<uint64_t>(host)) >= end_before;
  }
  if (host < 0) co_return static_cast<int>(host);
  t->host = static_cast<uint64_t>(host);
  t->allocated = true;
  co_return 0;
}

Task<int> WritePath::PrepareCow(const GuestAddress& a, uint64_t n, const L2Entry& old,
                                const Target& t, std::span<std::byte> cluster, Cow* cow) {
  const Geometry& geo = p_->geo;
  const uint64_t in_off = a.in_cluster_bytes;
  const uint64_t gco = a.cluster_offset_bytes();
  cow->entry.type = ClusterType::kNormal;
  cow->entry.host_offset = t.host;
  cow->entry.copied = true;
  cow->begin = 0;
  cow->end = geo.cluster_bytes;
  int r = 0;
  if (!geo.extended_l2) {
    if (t.in_place && old.type == ClusterType::kNormal) {
      cow->begin = in_off;
      cow->end = in_off + n;
    } else if (old.type == ClusterType::kCompressed) {
      r = co_await compressed_->Read(old, cluster);
    } else if (ReadsZeroAround(a, old)) {
      // Only the request's bytes are written: the rest of a fresh cluster
      // (past every cluster ever used: a hole) already reads as zero, and a
      // reused one is zeroed first with one fallocate, not a cluster of
      // zeros.
      cow->begin = in_off;
      cow->end = in_off + n;
      cow->zero_first = !t.fresh;
    } else {
      const Source src = p_->l2->Classify(old, 0);
      r = co_await read_->FillFrom(src, old, gco, 0, in_off, cluster);
      if (r >= 0)
        r = co_await read_->FillFrom(src, old, gco, in_off + n, geo.cluster_bytes, cluster);
    }
    co_return r;
  }
  const uint32_t sa = geo.Subcluster(in_off);
  const uint32_t sb = geo.Subcluster(in_off + n + geo.subcluster_bytes - 1);
  const uint32_t touched = SubclusterMask(sa, sb);
  const bool compressed = old.type == ClusterType::kCompressed;
  // Moving existing data to a new cluster: copy the whole cluster.
  const bool whole = !t.in_place && (compressed || old.type == ClusterType::kNormal);
  if (compressed) {
    r = co_await compressed_->Read(old, cluster);
  } else if (whole) {
    r = co_await read_->FillFrom(Source::kData, old, gco, 0, geo.cluster_bytes, cluster);
  }
  if (!whole) {
    cow->begin = uint64_t{sa} * geo.subcluster_bytes;
    cow->end = uint64_t{sb} * geo.subcluster_bytes;
  }
  // Untouched parts of the edge subclusters keep their current contents.
  if (r >= 0 && !compressed) {
    const uint64_t head_begin = uint64_t{sa} * geo.subcluster_bytes;
    const Source hs = p_->l2->Classify(old, sa);
    if (!(whole && hs == Source::kData)) {
      r = co_await read_->FillFrom(hs, old, gco, head_begin, in_off, cluster);
    }
    const uint64_t tail_end = uint64_t{sb} * geo.subcluster_bytes;
    const Source ts = p_->l2->Classify(old, sb - 1);
    if (r >= 0 && !(whole && ts == Source::kData)) {
      r = co_await read_->FillFrom(ts, old, gco, in_off + n, tail_end, cluster);
    }
  }
  cow->entry.alloc_bitmap = (compressed ? 0xffffffffu : old.alloc_bitmap) | touched;
  cow->entry.zero_bitmap = compressed ? 0 : (old.zero_bitmap & ~cow->entry.alloc_bitmap);
  co_return r;
}

bool WritePath::ReadsZeroAround(const GuestAddress& a, const L2Entry& old) const {
  // Clusters of an external data file sit at their guest offset and may
  // hold anything: they keep the full copy.
  if (p_->meta->external_data()) return false;
  switch (p_->l2->Classify(old, 0)) {
    case Source::kZero:
      return true;
    case Source::kBacking:
      return !p_->backing || a.cluster_offset_bytes() >= p_->backing_size_bytes;
    default:
      return false;
  }
}

Task<int> WritePath::WriteCluster(const GuestAddress& a, uint64_t n, std::span<const iovec> iov,
                                  const Target& t, const Cow& cow, std::span<std::byte> cluster) {
  const uint64_t in_off = a.in_cluster_bytes;
  // The whole target cluster (the check's granularity): COW and the zeroing
  // land there too.
  const std::optional<Metadata> hit = p_->meta->DataOverlap(t.host, p_->geo.cluster_bytes);
  if (hit) co_return co_await p_->meta->RefuseOverlap(*hit, t.host, p_->geo.cluster_bytes);
  if (cow.zero_first) {
    int z = co_await p_->meta->data_file().WriteZeroes(t.host, p_->geo.cluster_bytes);
    if (z < 0) co_return z;
  }
  io::IovVec wv;
  if (in_off > cow.begin) wv.push_back({cluster.data() + cow.begin, in_off - cow.begin});
  for (const iovec& v : iov) wv.push_back(v);
  if (cow.end > in_off + n) wv.push_back({cluster.data() + in_off + n, cow.end - in_off - n});
  int64_t w = co_await p_->meta->data_file().WriteV(t.host + cow.begin, wv);
  co_return w < 0 ? static_cast<int>(w) : 0;
}

Task<int> WritePath::SyncBeforeEntry(const GuestAddress& a, uint64_t n, const L2Entry& old,
                                     const Target& t, const Cow& cow) {
  if (!p_->order->writethrough() || !p_->order->dirty_marked()) co_return 0;
  // Write-through lets this L2 entry reach the disk before an fsync. If
  // power is lost with the entry durable and the data write not, the
  // cluster shows what was there before; that is fine for the bytes of this
  // (unflushed) request, but not for bytes it did not write, which must
  // keep their flushed contents. Those only survive without an fsync if
  // they were zero and the cluster is fresh (a hole made durable by the
  // allocator); otherwise make the data durable first (COW, reused
  // clusters, external data files: the rarer allocating writes).
  // With extended L2 the request's subclusters must have held data: the host
  // bytes under a zero or unallocated subcluster are older than the zeros or
  // backing data the guest last saw there (and may have flushed).
  const uint64_t in_off = a.in_cluster_bytes;
  const Geometry& geo = p_->geo;
  const uint32_t touched =
      geo.extended_l2 ? SubclusterMask(geo.Subcluster(in_off),
                                       geo.Subcluster(in_off + n + geo.subcluster_bytes - 1))
                      : 0;
  const bool only_request_bytes = t.in_place && old.type == ClusterType::kNormal &&
                                  (old.alloc_bitmap & touched) == touched && cow.begin == in_off &&
                                  cow.end == in_off + n;
  const bool zero_before =
      !p_->backing &&
      (old.type == ClusterType::kUnallocated || old.type == ClusterType::kZeroPlain) &&
      old.alloc_bitmap == 0;
  if (only_request_bytes || (t.allocated && t.fresh && zero_before)) co_return 0;
  co_return co_await p_->meta->Sync();
}

Task<void> WritePath::GiveBack(const Target& t) {
  if (!t.allocated) co_return;
  co_await p_->meta->lock().Lock();
  cache::MutexGuard guard(&p_->meta->lock());
  co_await p_->refs->Unallocate(t.host);
}

}  // namespace uq::engine
