#include "src/engine/resize.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "format/endian.h"
#include "format/header.h"
#include "format/status_macros.h"
#include "format/tables.h"

namespace uq::engine {
namespace {

absl::Status Errno(absl::string_view what, int r) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(-r)));
}

uint64_t RoundUp(uint64_t v, uint64_t unit) { return (v + unit - 1) / unit * unit; }

// Entries an L1 table needs for a disk of `size_bytes` (QEMU's size_to_l1).
uint64_t L1EntriesFor(const Geometry& geo, uint64_t size_bytes) {
  return (size_bytes + geo.table_span_bytes() - 1) / geo.table_span_bytes();
}

// Clears the L2 entries of guest clusters [first, end) whose tables exist,
// queueing frees of what they referenced.
Task<int> ClearEntries(ImageParts& p, uint64_t first_cluster, uint64_t end_cluster) {
  const Geometry& geo = p.geo;
  for (uint64_t c = first_cluster; c < end_cluster; ++c) {
    const GuestAddress a = geo.Locate(geo.ClusterOffset(c));
    if (!p.l2->HasTable(a)) continue;
    ClusterEntry ce;
    int r = co_await p.LockEntry(a, true, &ce);
    if (r < 0) co_return r;
    const format::L2Entry& old = ce.entry;
    if (old.type == format::ClusterType::kUnallocated && old.alloc_bitmap == 0 &&
        old.zero_bitmap == 0) {
      continue;
    }
    p.l2->Store(ce.slot, format::L2Entry{});
    p.l2->QueueFree(old);
  }
  co_return 0;
}

// Unmaps the L2 tables of L1 entries [first, l1_entries) and queues frees of
// each table and of one reference to every cluster it references: a
// cluster's refcount counts the L1 entries naming a table that references
// it, so a table shared with a snapshot loses the active layer's references
// too (the snapshot's remain).
Task<int> DropTables(ImageParts& p, uint64_t first_index) {
  const Geometry& geo = p.geo;
  L2Map& l2 = *p.l2;
  const uint64_t per_table = uint64_t{1} << geo.l2_bits;
  for (uint64_t i = first_index; i < l2.l1_entries(); ++i) {
    const uint64_t table = l2.L1Raw(i) & format::kOffsetMask;
    if (table == 0) continue;
    uint64_t refcount = 0;
    int r = co_await p.refs->Get(geo.ClusterIndex(table), &refcount);
    if (r < 0) co_return r;
    std::vector<format::L2Entry> referenced;
    for (uint64_t k = 0; k < per_table; ++k) {
      const GuestAddress a = geo.Locate(geo.ClusterOffset(i * per_table + k));
      Slot slot;
      r = co_await l2.Find(a, &slot);
      if (r < 0) co_return r;
      format::L2Entry e;
      r = co_await l2.Decode(slot, a, &e);
      if (r < 0) co_return r;
      referenced.push_back(e);
    }
    {
      co_await p.meta->lock().Lock();
      cache::MutexGuard guard(&p.meta->lock());
      l2.ClearL1(i);
    }
    // Queued after the L1 change that drops them: the flush applies them
    // once the L1 table is durable.
    for (const format::L2Entry& e : referenced) l2.QueueFree(e);
    p.refs->QueueFree(geo.ClusterIndex(table), 1);
    // A table a snapshot still names stays cached.
    if (refcount <= 1) co_await l2.cache().Drop(table, geo.cluster_bytes);
  }
  co_return 0;
}

// The end of the last cluster with a non-zero refcount.
Task<int64_t> UsedEnd(ImageParts& p) {
  uint64_t c = p.refs->host_end_clusters();
  while (c > 0) {
    uint64_t refcount = 0;
    int r = co_await p.refs->Get(c - 1, &refcount);
    if (r < 0) co_return r;
    if (refcount != 0) break;
    --c;
  }
  co_return static_cast<int64_t>(p.geo.ClusterOffset(c));
}

