#include "cache/slice_cache.h"

#include <gtest/gtest.h>

#include <cstring>
#include <optional>

#include "src/io/mem_file.h"
#include "src/io/run_sync.h"

namespace uq::cache {
namespace {

constexpr uint32_t kSlice = 512;

std::vector<std::byte> Pattern(size_t n) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = std::byte(i / kSlice + 1);
  return v;
}

Task<void> GetInto(SliceCache* c, uint64_t off, SliceCache::Ref* ref, int* result) {
  *result = co_await c->Get(off, ref);
}

int GetSync(SliceCache& c, uint64_t off, SliceCache::Ref* ref) {
  return io::RunSync(nullptr, c.Get(off, ref));
}

TEST(SliceCacheTest, ConcurrentMissesShareOneRead) {
  io::MemFile file(io::MemFile::Mode::kDeferred, Pattern(8 * kSlice));
  SliceCache cache(&file, kSlice, 8 * kSlice, "test");
  SliceCache::Ref refs[3];
  int results[3] = {1, 1, 1};
  for (int i = 0; i < 3; ++i) Spawn(GetInto(&cache, 2 * kSlice, &refs[i], &results[i]));
  EXPECT_EQ(file.pending_count(), 1u);  // one read for three misses
  file.RunAll();
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(results[i], 0);
    EXPECT_EQ(refs[i].data()[0], std::byte{3});
  }
  EXPECT_EQ(file.counters().reads, 1u);
}

TEST(SliceCacheTest, AdjacentDirtySlicesGoOutAsOneWrite) {
  io::MemFile file(io::MemFile::Mode::kImmediate, Pattern(8 * kSlice));
  SliceCache cache(&file, kSlice, 8 * kSlice, "test");
  // Slices 1, 2, 3 (adjacent) and 6 dirty.
  for (uint64_t s : {3, 1, 6, 2}) {
    SliceCache::Ref r;
    ASSERT_EQ(GetSync(cache, s * kSlice, &r), 0);
    std::memset(r.data().data(), 0x70 + static_cast<int>(s), kSlice);
    r.MarkDirty();
  }
  file.ResetCounters();
  ASSERT_EQ(io::RunSync(nullptr, cache.Flush()), 0);
  EXPECT_EQ(file.counters().writes, 2u);
  EXPECT_EQ(cache.stats().writes, 2u);
  EXPECT_EQ(cache.stats().writebacks, 4u);
  for (uint64_t s = 0; s < 8; ++s) {
    std::vector<std::byte> got(kSlice);
    ASSERT_EQ(io::RunSync(nullptr, file.Read(s * kSlice, got)), static_cast<int64_t>(kSlice));
    const bool dirtied = s == 1 || s == 2 || s == 3 || s == 6;
    EXPECT_EQ(got[0], dirtied ? std::byte(0x70 + s) : std::byte(s + 1)) << "slice " << s;
    EXPECT_EQ(got[kSlice - 1], got[0]) << "slice " << s;
  }
  EXPECT_FALSE(cache.has_dirty());
}

TEST(SliceCacheTest, EvictsLeastRecentlyUsedCleanSlice) {
  io::MemFile file(io::MemFile::Mode::kImmediate, Pattern(8 * kSlice));
  SliceCache cache(&file, kSlice, 2 * kSlice, "test");
  SliceCache::Ref r;
  ASSERT_EQ(GetSync(cache, 0, &r), 0);
  r.Reset();
  ASSERT_EQ(GetSync(cache, kSlice, &r), 0);
  r.Reset();
  ASSERT_EQ(GetSync(cache, 0, &r), 0);  // touch slice 0
  r.Reset();
  ASSERT_EQ(GetSync(cache, 2 * kSlice, &r), 0);  // evicts slice 1
  r.Reset();
  EXPECT_EQ(cache.size(), 2u);
  file.ResetCounters();
  ASSERT_EQ(GetSync(cache, 0, &r), 0);
  r.Reset();
  EXPECT_EQ(file.counters().reads, 0u) << "slice 0 was the most recent; it must stay";
  ASSERT_EQ(GetSync(cache, kSlice, &r), 0);
  EXPECT_EQ(file.counters().reads, 1u) << "slice 1 was the LRU one; it must be gone";
}

