#include "cache/slice_cache.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

namespace uq::cache {

uint64_t SliceCache::Ref::offset_bytes() const { return entry_->offset_bytes; }
std::span<std::byte> SliceCache::Ref::data() { return entry_->data; }
std::span<const std::byte> SliceCache::Ref::data() const { return entry_->data; }
void SliceCache::Ref::MarkDirty() { ++entry_->dirty_gen; }
bool SliceCache::Ref::dirty() const { return entry_->dirty(); }
void SliceCache::Ref::Reset() {
  if (entry_ != nullptr) cache_->Unpin(std::exchange(entry_, nullptr));
}

SliceCache::SliceCache(io::BlockFile* file, uint32_t slice_bytes, uint64_t capacity_bytes,
                       std::string name)
    : file_(file),
      slice_bytes_(slice_bytes),
      capacity_slices_(std::max<uint64_t>(2, (capacity_bytes + slice_bytes - 1) / slice_bytes)),
      name_(std::move(name)) {}

SliceCache::~SliceCache() = default;

bool SliceCache::has_dirty() const {
  for (const auto& [offset, e] : entries_) {
    if (e->dirty()) return true;
  }
  return false;
}

void SliceCache::Unpin(Entry* e) { --e->pins; }

void SliceCache::Touch(Entry* e) { lru_.splice(lru_.begin(), lru_, e->lru_it); }

Task<int> SliceCache::Load(Entry* e) {
  e->loading = true;
  int64_t r = co_await file_->Read(e->offset_bytes, e->data);
  e->loading = false;
  e->valid = r >= 0;
  e->waiters.WakeAll();
  co_return r < 0 ? static_cast<int>(r) : 0;
}

const std::byte* SliceCache::Peek(uint64_t offset_bytes) {
  auto it = entries_.find(offset_bytes);
  if (it == entries_.end()) return nullptr;
  Entry* e = it->second.get();
  if (!e->valid || e->loading) return nullptr;
  Touch(e);
  ++stats_.hits;
  return e->data.data();
}

Task<int> SliceCache::Get(uint64_t offset_bytes, Ref* out) {
  auto it = entries_.find(offset_bytes);
  if (it != entries_.end()) {
    Entry* e = it->second.get();
    ++e->pins;
    Touch(e);
    while (e->loading) co_await e->waiters.Wait();
    if (!e->valid) {
      // An earlier load failed: retry it ourselves.
      int r = co_await Load(e);
      if (r < 0) {
        Unpin(e);
        co_return r;
      }
    }
    ++stats_.hits;
    *out = Ref(this, e);
    co_return 0;
  }

  ++stats_.misses;
  auto owned = std::make_unique<Entry>();
  Entry* e = owned.get();
  e->offset_bytes = offset_bytes;
  e->data = TakeBuffer();
  e->pins = 1;
  e->loading = true;  // claims the load before any suspension
  lru_.push_front(e);
  e->lru_it = lru_.begin();
  entries_.emplace(offset_bytes, std::move(owned));

  // Make room first (may write back dirty slices), then read.
  co_await EvictIfOverBudget();
  int r = co_await Load(e);
  if (r < 0) {
    Unpin(e);
    co_return r;
  }
  *out = Ref(this, e);
  co_return 0;
}

Task<int> SliceCache::EvictIfOverBudget() {
  int result = 0;
  while (entries_.size() > capacity_slices_) {
    Entry* victim = nullptr;
    for (auto rit = lru_.rbegin(); rit != lru_.rend(); ++rit) {
      Entry* e = *rit;
      if (e->pins == 0 && !e->loading && !e->writing) {
        victim = e;
        break;
      }
    }
    if (victim == nullptr) break;  // everything pinned: run over budget
    if (victim->dirty()) {
      ++victim->pins;
      std::vector<Entry*> one(1, victim);
      int r = co_await WriteBack(std::move(one));
      Unpin(victim);
      if (r < 0) {
        result = r;
        break;  // keep it dirty; the next flush reports the error
      }
      continue;  // state may have changed while writing: pick again
    }
    ++stats_.evictions;
    lru_.erase(victim->lru_it);
    auto node = entries_.extract(victim->offset_bytes);
    spare_buffers_.push_back(std::move(node.mapped()->data));
  }
  co_return result;
}

Task<int> SliceCache::WriteBack(std::vector<Entry*> batch) {
  // One writer per slice at a time: wait out a write-back already running.
  for (Entry* e : batch) {
    while (e->writing) co_await e->waiters.Wait();
  }
  struct Copy {
    Entry* entry;
    uint64_t gen;
    std::vector<std::byte> bytes;
  };
  std::vector<Copy> copies;
  for (Entry* e : batch) {
    if (!e->valid || !e->dirty() || e->writing) continue;
    e->writing = true;
    std::vector<std::byte> bytes = TakeBuffer();
    std::copy(e->data.begin(), e->data.end(), bytes.begin());
    copies.push_back({e, e->dirty_gen, std::move(bytes)});
  }
  if (copies.empty()) co_return 0;
  // Adjacent slices go out as one write.
  std::sort(copies.begin(), copies.end(), [](const Copy& a, const Copy& b) {
    return a.entry->offset_bytes < b.entry->offset_bytes;
  });

  int result = 0;
  if (hook_) result = co_await hook_();
  for (size_t i = 0; result >= 0 && i < copies.size();) {
    size_t j = i + 1;
    while (j < copies.size() && j - i < kMaxSlicesPerWrite &&
           copies[j].entry->offset_bytes == copies[j - 1].entry->offset_bytes + slice_bytes_) {
      ++j;
    }
    std::vector<iovec> iov;
    for (size_t k = i; k < j; ++k) iov.push_back({copies[k].bytes.data(), slice_bytes_});
    const uint64_t offset = copies[i].entry->offset_bytes;
    int64_t r = co_await file_->WriteV(offset, iov);
    if (r < 0) {
      std::fprintf(stderr, "%s cache: write-back at offset %llu failed: %s\n", name_.c_str(),
                   static_cast<unsigned long long>(offset), std::strerror(static_cast<int>(-r)));
      result = static_cast<int>(r);
      break;
    }
    for (size_t k = i; k < j; ++k) {
      Copy& c = copies[k];
      ++stats_.writebacks;
      c.entry->written_gen = std::max(c.entry->written_gen, c.gen);
      // Modified again while in flight: stays dirty for the next write-back.
      if (c.entry->dirty_gen == c.gen) c.entry->clean_gen = c.gen;
    }
    ++stats_.writes;
    i = j;
  }
  for (Copy& c : copies) {
    c.entry->writing = false;
    spare_buffers_.push_back(std::move(c.bytes));
  }
  for (Copy& c : copies) c.entry->waiters.WakeAll();
  co_return result;
}

std::vector<std::byte> SliceCache::TakeBuffer() {
  if (spare_buffers_.empty()) return std::vector<std::byte>(slice_bytes_);
  std::vector<std::byte> b = std::move(spare_buffers_.back());
  spare_buffers_.pop_back();
  return b;
}

Task<int> SliceCache::Flush() {
  // Every modification made before this call must be on the file when it
  // returns, including ones a concurrent write-back (eviction, another
  // flush) copied and is still writing: WriteBack skips a slice another
  // writer grabbed first, so repeat until each slice's written generation
  // reaches what it was at the call.
  std::vector<std::pair<Entry*, uint64_t>> want;
  for (auto& [offset, e] : entries_) {
    if (e->dirty() || e->writing) {
      ++e->pins;
      want.emplace_back(e.get(), e->dirty_gen);
    }
  }
  int r = 0;
  for (;;) {
    std::vector<Entry*> batch;
    for (const auto& [e, gen] : want) {
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
    auto it = entries_.find(off);
    if (it == entries_.end()) continue;
    Entry* e = it->second.get();
    ++e->pins;  // keeps it alive while we wait
    while (e->writing || e->loading) co_await e->waiters.Wait();
    --e->pins;
    if (e->pins != 0) continue;
    it = entries_.find(off);
    lru_.erase(e->lru_it);
    auto node = entries_.extract(it);
    spare_buffers_.push_back(std::move(node.mapped()->data));
  }
}

}  // namespace uq::cache
