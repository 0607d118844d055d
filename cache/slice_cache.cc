#include "cache/slice_cache.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

namespace uq::cache {

namespace {

// Shards of a cache: one for small caches (exact LRU), up to 16 for large
// ones (at least 64 slices each).
size_t ShardCount(uint64_t capacity_slices) {
  size_t n = 1;
  while (n < 16 && capacity_slices / (n * 2) >= 64) n *= 2;
  return n;
}

}  // namespace

uint64_t SliceCache::Ref::offset_bytes() const { return entry_->offset_bytes; }
std::span<std::byte> SliceCache::Ref::data() { return entry_->data; }
std::span<const std::byte> SliceCache::Ref::data() const { return entry_->data; }
std::unique_lock<std::mutex> SliceCache::Ref::LockData() {
  return std::unique_lock<std::mutex>(entry_->data_mu);
}
void SliceCache::Ref::MarkDirty() {
  std::lock_guard<std::mutex> g(entry_->shard->mu);
  ++entry_->dirty_gen;
}
bool SliceCache::Ref::dirty() const {
  std::lock_guard<std::mutex> g(entry_->shard->mu);
  return entry_->dirty();
}
void SliceCache::Ref::Reset() {
  if (entry_ != nullptr) cache_->Unpin(std::exchange(entry_, nullptr));
}

SliceCache::SliceCache(io::BlockFile* file, uint32_t slice_bytes, uint64_t capacity_bytes,
                       std::string name)
    : file_(file),
      slice_bytes_(slice_bytes),
      capacity_slices_(std::max<uint64_t>(2, (capacity_bytes + slice_bytes - 1) / slice_bytes)),
      name_(std::move(name)),
      shards_(ShardCount(capacity_slices_)) {
  for (Shard& sh : shards_) sh.capacity_slices = capacity_slices_ / shards_.size();
}

SliceCache::~SliceCache() = default;

bool SliceCache::has_dirty() const {
  for (const Shard& sh : shards_) {
    std::lock_guard<std::mutex> g(sh.mu);
    for (const auto& [offset, e] : sh.entries) {
      if (e->dirty()) return true;
    }
  }
  return false;
}

size_t SliceCache::size() const {
  size_t n = 0;
  for (const Shard& sh : shards_) {
    std::lock_guard<std::mutex> g(sh.mu);
    n += sh.entries.size();
  }
  return n;
}

SliceCache::Stats SliceCache::stats() const {
  Stats s;
  s.hits = hits_.load(std::memory_order_relaxed);
  s.misses = misses_.load(std::memory_order_relaxed);
  s.evictions = evictions_.load(std::memory_order_relaxed);
  s.writebacks = writebacks_.load(std::memory_order_relaxed);
  s.writes = writes_.load(std::memory_order_relaxed);
  return s;
}

void SliceCache::Unpin(Entry* e) {
  std::lock_guard<std::mutex> g(e->shard->mu);
  --e->pins;
}

void SliceCache::Touch(Entry* e) {
  e->shard->lru.splice(e->shard->lru.begin(), e->shard->lru, e->lru_it);
}

std::vector<std::byte> SliceCache::TakeBuffer(Shard& sh) {
  if (sh.spare_buffers.empty()) return std::vector<std::byte>(slice_bytes_);
  std::vector<std::byte> b = std::move(sh.spare_buffers.back());
  sh.spare_buffers.pop_back();
  return b;
}

Task<int> SliceCache::Load(Entry* e) {
  // `loading` keeps everyone else off the bytes until the read completes.
  int64_t r = co_await file_->Read(e->offset_bytes, e->data);
  WaitNode* waiters;
  {
    std::lock_guard<std::mutex> g(e->shard->mu);
    e->loading = false;
    e->valid = r >= 0;
    waiters = e->waiters.TakeAll();
  }
  WakeNodes(waiters);
  co_return r < 0 ? static_cast<int>(r) : 0;
}

Task<int> SliceCache::Get(uint64_t offset_bytes, Ref* out) {
  Shard& sh = ShardOf(offset_bytes);
  std::unique_lock<std::mutex> lock(sh.mu);
  auto it = sh.entries.find(offset_bytes);
  if (it != sh.entries.end()) {
    Entry* e = it->second.get();
    ++e->pins;
    Touch(e);
    while (e->loading) {
      co_await e->waiters.Wait(lock);
      lock.lock();
    }
    if (!e->valid) {
      // An earlier load failed: retry it ourselves.
      e->loading = true;
      lock.unlock();
      int r = co_await Load(e);
      if (r < 0) {
        Unpin(e);
        co_return r;
      }
    } else {
      lock.unlock();
    }
    hits_.fetch_add(1, std::memory_order_relaxed);
    *out = Ref(this, e);
    co_return 0;
  }

  misses_.fetch_add(1, std::memory_order_relaxed);
  auto owned = std::make_unique<Entry>();
  Entry* e = owned.get();
  e->shard = &sh;
  e->offset_bytes = offset_bytes;
  e->data = TakeBuffer(sh);
  e->pins = 1;
  e->loading = true;  // claims the load before the lock is dropped
  sh.lru.push_front(e);
  e->lru_it = sh.lru.begin();
  sh.entries.emplace(offset_bytes, std::move(owned));
  lock.unlock();

  // Make room first (may write back dirty slices), then read.
  co_await EvictIfOverBudget(sh);
  int r = co_await Load(e);
  if (r < 0) {
    Unpin(e);
    co_return r;
  }
  *out = Ref(this, e);
  co_return 0;
}

Task<int> SliceCache::EvictIfOverBudget(Shard& sh) {
  std::unique_lock<std::mutex> lock(sh.mu);
  while (sh.entries.size() > sh.capacity_slices) {
    Entry* victim = nullptr;
    for (auto rit = sh.lru.rbegin(); rit != sh.lru.rend(); ++rit) {
      Entry* e = *rit;
      if (e->pins == 0 && !e->loading && !e->writing) {
        victim = e;
        break;
      }
    }
    if (victim == nullptr) break;  // everything pinned: run over budget
    if (victim->dirty()) {
      ++victim->pins;
      lock.unlock();
      std::vector<Entry*> one(1, victim);
      int r = co_await WriteBack(std::move(one));
      Unpin(victim);
      // Keep it dirty on failure; the next flush reports the error.
      if (r < 0) co_return r;
      lock.lock();
      continue;  // state may have changed while writing: pick again
    }
    evictions_.fetch_add(1, std::memory_order_relaxed);
    sh.lru.erase(victim->lru_it);
    auto node = sh.entries.extract(victim->offset_bytes);
    sh.spare_buffers.push_back(std::move(node.mapped()->data));
  }
  co_return 0;
}

Task<int> SliceCache::WriteBack(std::vector<Entry*> batch) {
  struct Copy {
    Entry* entry;
    uint64_t gen;
    std::vector<std::byte> bytes;
  };
  // One writer per slice at a time: wait out write-backs already running,
  // claiming nothing meanwhile (holding one slice while waiting for another
  // could deadlock two write-backs); then claim, skipping a slice another
  // writer claimed since (it writes it: Flush waits for its generation).
  for (Entry* e : batch) {
    std::unique_lock<std::mutex> lock(e->shard->mu);
    while (e->writing) {
      co_await e->waiters.Wait(lock);
      lock.lock();
    }
  }
  std::vector<Copy> copies;
  for (Entry* e : batch) {
    std::unique_lock<std::mutex> lock(e->shard->mu);
    if (!e->valid || !e->dirty() || e->writing) continue;
    e->writing = true;
    // The generation first, then the bytes: a store that lands after the
    // copy bumps the generation after this read, so the slice stays dirty.
    const uint64_t gen = e->dirty_gen;
    std::vector<std::byte> bytes = TakeBuffer(*e->shard);
    lock.unlock();
    {
      std::lock_guard<std::mutex> data_lock(e->data_mu);
      std::copy(e->data.begin(), e->data.end(), bytes.begin());
    }
    copies.push_back({e, gen, std::move(bytes)});
  }
  if (copies.empty()) co_return 0;
  // Adjacent slices go out as one write.
  std::sort(copies.begin(), copies.end(), [](const Copy& a, const Copy& b) {
    return a.entry->offset_bytes < b.entry->offset_bytes;
  });

  int result = 0;
  if (hook_) result = co_await hook_();
  size_t written = 0;  // copies[0, written) reached the file
  while (result >= 0 && written < copies.size()) {
    const size_t i = written;
    size_t j = i + 1;
    while (j < copies.size() && j - i < kMaxSlicesPerWrite &&
           copies[j].entry->offset_bytes == copies[j - 1].entry->offset_bytes + slice_bytes_) {
      ++j;
    }
    std::vector<iovec> iov;
    for (size_t k = i; k < j; ++k) iov.push_back({copies[k].bytes.data(), slice_bytes_});
    const uint64_t offset = copies[i].entry->offset_bytes;
    if (write_check_) {
      const int checked = co_await write_check_(offset, uint64_t{slice_bytes_} * (j - i));
      if (checked < 0) {
        result = checked;
        break;
      }
    }
    int64_t r = co_await file_->WriteV(offset, iov);
    if (r < 0) {
      std::fprintf(stderr, "%s cache: write-back at offset %llu failed: %s\n", name_.c_str(),
                   static_cast<unsigned long long>(offset), std::strerror(static_cast<int>(-r)));
      result = static_cast<int>(r);
      if (error_hook_) error_hook_(result);
      break;
    }
    writes_.fetch_add(1, std::memory_order_relaxed);
    writebacks_.fetch_add(j - i, std::memory_order_relaxed);
    written = j;
  }
  for (size_t k = 0; k < copies.size(); ++k) {
    Copy& c = copies[k];
    WaitNode* waiters;
    {
      std::lock_guard<std::mutex> g(c.entry->shard->mu);
      if (k < written) {
        c.entry->written_gen = std::max(c.entry->written_gen, c.gen);
        // Modified again while in flight: stays dirty for the next write-back.
        if (c.entry->dirty_gen == c.gen) c.entry->clean_gen = c.gen;
      }
      c.entry->writing = false;
      c.entry->shard->spare_buffers.push_back(std::move(c.bytes));
      waiters = c.entry->waiters.TakeAll();
    }
    WakeNodes(waiters);
  }
  co_return result;
}

Task<int> SliceCache::Flush() {
  // Every modification made before this call must be on the file when it
  // returns, including ones a concurrent write-back (eviction, another
  // flush) copied and is still writing: WriteBack skips a slice another
  // writer grabbed first, so repeat until each slice's written generation
  // reaches what it was at the call.
  std::vector<std::pair<Entry*, uint64_t>> want;
  for (Shard& sh : shards_) {
    std::lock_guard<std::mutex> g(sh.mu);
    for (auto& [offset, e] : sh.entries) {
      if (e->dirty() || e->writing) {
        ++e->pins;
        want.emplace_back(e.get(), e->dirty_gen);
      }
    }
  }
  int r = 0;
  for (;;) {
    std::vector<Entry*> batch;
    for (const auto& [e, gen] : want) {
      std::lock_guard<std::mutex> g(e->shard->mu);
      if (e->written_gen < gen) batch.push_back(e);
    }
    if (batch.empty()) break;
    r = co_await WriteBack(std::move(batch));
    if (r < 0) break;
  }
  for (const auto& [e, gen] : want) Unpin(e);
  co_return r;
}

Task<void> SliceCache::Drop(uint64_t offset_bytes, uint64_t length_bytes) {
  uint64_t end = offset_bytes + length_bytes;
  for (uint64_t off = offset_bytes / slice_bytes_ * slice_bytes_; off < end; off += slice_bytes_) {
    Shard& sh = ShardOf(off);
    std::unique_lock<std::mutex> lock(sh.mu);
    auto it = sh.entries.find(off);
    if (it == sh.entries.end()) continue;
    Entry* e = it->second.get();
    ++e->pins;  // keeps it alive while we wait
    while (e->writing || e->loading) {
      co_await e->waiters.Wait(lock);
      lock.lock();
    }
    --e->pins;
    if (e->pins != 0) continue;
    sh.lru.erase(e->lru_it);
    auto node = sh.entries.extract(off);
    sh.spare_buffers.push_back(std::move(node.mapped()->data));
  }
}

}  // namespace uq::cache