// Makes host clusters [h, h + bytes), new to the image, ready for the
// entries of preallocated guest clusters: afterwards they read as zeros.
// metadata leaves space past the file's end a hole (and zeroes space inside,
// which a freed cluster may still hold bytes in); falloc has the file system
// allocate (and zero) it all; full writes zeros.
Task<int> FillRun(ImageParts& p, uint64_t h, uint64_t bytes, GrowPreallocation mode) {
  io::BlockFile& f = p.meta->data_file();
  const uint64_t inside_end = std::min(h + bytes, f.size_bytes());
  int r = 0;
  if (mode == GrowPreallocation::kFalloc) {
    r = co_await f.WriteZeroes(h, bytes);
  } else if (mode == GrowPreallocation::kMetadata) {
    if (h < inside_end) r = co_await f.WriteZeroes(h, inside_end - h);
  } else {
    r = co_await f.WriteZeroBuffers(h, bytes);
  }
  // Space the file held before may hold a freed cluster's bytes: its zeros
  // are durable before an entry names it.
  if (r >= 0 && h < inside_end) r = co_await p.meta->Sync();
  co_return r;
}

// Gives guest clusters from `first` one contiguous run of new host clusters,
// up to `count` of them (*done: how many; the allocator's AllocateUpTo),
// filled as FillRun says, and names them in their L2 entries
// (normal, COPIED; a zero cluster under metadata preallocation stays zero;
// an extended entry keeps its subcluster bits, its zero subclusters becoming
// allocated ones under falloc and full, so what its subclusters read does
// not change).
Task<int> PreallocateRun(ImageParts& p, uint64_t first, uint64_t max_count, GrowPreallocation mode,
                         uint64_t* end_bytes, uint64_t* done) {
  const Geometry& geo = p.geo;
  // An external data file holds each cluster at its guest offset, and takes
  // no refcounts.
  const bool external = p.meta->external_data();
  int64_t host = static_cast<int64_t>(geo.ClusterOffset(first));
  uint64_t count = max_count;
  if (!external) {
    co_await p.meta->lock().Lock();
    cache::MutexGuard guard(&p.meta->lock());
    host = co_await p.refs->AllocateUpTo(max_count, &count);
  }
  if (host < 0) co_return static_cast<int>(host);
  *done = count;
  const uint64_t bytes = count * geo.cluster_bytes;
  const uint64_t h = static_cast<uint64_t>(host);
  int r = 0;
  if (const std::optional<Metadata> hit = p.meta->DataOverlap(h, bytes)) {
    r = co_await p.meta->RefuseOverlap(*hit, h, bytes);
  }
  if (r >= 0) r = co_await FillRun(p, h, bytes, mode);
  if (r < 0) {
    if (!external) {
      co_await p.meta->lock().Lock();
      cache::MutexGuard guard(&p.meta->lock());
      for (uint64_t i = 0; i < count; ++i) co_await p.refs->Unallocate(h + i * geo.cluster_bytes);
    }
    co_return r;
  }
  *end_bytes = std::max(*end_bytes, h + bytes);
  for (uint64_t i = 0; i < count; ++i) {
    ClusterEntry ce;
    r = co_await p.LockEntry(geo.Locate(geo.ClusterOffset(first + i)), true, &ce);
    if (r < 0) co_return r;
    format::L2Entry e = geo.extended_l2 ? ce.entry : format::L2Entry{};
    // Filled with zeros (falloc, full), a zero subcluster can be an
    // allocated one: QEMU's falloc and full grows over a longer backing file
    // leave their subclusters allocated.
    if (geo.extended_l2 && mode != GrowPreallocation::kMetadata) {
      e.alloc_bitmap |= e.zero_bitmap;
      e.zero_bitmap = 0;
    }
    // A zero cluster (the zeroing that hides a longer backing file) stays
    // one under metadata preallocation, now with its host cluster, as QEMU's.
    e.type = !geo.extended_l2 && mode == GrowPreallocation::kMetadata &&
                     ce.entry.type == format::ClusterType::kZeroPlain
                 ? format::ClusterType::kZeroAlloc
                 : format::ClusterType::kNormal;
    e.host_offset = h + i * geo.cluster_bytes;
    e.copied = true;
    p.l2->Store(ce.slot, e);
  }
  co_return 0;
}

