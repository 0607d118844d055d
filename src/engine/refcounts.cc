#include "src/engine/refcounts.h"

#include <algorithm>
#include <cerrno>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "format/endian.h"
#include "format/tables.h"

namespace uq::engine {

namespace {
constexpr uint64_t kNone = ~0ull;
}  // namespace

RefcountStore::RefcountStore(MetaFile* meta, const Geometry& geo, std::vector<uint64_t> table,
                             uint64_t cache_bytes, bool grow_file_durably)
    : meta_(meta),
      geo_(geo),
      table_(std::move(table)),
      cache_(std::make_unique<cache::SliceCache>(&meta->file(), geo.slice_bytes, cache_bytes,
                                                 "refcount")),
      grow_file_durably_(grow_file_durably),
      host_end_clusters_((meta->file().size_bytes() + geo.cluster_bytes - 1) >> geo.cluster_bits),
      block_buf_(geo.cluster_bytes) {
  cache_->set_write_error_hook([meta](int error) { meta->Fail(error, "refcount block write"); });
  cache_->set_write_check([meta](uint64_t offset_bytes, uint64_t length_bytes) {
    return meta->CheckWrite(offset_bytes, length_bytes, Ignore(Metadata::kRefcountBlock));
  });
}

bool RefcountStore::Locate(uint64_t cluster_index, uint64_t* slice_offset,
                           uint64_t* index_in_slice) const {
  const uint64_t block = cluster_index >> geo_.refblock_bits;
  if (block >= table_.size() || table_[block] == 0) return false;
  const uint64_t index = cluster_index & ((uint64_t{1} << geo_.refblock_bits) - 1);
  *slice_offset = table_[block] + (index >> geo_.refcount_slice_bits) * geo_.slice_bytes;
  *index_in_slice = index & ((uint64_t{1} << geo_.refcount_slice_bits) - 1);
  return true;
}

Task<int> RefcountStore::Get(uint64_t cluster_index, uint64_t* refcount) {
  uint64_t slice, index;
  if (!Locate(cluster_index, &slice, &index)) {
    *refcount = 0;
    co_return 0;
  }
  cache::SliceCache::Ref ref;
  int r = co_await cache_->Get(slice, &ref);
  if (r < 0) co_return r;
  *refcount = format::GetRefcount(ref.data(), geo_.refcount_order, index);
  co_return 0;
}

Task<int> RefcountStore::Add(uint64_t cluster_index, int64_t delta, uint64_t* new_value) {
  if (delta > 0) {
    bool placed = false;
    int r = co_await EnsureBlock(cluster_index, &placed);
    if (r < 0) co_return r;
  }
  uint64_t slice, index;
  if (!Locate(cluster_index, &slice, &index)) {
    co_return co_await meta_->MarkCorrupt(
        absl::StrCat("refcount of cluster ", cluster_index, " would drop below zero (no block)"));
  }
  cache::SliceCache::Ref ref;
  int r = co_await cache_->Get(slice, &ref);
  if (r < 0) co_return r;
  const uint64_t v = format::GetRefcount(ref.data(), geo_.refcount_order, index);
  if (delta < 0 && v < static_cast<uint64_t>(-delta)) {
    co_return co_await meta_->MarkCorrupt(
        absl::StrCat("refcount of cluster ", cluster_index, " would drop below zero"));
  }
  const uint64_t nv = v + static_cast<uint64_t>(delta);
  if (delta > 0 && (nv > format::MaxRefcount(geo_.refcount_order) || nv < v)) co_return -ERANGE;
  {
    auto data_lock = ref.LockData();
    format::SetRefcount(ref.data(), geo_.refcount_order, index, nv);
  }
  ref.MarkDirty();
  meta_->NoteChange();
  if (nv == 0 && cluster_index < free_hint_) free_hint_ = cluster_index;
  // A freed cluster may be handed out whole next: no more appending to it.
  if (nv == 0 && free_byte_offset_ != 0 && geo_.ClusterIndex(free_byte_offset_) == cluster_index) {
    free_byte_offset_ = 0;
  }
  *new_value = nv;
  co_return 0;
}

Task<int> RefcountStore::EnsureBlock(uint64_t cluster_index, bool* placed) {
  const uint64_t block = cluster_index >> geo_.refblock_bits;
  if (block >= table_.size()) {
    int r = co_await GrowTable(block + 1);
    if (r < 0) co_return r;
    *placed = true;
  }
  if (table_[block] != 0) co_return 0;
  *placed = true;
  // A refcount block for clusters [block*E, (block+1)*E) placed at the first
  // of them: none of them is in use (no block counts them), and the block
  // covers itself.
  const uint64_t block_cluster = block << geo_.refblock_bits;
  // Except block 0: cluster 0 is the header, always in use, so an image
  // without that block is corrupt. (Placed there, the block would overwrite
  // the header, and its offset 0 would read back as "no block": the
  // allocator would retry forever.)
  if (block_cluster == 0) {
    co_return co_await meta_->MarkCorrupt(
        "refcount table entry 0 is empty: no refcount block "
        "counts the header cluster");
  }
  const uint64_t block_offset = geo_.ClusterOffset(block_cluster);
  std::fill(block_buf_.begin(), block_buf_.end(), std::byte{0});
  format::SetRefcount(block_buf_, geo_.refcount_order, 0, 1);
  // Those clusters are in use after all if refcounts lie (no block for the
  // header's clusters, say): then this would overwrite metadata.
  const uint64_t entry_offset = meta_->header().refcount_table_offset + block * 8;
  int r = co_await meta_->CheckWrite(block_offset, geo_.cluster_bytes);
  if (r >= 0) r = co_await meta_->CheckWrite(entry_offset, 8, Ignore(Metadata::kRefcountTable));
  if (r < 0) co_return r;
  co_await cache_->Drop(block_offset, geo_.cluster_bytes);
  int64_t w = co_await meta_->file().Write(block_offset, block_buf_);
  if (w < 0) co_return static_cast<int>(w);
  // The block must be durable before the table entry points at it.
  r = co_await meta_->Sync();
  if (r < 0) co_return r;
  std::byte entry[8];
  format::StoreBE64(entry, block_offset);
  w = co_await meta_->file().Write(entry_offset, entry);
  if (w < 0) co_return meta_->Fail(static_cast<int>(w), "refcount table write");
  table_[block] = block_offset;
  OverlapMap& m = meta_->overlaps();
  m.Add(m.RegionOf(Metadata::kRefcountBlock, block_offset, geo_.cluster_bytes));
  host_end_clusters_ = std::max(host_end_clusters_, block_cluster + 1);
  co_return 0;
}

Task<int> RefcountStore::GrowTable(uint64_t min_entries) {
  const uint64_t per_block = uint64_t{1} << geo_.refblock_bits;
  const uint64_t entries_per_cluster = geo_.cluster_bytes / 8;
  auto round_entries = [&](uint64_t n) {
    return (n + entries_per_cluster - 1) / entries_per_cluster * entries_per_cluster;
  };
  uint64_t new_entries = round_entries(std::max<uint64_t>(min_entries, table_.size() * 2));
  // The new table and the blocks that count it go in a fresh area past
  // everything in use, starting at a block boundary.
  const uint64_t area_block =
      std::max(min_entries, (host_end_clusters_ + per_block - 1) / per_block);
  uint64_t table_clusters = 0;
  uint64_t area_blocks = 0;
  for (;;) {
    table_clusters = new_entries / entries_per_cluster;
    area_blocks = 1;
    for (;;) {
      uint64_t need = (table_clusters + area_blocks + per_block - 1) / per_block;
      if (need <= area_blocks) break;
      area_blocks = need;
    }
    if (area_block + area_blocks <= new_entries) break;
    new_entries = round_entries(area_block + area_blocks);
  }
  if (new_entries * 8 > format::kMaxRefcountTableBytes) co_return -EFBIG;
  const uint64_t area_start = area_block * per_block;
  const uint64_t area_end = area_start + table_clusters + area_blocks;

  // The area is past every cluster in use, unless refcounts lie.
  int c = co_await meta_->CheckWrite(geo_.ClusterOffset(area_start), (area_end - area_start)
                                                                         << geo_.cluster_bits);
  if (c < 0) co_return c;
  std::vector<std::byte> block(geo_.cluster_bytes);
  for (uint64_t j = 0; j < area_blocks; ++j) {
    std::fill(block.begin(), block.end(), std::byte{0});
    for (uint64_t x = area_start; x < area_end; ++x) {
      if ((x >> geo_.refblock_bits) == area_block + j) {
        format::SetRefcount(block, geo_.refcount_order, x & (per_block - 1), 1);
      }
    }
    int64_t w =
        co_await meta_->file().Write(geo_.ClusterOffset(area_start + table_clusters + j), block);
    if (w < 0) co_return static_cast<int>(w);
  }
  std::vector<uint64_t> table(new_entries, 0);
  std::copy(table_.begin(), table_.end(), table.begin());
  for (uint64_t j = 0; j < area_blocks; ++j) {
    table[area_block + j] = geo_.ClusterOffset(area_start + table_clusters + j);
  }
  std::vector<std::byte> tbuf(new_entries * 8);
  for (uint64_t i = 0; i < new_entries; ++i) format::StoreBE64(&tbuf[i * 8], table[i]);
  int64_t w = co_await meta_->file().Write(geo_.ClusterOffset(area_start), tbuf);
  if (w < 0) co_return static_cast<int>(w);
  int r = co_await meta_->Sync();
  if (r < 0) co_return r;

  const uint64_t old_offset = meta_->header().refcount_table_offset;
  const uint64_t old_clusters = meta_->header().refcount_table_clusters;
  r = co_await meta_->SetRefcountTable(geo_.ClusterOffset(area_start),
                                       static_cast<uint32_t>(table_clusters));
  // Once the header write is issued the file may name the new table, so
  // memory follows it whatever the write or the fsync says (later blocks go
  // into the table the file names; a failure has failed the image anyway).
  table_ = std::move(table);
  host_end_clusters_ = std::max(host_end_clusters_, area_end);
  OverlapMap& m = meta_->overlaps();
  m.Replace(m.RegionOf(Metadata::kRefcountTable, old_offset, old_clusters << geo_.cluster_bits),
            m.RegionOf(Metadata::kRefcountTable, geo_.ClusterOffset(area_start),
                       table_clusters << geo_.cluster_bits));
  for (uint64_t j = 0; j < area_blocks; ++j) {
    m.Add(m.RegionOf(Metadata::kRefcountBlock, geo_.ClusterOffset(area_start + table_clusters + j),
                     geo_.cluster_bytes));
  }
  if (r < 0) co_return r;
  r = co_await meta_->Sync();
  // Until that header is durable the old table may still be the one on disk:
  // keep its clusters (a leak at worst) unless the sync succeeded.
  if (r < 0) co_return r;
  for (uint64_t i = 0; i < old_clusters; ++i) {
    uint64_t nv;
    r = co_await Add(geo_.ClusterIndex(old_offset) + i, -1, &nv);
    if (r < 0) co_return r;
  }
  co_return 0;
}

Task<int> RefcountStore::Cursor::At(RefcountStore* store, uint64_t cluster_index,
                                    uint64_t* refcount) {
  uint64_t slice, index;
  if (!store->Locate(cluster_index, &slice, &index)) {
    *refcount = 0;
    co_return 0;
  }
  if (!ref.valid() || ref.offset_bytes() != slice) {
    ref.Reset();
    int r = co_await store->cache_->Get(slice, &ref);
    if (r < 0) co_return r;
  }
  index_in_slice = index;
  *refcount = format::GetRefcount(ref.data(), store->geo_.refcount_order, index);
  co_return 0;
}

bool RefcountStore::BlockGoesAt(uint64_t cluster_index) const {
  if ((cluster_index & ((uint64_t{1} << geo_.refblock_bits) - 1)) != 0) return false;
  const uint64_t block = cluster_index >> geo_.refblock_bits;
  return block >= table_.size() || table_[block] == 0;
}

Task<int64_t> RefcountStore::Allocate(uint64_t count) {
  uint64_t got = 0;
  co_return co_await AllocateRun(count, count, &got);
}

Task<int64_t> RefcountStore::AllocateUpTo(uint64_t max_count, uint64_t* count) {
  co_return co_await AllocateRun(1, max_count, count);
}

Task<int64_t> RefcountStore::AllocateRun(uint64_t min_count, uint64_t max_count,
                                         uint64_t* run_count) {
  const bool up_to = min_count < max_count;
  for (;;) {
    // Find a free run, keeping the slice under the scan pinned: each slice
    // is looked up once, and the one-cluster case (nearly every allocation)
    // sets the refcount through the same pin.
    Cursor cursor;
    uint64_t start = free_hint_;
    uint64_t run = 0;
    uint64_t first_free = kNone;
    for (uint64_t c = free_hint_; run < max_count; ++c) {
      uint64_t rc;
      int r = co_await cursor.At(this, c, &rc);
      if (r < 0) co_return r;
      if (rc == 0 && c == 0) {
        // Cluster 0 is the header: handed out, guest data or an L2 table
        // would overwrite it (and host offset 0 reads as "unallocated").
        co_return co_await meta_->MarkCorrupt("the header cluster has refcount 0");
      }
      if (rc == 0) {
        // A shorter run rather than one the next refcount block would cut.
        if (up_to && run > 0 && BlockGoesAt(c)) break;
        if (run == 0) start = c;
        if (first_free == kNone) first_free = c;
        ++run;
      } else {
        if (run >= min_count) break;
        run = 0;
      }
    }
    const uint64_t count = run;
    // Nothing below first_free is free.
    free_hint_ = first_free;
    // Blocks must count the run. Placing a block (or growing the table) may
    // take clusters of the run: search again then.
    bool placed = false;
    for (uint64_t c = start; c < start + count; ++c) {
      bool p = false;
      int r = co_await EnsureBlock(c, &p);
      if (r < 0) co_return r;
      placed = placed || p;
    }
    if (placed) continue;
    if (grow_file_durably_) {
      int r = co_await GrowFileDurably(geo_.ClusterOffset(start + count));
      if (r < 0) co_return r;
    } else {
      co_await ReserveAhead(geo_.ClusterOffset(start + count));
    }
    for (uint64_t c = start; c < start + count; ++c) {
      uint64_t rc;
      int r = co_await cursor.At(this, c, &rc);
      if (r < 0) co_return r;
      {
        auto data_lock = cursor.ref.LockData();
        format::SetRefcount(cursor.ref.data(), geo_.refcount_order, cursor.index_in_slice, 1);
      }
      cursor.ref.MarkDirty();
    }
    meta_->NoteChange();
    if (start == free_hint_) free_hint_ = start + count;  // else a short free run remains below
    host_end_clusters_ = std::max(host_end_clusters_, start + count);
    allocated_.fetch_add(count, std::memory_order_relaxed);
    *run_count = count;
    co_return static_cast<int64_t>(geo_.ClusterOffset(start));
  }
}

Task<void> RefcountStore::Unallocate(uint64_t host_offset_bytes) {
  uint64_t nv;
  co_await Add(geo_.ClusterIndex(host_offset_bytes), -1, &nv);
}

Task<int64_t> RefcountStore::AllocateBytes(uint64_t bytes) {
  if (bytes == 0 || bytes > geo_.cluster_bytes) co_return -EINVAL;
  uint64_t offset = free_byte_offset_;
  if (offset != 0) {
    // The cluster may have reached the refcount width's maximum.
    uint64_t rc;
    int r = co_await Get(geo_.ClusterIndex(offset), &rc);
    if (r < 0) co_return r;
    if (rc == 0 || rc >= format::MaxRefcount(geo_.refcount_order)) offset = 0;
  }
  const uint64_t room = offset == 0 ? 0 : geo_.cluster_bytes - (offset & (geo_.cluster_bytes - 1));
  uint64_t start = offset;
  if (offset == 0 || room < bytes) {
    const int64_t fresh = co_await Allocate(1);  // its refcount: 1
    if (fresh < 0) co_return fresh;
    if (offset == 0 || offset + room != static_cast<uint64_t>(fresh)) {
      start = static_cast<uint64_t>(fresh);
    }
  }
  if (start == offset) {
    // Appending to the cluster earlier compressed data holds: one more
    // reference to it (a spill into the fresh cluster is counted by
    // Allocate).
    uint64_t nv;
    int r = co_await Add(geo_.ClusterIndex(offset), 1, &nv);
    if (r < 0) co_return r;
  }
  const uint64_t end = start + bytes;
  free_byte_offset_ = (end & (geo_.cluster_bytes - 1)) == 0 ? 0 : end;
  co_return static_cast<int64_t>(start);
}

Task<void> RefcountStore::UnallocateBytes(uint64_t host_offset_bytes, uint64_t bytes) {
  free_byte_offset_ = 0;
  const uint64_t first = geo_.ClusterIndex(host_offset_bytes);
  const uint64_t last = geo_.ClusterIndex(host_offset_bytes + bytes - 1);
  for (uint64_t c = first; c <= last; ++c) {
    uint64_t nv;
    co_await Add(c, -1, &nv);
  }
}

void RefcountStore::QueueFree(uint64_t cluster_index, uint64_t count) {
  std::lock_guard<std::mutex> g(frees_mu_);
  pending_frees_.push_back({cluster_index, count});
  pending_free_clusters_.fetch_add(count, std::memory_order_acq_rel);
}

std::vector<RefcountStore::PendingFree> RefcountStore::TakePendingFrees() {
  std::lock_guard<std::mutex> g(frees_mu_);
  pending_free_clusters_.store(0, std::memory_order_release);
  return std::exchange(pending_frees_, {});
}

void RefcountStore::RestorePendingFrees(std::vector<PendingFree> frees) {
  std::lock_guard<std::mutex> g(frees_mu_);
  for (const PendingFree& f : frees) pending_free_clusters_.fetch_add(f.count);
  pending_frees_.insert(pending_frees_.begin(), frees.begin(), frees.end());
}

Task<int> RefcountStore::ApplyFrees(std::vector<PendingFree> frees) {
  for (const PendingFree& f : frees) {
    for (uint64_t c = f.cluster_index; c < f.cluster_index + f.count; ++c) {
      uint64_t nv;
      int r = co_await Add(c, -1, &nv);
      if (r < 0) co_return r;
      if (nv == 0) {
        // Metadata in use is never freed; a data entry aimed at it was
        // (the overlap map drops a table before its free is queued).
        const std::optional<Metadata> hit =
            meta_->Overlap(geo_.ClusterOffset(c), geo_.cluster_bytes);
        if (hit) {
          co_return co_await meta_->MarkCorrupt(absl::StrCat(
              "cluster ", c, " was freed but holds the ", MetadataName(*hit), "; not discarded"));
        }
        freed_.fetch_add(1, std::memory_order_relaxed);
        // Best effort: the cluster is free whether or not the punch works.
        co_await meta_->file().Discard(geo_.ClusterOffset(c), geo_.cluster_bytes);
      }
    }
  }
  co_return 0;
}

Task<void> RefcountStore::ReserveAhead(uint64_t end_bytes) {
  if (!reserve_ok_) co_return;
  io::BlockFile& f = meta_->file();
  const uint64_t size = f.size_bytes();
  if (end_bytes <= size) co_return;
  // Steps of 1/8 of the file, 1 to 64 MiB: a few reservations per gigabyte
  // written, and at most 64 MiB unused if the server dies.
  const uint64_t step = std::clamp<uint64_t>(size / 8, uint64_t{1} << 20, uint64_t{64} << 20);
  uint64_t target = std::max(end_bytes, size + step);
  target = (target + geo_.cluster_bytes - 1) & ~(geo_.cluster_bytes - 1);
  // Mode 0 changes no byte already there, so writes in flight to clusters
  // handed out earlier (past the old end) are safe.
  const int r = co_await f.Reserve(size, target - size);
  if (r == -EOPNOTSUPP || r == -EROFS) reserve_ok_ = false;
  if (r < 0) co_return;  // ENOSPC and the like: the write itself says so
  if (!size_before_reserve_) size_before_reserve_ = size;
}

Task<void> RefcountStore::TrimReserve() {
  if (!size_before_reserve_) co_return;
  io::BlockFile& f = meta_->file();
  const uint64_t used = std::max(*size_before_reserve_, geo_.ClusterOffset(host_end_clusters_));
  if (f.size_bytes() > used) (void)co_await f.Truncate(used);
  size_before_reserve_.reset();
}

Task<int> RefcountStore::GrowFileDurably(uint64_t end_bytes) {
  io::BlockFile& f = meta_->file();
  const uint64_t size = f.size_bytes();
  if (end_bytes <= size) co_return 0;
  // Grow in steps (1/8 of the file, at least 1 MiB) so the fsync is rare.
  uint64_t target = std::max(end_bytes, size + std::max(size / 8, uint64_t{1} << 20));
  target = (target + geo_.cluster_bytes - 1) & ~(geo_.cluster_bytes - 1);
  int r = co_await f.Truncate(target);
  // A file that cannot grow ahead (a block device: fixed size) gets just
  // what is needed, or the error.
  if (r < 0) r = co_await f.Truncate(end_bytes);
  if (r < 0) co_return r;
  const int synced = co_await f.Flush();
  co_return meta_->Fail(synced, "fsync after growing the image file");
}

}  // namespace uq::engine
