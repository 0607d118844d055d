// ImageParts: what an open qcow2 image is made of, wired together by
// Qcow2Image::Open and owned by the Qcow2Image; the request paths (read,
// write, compressed, zero) work on it.
//
// Lock order: a guest cluster lock (cluster_locks, shared or exclusive; a
// request piece holds at most one at a time) before MetaFile::lock(); nothing
// holding MetaFile::lock() waits for a cluster lock. compressed_sector_locks
// come last: held only across one file read or write, taking nothing else.
//
// Thread-safety: the parts are thread-safe (each header says how), so the
// queue threads of one image share one ImageParts; per-request state lives in
// the request's coroutines.
#ifndef UQ_SRC_ENGINE_IMAGE_PARTS_H_
#define UQ_SRC_ENGINE_IMAGE_PARTS_H_

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "cache/wait_list.h"
#include "format/tables.h"
#include "src/engine/device.h"
#include "src/engine/geometry.h"
#include "src/engine/l2_map.h"
#include "src/engine/meta_file.h"
#include "src/engine/refcounts.h"
#include "src/engine/write_order.h"

namespace uq::engine {

// Cluster-sized scratch buffers (COW, decompression), reused across requests
// so the data path does not allocate once warm. Grows to the peak number of
// concurrent users (bounded by the queues' depths). Buffers are 4 KiB aligned
// so COW and decompression I/O can go straight to O_DIRECT files.
// Thread-safe (a mutex around the free list; the overwrite and read fast
// paths never take a buffer).
class BufferPool {
 public:
  static constexpr size_t kAlign = 4096;
  explicit BufferPool(size_t bytes)
      : bytes_(bytes), alloc_bytes_((bytes + kAlign - 1) / kAlign * kAlign) {}

  struct Free {
    void operator()(std::byte* p) const { std::free(p); }
  };
  using Buffer = std::unique_ptr<std::byte[], Free>;

  class Lease {
   public:
    Lease(BufferPool* pool, Buffer buf) : pool_(pool), buf_(std::move(buf)) {}
    Lease(Lease&& o) noexcept : pool_(std::exchange(o.pool_, nullptr)), buf_(std::move(o.buf_)) {}
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    ~Lease() {
      if (pool_ != nullptr) pool_->Return(std::move(buf_));
    }
    std::span<std::byte> span() { return {buf_.get(), pool_->bytes_}; }
    std::byte* data() { return buf_.get(); }

   private:
    BufferPool* pool_;
    Buffer buf_;
  };

  Lease Acquire() {
    {
      std::lock_guard<std::mutex> g(mu_);
      if (!free_.empty()) {
        Buffer b = std::move(free_.back());
        free_.pop_back();
        return Lease(this, std::move(b));
      }
    }
    Buffer b(static_cast<std::byte*>(std::aligned_alloc(kAlign, alloc_bytes_)));
    if (!b) std::abort();  // out of memory on a tiny, bounded pool
    return Lease(this, std::move(b));
  }

 private:
  void Return(Buffer b) {
    std::lock_guard<std::mutex> g(mu_);
    free_.push_back(std::move(b));
  }

  size_t bytes_;        // what span() shows
  size_t alloc_bytes_;  // rounded up for aligned_alloc
  std::mutex mu_;
  std::vector<Buffer> free_;  // guarded by mu_
};

// A guest cluster's L2 entry, looked up under the cluster's lock, which is
// held (with a pin on the entry's slice) until Release() or destruction.
struct ClusterEntry {
  format::L2Entry entry;
  Slot slot;
  cache::KeyedLockGuard lock;
  // The raw words `entry` was decoded from (valid once decoded), so a second
  // lookup of an unchanged entry need not decode it again.
  bool decoded = false;
  RawL2Entry raw;

  void Release() {
    slot.ref.Reset();
    lock.Release();
  }
};

// The guest clusters of one multi-cluster request, each locked (in ascending
// order, so two such requests cannot deadlock) with its decoded entry; the
// request's piece in cluster i is [PieceOffset(i), + PieceLength(i)).
struct LockedRange {
  uint64_t offset_bytes = 0;
  uint64_t length_bytes = 0;
  uint64_t cluster_bytes = 0;
  absl::InlinedVector<ClusterEntry, 4> clusters;