// Preallocates the guest range [from, to), grown from `from`, as QEMU's
// qcow2_co_truncate does: every cluster touching it that has no host cluster
// gets one (in runs of at most a quarter of what one refcount block counts,
// which the allocator may cut shorter, as the write path's), and what the
// disk reads does not change.
// Before it: a range a longer backing file would show through is zeroed.
Task<int> Preallocate(Qcow2Image& image, ImageParts& p, uint64_t from_bytes, uint64_t to_bytes,
                      GrowPreallocation mode) {
  const Geometry& geo = p.geo;
  const uint64_t in_cluster = from_bytes & (geo.cluster_bytes - 1);
  if (in_cluster != 0 && !geo.extended_l2 && p.backing != nullptr) {
    // The first cluster's head may read from the backing file: writing the
    // rest of it through the write path allocates it with that head copied.
    bool unallocated = false;
    {
      ClusterEntry ce;
      int r = co_await p.LockEntry(geo.Locate(from_bytes), false, &ce);
      if (r < 0) co_return r;
      unallocated = ce.entry.type == format::ClusterType::kUnallocated;
    }
    if (unallocated) {
      const uint64_t n =
          std::min(to_bytes, from_bytes - in_cluster + geo.cluster_bytes) - from_bytes;
      const iovec iov{p.zeros.data(), n};
      const int r = co_await image.Write(from_bytes, std::span<const iovec>(&iov, 1), false);
      if (r < 0) co_return r;
    }
  }
  if (in_cluster != 0 && geo.extended_l2 && mode != GrowPreallocation::kMetadata &&
      p.backing != nullptr && p.backing_size_bytes > from_bytes) {
    // QEMU allocates the first cluster whole here (subclusters the longer
    // backing file showed through included, their data copied up): it is
    // rewritten whole, as it reads, so every subcluster becomes allocated.
    const uint64_t start = from_bytes - in_cluster;
    const uint64_t n = std::min(to_bytes, start + geo.cluster_bytes) - start;
    std::vector<std::byte> buf(n);
    const iovec iov{buf.data(), n};
    int r = co_await image.Read(start, std::span<const iovec>(&iov, 1));
    if (r >= 0) r = co_await image.Write(start, std::span<const iovec>(&iov, 1), false);
    if (r < 0) co_return r;
  }
  const uint64_t max_run = uint64_t{1} << (geo.refblock_bits >= 2 ? geo.refblock_bits - 2 : 0);
  const uint64_t end = RoundUp(to_bytes, geo.cluster_bytes) >> geo.cluster_bits;
  uint64_t run_first = 0;
  uint64_t run_count = 0;
  uint64_t end_bytes = 0;
  for (uint64_t c = from_bytes >> geo.cluster_bits; c <= end; ++c) {
    bool eligible = false;
    if (c < end) {
      ClusterEntry ce;
      int r = co_await p.LockEntry(geo.Locate(geo.ClusterOffset(c)), false, &ce);
      if (r < 0) co_return r;
      const format::ClusterType t = ce.entry.type;
      eligible = t == format::ClusterType::kUnallocated || t == format::ClusterType::kZeroPlain;
    }
    while (run_count > 0 && (!eligible || run_count == max_run)) {
      uint64_t done = 0;
      int r = co_await PreallocateRun(p, run_first, run_count, mode, &end_bytes, &done);
      if (r < 0) co_return r;
      run_first += done;
      run_count -= done;
    }
    if (eligible) {
      if (run_count == 0) run_first = c;
      ++run_count;
    }
  }
  // Metadata preallocation past the file's end wrote nothing there: the file
  // still has to reach the clusters its entries name. (ResizeImage sizes an
  // external data file itself.)
  io::BlockFile& f = p.meta->file();
  if (!p.meta->external_data() && end_bytes > f.size_bytes()) {
    co_return co_await f.Truncate(end_bytes);
  }
  co_return 0;
}

}  // namespace

absl::Status CheckL1Growth(const Geometry& geo, uint64_t current_entries, uint64_t entries) {
  if (entries * 8 > format::kMaxL1Bytes) {
    return absl::InvalidArgumentError("Failed to grow the L1 table: File too large");
  }
  // A moved L1 table is one contiguous run of clusters, and the allocator
  // places a fresh area's refcount blocks at the start of the range each
  // describes, so it cannot find a run as long as a block's range (it would
  // search forever): refuse such a table up front. (512-byte clusters from
  // 512 MiB on, 4 KiB clusters from 2 TiB on, at 16-bit refcounts.)
  const uint64_t clusters = RoundUp(entries * 8, geo.cluster_bytes) / geo.cluster_bytes;
  if (entries > current_entries && clusters >= (uint64_t{1} << geo.refblock_bits)) {
    return absl::UnimplementedError(absl::StrCat(
        "Failed to grow the L1 table: its ", clusters,
        " clusters exceed what one refcount block covers, which qcow2-img cannot allocate yet "
        "(use a larger cluster size)"));
  }
  return absl::OkStatus();
}

