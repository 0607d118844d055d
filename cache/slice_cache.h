// SliceCache: a bounded write-back cache of fixed-size metadata slices (L2
// table slices, refcount block slices) read from and written to one BlockFile.
//
// Ownership: the cache owns its slice buffers; the BlockFile is borrowed and
// must outlive the cache. A Ref pins one slice: a pinned slice is never
// evicted and its buffer stays valid until the Ref is destroyed.
//
// Bounded memory: at most capacity_bytes / slice_bytes slices are kept, except
// that pinned (and loading) slices are never evicted, so with more concurrent
// users than slots the cache temporarily exceeds its budget by the number of
// pins. Eviction takes the least recently used clean unpinned slice (of the
// slice's shard, see below); when only dirty ones remain, the LRU dirty slice
// is written back first.
//
// Concurrent misses of one slice share one read: the first caller loads, the
// others park on the slice's wait list.
//
// Write-back ordering: before any slice of this cache is written (flush or
// eviction), the cache takes a private copy of every slice it is about to
// write, then awaits the writeback hook, then writes the copies (adjacent
// slices in one write). The engine's L2 cache hook flushes the refcount cache
// and fsyncs the file(s), so every L2 entry that reaches the disk has durable
// refcounts and durable data (both were in place before the copy was taken).
// Modifications made while a write is in flight leave the slice dirty (a
// generation counter per slice).
//
// Thread-safety: thread-safe (the queue threads of one image share it). The
// slices are spread over shards by offset, each with its own mutex, LRU and
// share of the budget (one shard for small caches, so their LRU is exact);
// a lookup locks one shard, never the whole cache, and no mutex is held
// across a suspension. A slice's bytes are read without a lock by holders of
// a pin; writers of slice bytes hold Ref::LockData() while they store and
// call MarkDirty() after, and write-back copies under the same lock after
// reading the generation, so a copy never tears an entry and never marks a
// newer store clean. Keeping two writers of the same bytes apart is the
// caller's job (the engine's cluster locks and metadata lock).
// The file: I/O goes through the BlockFile of whichever thread runs it.
#ifndef UQ_CACHE_SLICE_CACHE_H_
#define UQ_CACHE_SLICE_CACHE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "cache/wait_list.h"
#include "src/io/block_file.h"
#include "src/io/task.h"

namespace uq::cache {

class SliceCache {
 private:
  struct Entry;
  struct Shard;

 public:
  struct Stats {
    uint64_t hits = 0;
    uint64_t misses = 0;
    uint64_t evictions = 0;
    uint64_t writebacks = 0;  // slices written
    uint64_t writes = 0;      // write requests issued for them (adjacent slices merge)
  };

  // A pin on one loaded slice. Move-only; destroying it unpins.
  class Ref {
   public:
    Ref() = default;
    Ref(Ref&& o) noexcept : cache_(o.cache_), entry_(o.entry_) { o.entry_ = nullptr; }
    Ref& operator=(Ref&& o) noexcept {
      if (this != &o) {
        Reset();
        cache_ = o.cache_;
        entry_ = o.entry_;
        o.entry_ = nullptr;
      }
      return *this;
    }
    Ref(const Ref&) = delete;
    Ref& operator=(const Ref&) = delete;
    ~Ref() { Reset(); }

    bool valid() const { return entry_ != nullptr; }
    uint64_t offset_bytes() const;
    std::span<std::byte> data();
    std::span<const std::byte> data() const;
    // Held while storing into data() (see the file comment).
    std::unique_lock<std::mutex> LockData();
    // Records a modification (after storing it): the slice will be written
    // back.
    void MarkDirty();
    // Modified since last written (a write-back in flight does not count as
    // written until it completes).
    bool dirty() const;
    void Reset();

   private:
    friend class SliceCache;
    Ref(SliceCache* c, Entry* e) : cache_(c), entry_(e) {}
    SliceCache* cache_ = nullptr;
    Entry* entry_ = nullptr;
  };

  // REQUIRES: slice_bytes is a power of two >= 512. capacity_bytes is rounded
  // up to at least two slices.
  SliceCache(io::BlockFile* file, uint32_t slice_bytes, uint64_t capacity_bytes, std::string name);
  ~SliceCache();
  SliceCache(const SliceCache&) = delete;
  SliceCache& operator=(const SliceCache&) = delete;