  uint64_t PieceOffset(size_t i) const {
    const uint64_t start = (offset_bytes / cluster_bytes + i) * cluster_bytes;
    return std::max(offset_bytes, start);
  }
  uint64_t PieceLength(size_t i) const {
    const uint64_t end = (offset_bytes / cluster_bytes + i + 1) * cluster_bytes;
    return std::min(offset_bytes + length_bytes, end) - PieceOffset(i);
  }
};

// True if the piece [in_cluster_bytes, + n) of a cluster with entry `e` is
// plain data in the data file (every subcluster it touches allocated).
bool PlainData(const Geometry& geo, const format::L2Entry& e, uint64_t in_cluster_bytes,
               uint64_t n);

struct ImageParts {
  explicit ImageParts(const Geometry& g)
      : geo(g),
        cluster_pool(g.cluster_bytes),
        compressed_pool(2 * g.cluster_bytes),
        zeros(g.cluster_bytes, std::byte{0}) {}

  Geometry geo;
  uint64_t size_bytes = 0;  // guest disk
  std::unique_ptr<MetaFile> meta;
  std::unique_ptr<RefcountStore> refs;
  std::unique_ptr<L2Map> l2;
  std::unique_ptr<WriteOrder> order;
  std::unique_ptr<Device> backing;  // the whole chain below; null: none
  uint64_t backing_size_bytes = 0;
  // Per guest cluster: shared for reads and for writes into an allocated,
  // exclusively owned (COPIED) cluster; exclusive for anything that changes
  // the cluster's L2 entry.
  cache::KeyedRwLock cluster_locks;
  // Per 512-byte host sector: compressed data is packed at byte granularity
  // and read back by whole sectors (the L2 entry gives only a sector count),
  // so reading a compressed cluster reads into the sector where the next one
  // starts. A read holds its last sector shared, a store its first sector
  // exclusive: never a write into bytes a read is copying at the same time.
  cache::KeyedRwLock compressed_sector_locks;
  BufferPool cluster_pool;
  BufferPool compressed_pool;
  std::vector<std::byte> zeros;         // one cluster of zeros, never written
  std::atomic<uint64_t> cow_writes{0};  // allocating writes that replaced an entry

  // Locks the guest cluster at `a` (exclusive: to store its entry, which
  // FindForWrite makes possible) and decodes its entry into *out, unless *out
  // already holds the decoded entry of the same raw words (looked up before,
  // under a lock since released).
  Task<int> LockEntry(const GuestAddress& a, bool exclusive, ClusterEntry* out);
  // Locks every cluster of [offset, offset + length) (shared, or exclusive as
  // LockEntry) and decodes their entries. REQUIRES: length > 0.
  Task<int> LockRange(uint64_t offset_bytes, uint64_t length_bytes, bool exclusive,
                      LockedRange* out);
  // Calls run(first, count) for each maximal run of pieces of `range` that
  // are plain data at consecutive host offsets (`eligible` says which pieces
  // may join a run), and other(i) for each remaining piece.
  template <typename Eligible, typename Run, typename Other>
  void ForEachDataRun(const LockedRange& range, Eligible eligible, Run run, Other other) const;
};

// After another writer of the image file switched the header's L1, refcount
// and snapshot tables and maybe the disk size (SwitchTrees, given `h`): the
// in-memory header and the disk size take them, and the refcount store, the L2 map and the write
// order start over from the file, with empty caches of the same sizes (a cached slice of a table
// the switch freed must not outlive it). qcow2_open.cc. REQUIRES: no request in flight, every cache
// clean.
Task<absl::Status> ReloadTables(ImageParts& p, const format::Header& h);

template <typename Eligible, typename Run, typename Other>
void ImageParts::ForEachDataRun(const LockedRange& range, Eligible eligible, Run run,
                                Other other) const {
  const size_t k = range.clusters.size();
  for (size_t i = 0; i < k;) {
    if (!eligible(i)) {
      other(i);
      ++i;
      continue;
    }
    size_t j = i + 1;
    while (j < k && eligible(j) &&
           range.clusters[j].entry.host_offset ==
               range.clusters[j - 1].entry.host_offset + geo.cluster_bytes) {
      ++j;
    }
    run(i, j - i);
    i = j;
  }
}

}  // namespace uq::engine

#endif  // UQ_SRC_ENGINE_IMAGE_PARTS_H_