Task<absl::Status> GrowL1Table(ImageParts& p, uint64_t entries) {
  const Geometry& geo = p.geo;
  L2Map& l2 = *p.l2;
  const uint64_t old_entries = l2.l1_entries();
  const uint64_t old_offset = l2.l1_offset_bytes();
  const uint64_t table_bytes = RoundUp(entries * 8, geo.cluster_bytes);
  int64_t offset = 0;
  {
    co_await p.meta->lock().Lock();
    cache::MutexGuard guard(&p.meta->lock());
    offset = co_await p.refs->Allocate(table_bytes / geo.cluster_bytes);
  }
  if (offset < 0) co_return Errno("Failed to grow the L1 table", static_cast<int>(offset));
  // The new table's refcounts are durable before anything names it.
  int r = co_await p.refs->Flush();
  if (r >= 0) r = co_await p.meta->Sync();
  std::vector<uint64_t> l1(entries, 0);
  std::vector<std::byte> buf(table_bytes, std::byte{0});
  for (uint64_t i = 0; i < old_entries; ++i) {
    l1[i] = l2.L1Raw(i);
    format::StoreBE64(&buf[i * 8], l1[i]);
  }
  if (r >= 0) r = co_await p.meta->CheckWrite(static_cast<uint64_t>(offset), buf.size());
  if (r >= 0) {
    const int64_t w = co_await p.meta->file().Write(static_cast<uint64_t>(offset), buf);
    r = w < 0 ? static_cast<int>(w) : 0;
  }
  if (r >= 0) r = co_await p.meta->Sync();
  if (r >= 0) r = co_await p.meta->SetL1Table(static_cast<uint64_t>(offset), entries);
  if (r >= 0) r = co_await p.meta->Sync();
  if (r < 0) co_return Errno("Failed to grow the L1 table", r);
  co_await p.meta->lock().Lock();
  cache::MutexGuard guard(&p.meta->lock());
  l2.ReplaceL1(l1, static_cast<uint64_t>(offset));
  // The header no longer names the old table: its clusters are freed by the
  // next flush.
  if (old_entries > 0 && old_offset != 0) {
    p.refs->QueueFree(geo.ClusterIndex(old_offset),
                      RoundUp(old_entries * 8, geo.cluster_bytes) / geo.cluster_bytes);
  }
  co_return absl::OkStatus();
}