TEST(SliceCacheTest, PinnedSlicesAreNeverEvicted) {
  io::MemFile file(io::MemFile::Mode::kImmediate, Pattern(8 * kSlice));
  SliceCache cache(&file, kSlice, 2 * kSlice, "test");
  SliceCache::Ref a, b, c;
  ASSERT_EQ(GetSync(cache, 0, &a), 0);
  ASSERT_EQ(GetSync(cache, kSlice, &b), 0);
  ASSERT_EQ(GetSync(cache, 2 * kSlice, &c), 0);
  EXPECT_EQ(cache.size(), 3u);  // over budget rather than evicting a pin
  EXPECT_EQ(a.data()[0], std::byte{1});
  EXPECT_EQ(b.data()[0], std::byte{2});
  EXPECT_EQ(c.data()[0], std::byte{3});
}

TEST(SliceCacheTest, DirtySliceWrittenAfterHookBeforeEviction) {
  io::MemFile file(io::MemFile::Mode::kImmediate, Pattern(8 * kSlice));
  SliceCache cache(&file, kSlice, 2 * kSlice, "test");
  int hook_calls = 0;
  bool hook_saw_old_content = false;
  cache.set_writeback_hook([&]() -> Task<int> {
    ++hook_calls;
    hook_saw_old_content = file.data()[0] == std::byte{1};
    co_return 0;
  });
  SliceCache::Ref r;
  ASSERT_EQ(GetSync(cache, 0, &r), 0);
  r.data()[0] = std::byte{0x77};
  r.MarkDirty();
  r.Reset();
  EXPECT_TRUE(cache.has_dirty());
  ASSERT_EQ(GetSync(cache, kSlice, &r), 0);
  r.Reset();
  ASSERT_EQ(GetSync(cache, 2 * kSlice, &r), 0);  // must write slice 0 back to evict it
  r.Reset();
  EXPECT_EQ(hook_calls, 1);
  EXPECT_TRUE(hook_saw_old_content) << "the hook must run before the slice is written";
  EXPECT_EQ(file.data()[0], std::byte{0x77});
}

TEST(SliceCacheTest, ModificationDuringWriteBackStaysDirty) {
  io::MemFile file(io::MemFile::Mode::kImmediate, Pattern(4 * kSlice));
  SliceCache cache(&file, kSlice, 4 * kSlice, "test");
  SliceCache::Ref r;
  ASSERT_EQ(GetSync(cache, 0, &r), 0);
  r.data()[0] = std::byte{0x10};
  r.MarkDirty();
  file.set_mode(io::MemFile::Mode::kDeferred);
  std::optional<int> flushed;
  Spawn(StoreResult(cache.Flush(), &flushed));
  ASSERT_EQ(file.pending_count(), 1u);
  r.data()[0] = std::byte{0x20};  // after the copy was taken
  r.MarkDirty();
  file.RunAll();
  ASSERT_EQ(flushed, 0);
  EXPECT_EQ(file.data()[0], std::byte{0x10}) << "the write-back writes its snapshot";
  EXPECT_TRUE(cache.has_dirty());
  file.set_mode(io::MemFile::Mode::kImmediate);
  ASSERT_EQ(io::RunSync(nullptr, cache.Flush()), 0);
  EXPECT_EQ(file.data()[0], std::byte{0x20});
  EXPECT_FALSE(cache.has_dirty());
}

TEST(KeyedRwLockTest, ExclusiveWaitsForSharedAndIsFifo) {
  KeyedRwLock locks;
  std::vector<int> order;
  auto locker = [&](int id, bool exclusive) -> Task<void> {
    co_await locks.Lock(7, exclusive);
    order.push_back(id);
  };
  Spawn(locker(1, false));  // granted
  Spawn(locker(2, true));   // waits for 1
  Spawn(locker(3, false));  // waits behind 2 (FIFO: no writer starvation)
  EXPECT_EQ(order, (std::vector<int>{1}));
  locks.Unlock(7, false);
  EXPECT_EQ(order, (std::vector<int>{1, 2}));
  locks.Unlock(7, true);
  EXPECT_EQ(order, (std::vector<int>{1, 2, 3}));
  locks.Unlock(7, false);
  EXPECT_EQ(locks.held_keys(), 0u);
}

}  // namespace
}  // namespace uq::cache