  // Pins the slice at `offset_bytes` (slice aligned), reading it on a miss.
  // Returns 0 or -errno (a failed read leaves nothing cached).
  Task<int> Get(uint64_t offset_bytes, Ref* out);

  // Writes every dirty slice back (through the hook). Does not fsync. When it
  // returns, every modification made before the call has been written (also
  // those a concurrent write-back was already writing): safe to call from
  // several coroutines at once.
  Task<int> Flush();

  // Forgets every slice in [offset, offset + length) without writing it back
  // (the clusters were freed). REQUIRES: none of them is pinned.
  Task<void> Drop(uint64_t offset_bytes, uint64_t length_bytes);

  // Called (and awaited) before any slice of this cache is written.
  // REQUIRES: set before the cache is shared.
  void set_writeback_hook(std::function<Task<int>()> hook) { hook_ = std::move(hook); }
  // Called with the -errno of every slice write that fails (its outcome on
  // disk is unknown); the owner decides whether that fails its file.
  // REQUIRES: set before the cache is shared.
  void set_write_error_hook(std::function<void(int)> hook) { error_hook_ = std::move(hook); }

  // Called (and awaited) before each write of the slices in [offset,
  // + length): a negative result fails the write-back with it, and that run
  // and the ones after it are not written (they stay dirty; the error hook is
  // not called, since nothing's outcome on disk is unknown). The engine's
  // metadata overlap check. REQUIRES: set before the cache is shared.
  void set_write_check(
      std::function<Task<int>(uint64_t offset_bytes, uint64_t length_bytes)> check) {
    write_check_ = std::move(check);
  }

  bool has_dirty() const;
  uint32_t slice_bytes() const { return slice_bytes_; }
  uint64_t capacity_slices() const { return capacity_slices_; }
  size_t size() const;
  Stats stats() const;
  const std::string& name() const { return name_; }

 private:
  struct Entry {
    Shard* shard = nullptr;
    uint64_t offset_bytes = 0;
    std::vector<std::byte> data;
    std::mutex data_mu;  // stores into `data` vs write-back copies
    // Guarded by shard->mu:
    uint32_t pins = 0;
    bool valid = false;
    bool loading = false;
    bool writing = false;
    uint64_t dirty_gen = 0;    // bumped by MarkDirty
    uint64_t clean_gen = 0;    // dirty_gen last written
    uint64_t written_gen = 0;  // newest generation whose write completed
    WaitList waiters;          // load / write-back completion
    std::list<Entry*>::iterator lru_it;
    bool dirty() const { return dirty_gen != clean_gen; }
  };
  struct Shard {
    mutable std::mutex mu;
    std::unordered_map<uint64_t, std::unique_ptr<Entry>> entries;
    std::list<Entry*> lru;  // front = most recently used
    std::vector<std::vector<std::byte>> spare_buffers;
    uint64_t capacity_slices = 0;
  };

  Shard& ShardOf(uint64_t offset_bytes) {
    return shards_[(offset_bytes / slice_bytes_) & (shards_.size() - 1)];
  }
  void Unpin(Entry* e);
  // REQUIRES: e->shard->mu.
  static void Touch(Entry* e);
  std::vector<std::byte> TakeBuffer(Shard& sh);  // REQUIRES: sh.mu
  // Reads the slice; REQUIRES: the caller set e->loading.
  Task<int> Load(Entry* e);
  Task<int> EvictIfOverBudget(Shard& sh);
  // Writes the dirty ones among `batch` (each pinned by the caller); runs of
  // adjacent slices go out as one write.
  Task<int> WriteBack(std::vector<Entry*> batch);

  static constexpr size_t kMaxSlicesPerWrite = 256;

  io::BlockFile* file_;
  uint32_t slice_bytes_;
  uint64_t capacity_slices_;
  std::string name_;
  std::function<Task<int>()> hook_;
  std::function<void(int)> error_hook_;
  std::function<Task<int>(uint64_t, uint64_t)> write_check_;
  std::vector<Shard> shards_;  // a power of two
  std::atomic<uint64_t> hits_{0};
  std::atomic<uint64_t> misses_{0};
  std::atomic<uint64_t> evictions_{0};
  std::atomic<uint64_t> writebacks_{0};
  std::atomic<uint64_t> writes_{0};
};

}  // namespace uq::cache

#endif  // UQ_CACHE_SLICE_CACHE_H_
