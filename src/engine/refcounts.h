// RefcountStore: host cluster reference counts and the cluster allocator
// (docs/interop/qcow2.txt, "Host cluster management").
//
// Owns the in-memory copy of the refcount table, the refcount-block slice
// cache, the free-space hint, the end of the used area and the queue of
// deferred frees.
//
// Ordering (DESIGN.md): a new refcount block is written and made durable
// before the table entry naming it; a new refcount table before the header
// names it; the old table is freed only once the header naming the new one
// is durable. Frees are deferred: QueueFree records clusters whose last
// reference was dropped in memory, and ApplyFrees (run by the flush sequence
// once the L2/L1 change that dropped them is durable) decrements them, so a
// freed cluster is never reused while a durable entry may still point at it.
//
// Thread-safety: thread-safe as follows. Every method REQUIRES
// MetaFile::lock() held, except Flush (the cache serialises its own
// write-backs), the counters, and QueueFree / pending_free_clusters (the
// queue of frees has a mutex of its own: pieces queue frees under their
// cluster lock only).
#ifndef UQ_SRC_ENGINE_REFCOUNTS_H_
#define UQ_SRC_ENGINE_REFCOUNTS_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "cache/slice_cache.h"
#include "src/engine/geometry.h"
#include "src/engine/meta_file.h"
#include "src/io/task.h"

namespace uq::engine {

class RefcountStore {
 public:
  struct Stats {
    uint64_t clusters_allocated = 0;
    uint64_t clusters_freed = 0;
  };
  // A run of clusters whose refcount drops by one at the next flush.
  struct PendingFree {
    uint64_t cluster_index;
    uint64_t count;
  };

  // `table` holds the decoded refcount table entries (block offsets, 0 =
  // none). `grow_file_durably`: metadata write-through, where an L2 entry may
  // reach the disk before the data it exposes, so the allocator extends the
  // file (and fsyncs) before handing out clusters past its end.
  RefcountStore(MetaFile* meta, const Geometry& geo, std::vector<uint64_t> table,
                uint64_t cache_bytes, bool grow_file_durably);
  RefcountStore(const RefcountStore&) = delete;
  RefcountStore& operator=(const RefcountStore&) = delete;

  Task<int> Get(uint64_t cluster_index, uint64_t* refcount);
  // Adds `delta` (may be negative; dropping below zero marks the image
  // corrupt). Places a refcount block first if an increment needs one.
  Task<int> Add(uint64_t cluster_index, int64_t delta, uint64_t* new_value);
  // Finds `count` contiguous free clusters, sets their refcounts to 1 and
  // returns the host offset of the first, or -errno.
  Task<int64_t> Allocate(uint64_t count);
  // Takes the first free clusters, up to `max_count` in one contiguous run,
  // and sets *count to how many (>= 1): the run ends before a cluster in
  // use, and before the first cluster of a range no refcount block counts
  // yet (where that block will go). A long write thus fills the space up to
  // a refcount block instead of leaving it and searching past it (with 4 KiB
  // clusters that left a quarter of the file unused). Returns the host
  // offset of the first, or -errno.
  Task<int64_t> AllocateUpTo(uint64_t max_count, uint64_t* count);
  // Gives back one cluster from Allocate whose first use failed.
  Task<void> Unallocate(uint64_t host_offset_bytes);
  // Finds room for `bytes` (<= one cluster) of compressed data, as QEMU's
  // qcow2_alloc_bytes: right after the previous compressed data when it
  // fits in that host cluster, or spills into the next one when that is the
  // cluster allocated next; otherwise at the start of a new cluster. Every
  // host cluster the range touches gains one reference (a new one starts at
  // one). Byte-granular: under O_DIRECT, io::AlignedFile serialises the
  // read-modify-writes of neighbours sharing a block. Returns the byte
  // offset, or -errno.
  Task<int64_t> AllocateBytes(uint64_t bytes);
  // Drops the references AllocateBytes took for a range nothing points to
  // (its write failed); the partly filled cluster is not appended to again.
  Task<void> UnallocateBytes(uint64_t host_offset_bytes, uint64_t bytes);