Task<absl::Status> ResizeImage(Qcow2Image& image, uint64_t new_size_bytes,
                               GrowPreallocation prealloc) {
  ImageParts& p = *image.p_;
  const format::Header& h = p.meta->header();
  const Geometry& geo = p.geo;
  const uint64_t old_size_bytes = p.size_bytes;
  if (p.meta->read_only()) co_return absl::FailedPreconditionError("the image is read-only");
  if (new_size_bytes % 512 != 0) {
    co_return absl::InvalidArgumentError("The new size must be a multiple of 512");
  }
  if (h.nb_snapshots != 0 && h.version < 3) {
    co_return absl::FailedPreconditionError("Can't resize a v2 image which has snapshots");
  }
  const uint64_t new_l1 = L1EntriesFor(geo, new_size_bytes);
  UQ_CO_RETURN_IF_ERROR(CheckL1Growth(geo, p.l2->l1_entries(), new_l1));
  const bool grow = new_size_bytes >= old_size_bytes;
  if (prealloc != GrowPreallocation::kOff && !grow) {
    co_return absl::InvalidArgumentError("Preallocation can only be used for growing images");
  }
  // A raw data file is the disk by itself: every cluster is mapped, so a
  // grown range is at least metadata-preallocated (QEMU does the same).
  if (grow && p.meta->data_file_raw() && prealloc == GrowPreallocation::kOff) {
    prealloc = GrowPreallocation::kMetadata;
  }
  const bool hide_backing = grow && p.backing != nullptr && p.backing_size_bytes > old_size_bytes;
  if (hide_backing && h.version < 3) {
    co_return absl::UnimplementedError("Failed to zero out new clusters: Operation not supported");
  }

  int r = co_await p.order->MarkDirty();
  // Every change so far durable: the on-disk L1 table is the in-memory one.
  if (r >= 0) r = co_await image.Flush();
  if (r < 0) co_return Errno("Failed to flush the image", r);

  if (grow) {
    if (new_l1 > p.l2->l1_entries()) {
      absl::Status s = co_await GrowL1Table(p, new_l1);
      if (!s.ok()) co_return s;
    }
    p.size_bytes = new_size_bytes;
    if (hide_backing) {
      r = co_await image.WriteZeroes(old_size_bytes, new_size_bytes - old_size_bytes, false);
      if (r < 0) {
        p.size_bytes = old_size_bytes;
        co_return Errno("Failed to zero out new clusters", r);
      }
    }
    if (prealloc != GrowPreallocation::kOff && new_size_bytes > old_size_bytes) {
      r = co_await Preallocate(image, p, old_size_bytes, new_size_bytes, prealloc);
      if (r < 0) {
        p.size_bytes = old_size_bytes;
        co_return Errno("Failed to preallocate the new range", r);
      }
    }
    // An external data file ends where the disk does, or where its last
    // preallocated cluster does, as QEMU leaves it.
    if (p.meta->external_data()) {
      r = co_await p.meta->data_file().Truncate(prealloc == GrowPreallocation::kOff
                                                    ? new_size_bytes
                                                    : RoundUp(new_size_bytes, geo.cluster_bytes));
      if (r < 0) {
        p.size_bytes = old_size_bytes;
        co_return Errno("Failed to resize the data file", r);
      }
    }
    // Frees of the old L1 table and any zeroing durable before the size.
    r = co_await image.Flush();
    if (r >= 0) r = co_await p.meta->SetDiskSize(new_size_bytes);
    if (r >= 0) r = co_await p.meta->Sync();
    if (r < 0) co_return Errno("Failed to update the image size", r);
    co_return absl::OkStatus();
  }

  r = co_await p.meta->SetDiskSize(new_size_bytes);
  if (r >= 0) r = co_await p.meta->Sync();
  if (r < 0) co_return Errno("Failed to update the image size", r);
  p.size_bytes = new_size_bytes;
  // Clusters past the (cluster-rounded) new end, in the table the end falls
  // in; tables wholly past it go with their L1 entries.
  const uint64_t per_table = uint64_t{1} << geo.l2_bits;
  const uint64_t first_cluster = RoundUp(new_size_bytes, geo.cluster_bytes) >> geo.cluster_bits;
  const uint64_t old_clusters = RoundUp(old_size_bytes, geo.cluster_bytes) >> geo.cluster_bits;
  const uint64_t partial_end = std::min(old_clusters, new_l1 * per_table);
  r = co_await ClearEntries(p, first_cluster, partial_end);
  if (r >= 0) r = co_await image.Flush();
  if (r < 0) co_return Errno("Failed to discard cropped clusters", r);
  r = co_await DropTables(p, new_l1);
  // Twice: the first makes the L1 change durable and applies the frees,
  // which dirties refcount blocks; the second writes those.
  if (r >= 0) r = co_await image.Flush();
  if (r >= 0) r = co_await image.Flush();
  if (r < 0) co_return Errno("Failed to reduce the number of L2 tables", r);
  if (p.meta->external_data()) {
    r = co_await p.meta->data_file().Truncate(new_size_bytes);
    if (r >= 0) r = co_await p.meta->data_file().Flush();
    if (r < 0) co_return Errno("Failed to resize the data file", r);
  }
  const int64_t used_end = co_await UsedEnd(p);
  if (used_end < 0) co_return Errno("Failed to find the last cluster", static_cast<int>(used_end));
  if (static_cast<uint64_t>(used_end) < p.meta->file().size_bytes()) {
    r = co_await p.meta->file().Truncate(static_cast<uint64_t>(used_end));
    if (r >= 0) r = co_await p.meta->Sync();
    if (r < 0) {
      std::fprintf(stderr, "qcow2: warning: Failed to truncate the tail of the image: %s\n",
                   std::strerror(-r));
    }
  }
  co_return absl::OkStatus();
}

Task<absl::Status> Qcow2Image::Resize(uint64_t new_size_bytes, GrowPreallocation prealloc) {
  co_return co_await ResizeImage(*this, new_size_bytes, prealloc);
}

}  // namespace uq::engine