  // Defers a refcount decrement to the next flush (see the file comment).
  void QueueFree(uint64_t cluster_index, uint64_t count);
  uint64_t pending_free_clusters() const {
    return pending_free_clusters_.load(std::memory_order_acquire);
  }
  // The flush sequence takes the queue before making the L2/L1 changes
  // durable, applies it after, or puts it back if the flush failed.
  std::vector<PendingFree> TakePendingFrees();
  void RestorePendingFrees(std::vector<PendingFree> frees);
  Task<int> ApplyFrees(std::vector<PendingFree> frees);

  // Writes dirty refcount slices (no fsync).
  Task<int> Flush() { return cache_->Flush(); }
  cache::SliceCache& cache() { return *cache_; }
  const cache::SliceCache& cache() const { return *cache_; }
  // Clusters in use end below this index.
  uint64_t host_end_clusters() const { return host_end_clusters_; }
  // At a clean close: cuts the space reserved ahead and not used, so the file
  // ends where its clusters do (never below its size at open). Best effort.
  Task<void> TrimReserve();
  Stats stats() const {
    return {allocated_.load(std::memory_order_relaxed), freed_.load(std::memory_order_relaxed)};
  }

 private:
  // The cache slice holding `cluster_index`'s refcount and its index in it;
  // false if no refcount block covers the cluster.
  bool Locate(uint64_t cluster_index, uint64_t* slice_offset, uint64_t* index_in_slice) const;
  // A pin on the refcount slice of the cluster looked at last.
  struct Cursor {
    cache::SliceCache::Ref ref;
    uint64_t index_in_slice = 0;
    // The refcount of `cluster_index`, loading its slice only if it is not
    // the pinned one.
    Task<int> At(RefcountStore* store, uint64_t cluster_index, uint64_t* refcount);
  };
  // Allocate and AllocateUpTo: the first run of at least min_count and at
  // most max_count free clusters (min_count < max_count: the first free
  // stretch, cut before a cluster that will hold a refcount block).
  Task<int64_t> AllocateRun(uint64_t min_count, uint64_t max_count, uint64_t* count);
  // No refcount block counts the clusters starting at `cluster_index`, the
  // first of a block's range: the block will go there.
  bool BlockGoesAt(uint64_t cluster_index) const;
  // Places a refcount block covering the cluster if none does (*placed set,
  // also when the table had to grow).
  Task<int> EnsureBlock(uint64_t cluster_index, bool* placed);
  Task<int> GrowTable(uint64_t min_entries);
  Task<int> GrowFileDurably(uint64_t end_bytes);
  // Reserves file space ahead of the allocator, in steps, once an allocation
  // reaches past the end of the file: data written into new clusters then
  // lands inside the file. Under O_DIRECT a write past the end is an
  // extending write, which the file system serialises and journals; inside
  // the file, new clusters write about twice as fast. Best effort: where the
  // file cannot reserve, the writes extend it as before.
  Task<void> ReserveAhead(uint64_t end_bytes);

  MetaFile* meta_;
  Geometry geo_;
  std::vector<uint64_t> table_;
  std::unique_ptr<cache::SliceCache> cache_;
  bool grow_file_durably_;
  bool reserve_ok_ = true;  // false once the file said it cannot
  // The file's size before ReserveAhead first grew it; none: not grown.
  std::optional<uint64_t> size_before_reserve_;
  std::mutex frees_mu_;
  std::vector<PendingFree> pending_frees_;  // guarded by frees_mu_
  std::atomic<uint64_t> pending_free_clusters_{0};
  uint64_t free_hint_ = 0;  // no free cluster below this index
  // Where the next compressed data may go, inside a host cluster that
  // earlier compressed data holds a reference to; 0: none (start a new one).
  uint64_t free_byte_offset_ = 0;
  uint64_t host_end_clusters_ = 0;
  std::vector<std::byte> block_buf_;  // one cluster, for new refcount blocks
  std::atomic<uint64_t> allocated_{0};
  std::atomic<uint64_t> freed_{0};
};

}  // namespace uq::engine

#endif  // UQ_SRC_ENGINE_REFCOUNTS_H_
