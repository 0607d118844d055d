#include "src/io/frame_pool.h"

#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include "src/io/mem_file.h"
#include "src/io/run_sync.h"

namespace uq {
namespace {

using io::MemFile;

// Each test starts from an empty pool on its thread.
class FramePoolTest : public ::testing::Test {
 protected:
  void SetUp() override { FramePool::Trim(); }
  void TearDown() override { FramePool::Trim(); }
};

TEST_F(FramePoolTest, RecyclesWithinASizeClass) {
  void* a = FramePool::Allocate(100);
  FramePool::Deallocate(a, 100);
  EXPECT_EQ(FramePool::ThreadStats().cached_bytes, 128u);
  const uint64_t hits = FramePool::ThreadStats().hits;
  // 65..128 bytes share a class: the same block comes back.
  void* b = FramePool::Allocate(70);
  EXPECT_EQ(b, a);
  EXPECT_EQ(FramePool::ThreadStats().hits, hits + 1);
  EXPECT_EQ(FramePool::ThreadStats().cached_bytes, 0u);
  // A different class does not take it.
  FramePool::Deallocate(b, 70);
  void* c = FramePool::Allocate(129);
  EXPECT_NE(c, a);
  FramePool::Deallocate(c, 129);
}

TEST_F(FramePoolTest, LargeFramesBypassThePool) {
  const size_t big = FramePool::kMaxPooledBytes + 1;
  void* p = FramePool::Allocate(big);
  FramePool::Deallocate(p, big);
  EXPECT_EQ(FramePool::ThreadStats().cached_bytes, 0u);
}

TEST_F(FramePoolTest, CachesAtMostTheCap) {
  const size_t n = FramePool::kMaxCachedBytes / FramePool::kMaxPooledBytes + 10;
  std::vector<void*> blocks;
  for (size_t i = 0; i < n; ++i) blocks.push_back(FramePool::Allocate(FramePool::kMaxPooledBytes));
  for (void* p : blocks) FramePool::Deallocate(p, FramePool::kMaxPooledBytes);
  EXPECT_EQ(FramePool::ThreadStats().cached_bytes, FramePool::kMaxCachedBytes);
  FramePool::Trim();
  EXPECT_EQ(FramePool::ThreadStats().cached_bytes, 0u);
}

TEST_F(FramePoolTest, AFrameFreedOnAnotherThreadJoinsThatThreadsPool) {
  void* p = FramePool::Allocate(200);
  void* reused = nullptr;
  uint64_t cached_there = 0;
  std::thread t([&] {
    FramePool::Deallocate(p, 200);
    cached_there = FramePool::ThreadStats().cached_bytes;
    reused = FramePool::Allocate(200);
    FramePool::Deallocate(reused, 200);
  });
  t.join();  // the thread's exit releases its pool
  EXPECT_EQ(cached_there, 256u);
  EXPECT_EQ(reused, p);
  EXPECT_EQ(FramePool::ThreadStats().cached_bytes, 0u);  // this thread's pool is untouched
}

#if UQ_FRAME_POOL_POISON
// Under ASan an idle block is poisoned: touching a destroyed frame is caught
// even though the pool, not free(), holds its memory.
TEST_F(FramePoolTest, IdleBlocksArePoisonedUnderAsan) {
  EXPECT_DEATH(
      {
        auto* p = static_cast<volatile char*>(FramePool::Allocate(100));
        FramePool::Deallocate(const_cast<char*>(p), 100);
        p[10] = 1;
      },
      "use-after-poison");
}
#endif

Task<int> Add(int a, int b) { co_return a + b; }
Task<int> Nested(MemFile* mem) {
  const int r = co_await mem->Flush();
  co_return r + co_await Add(1, 2);
}

TEST_F(FramePoolTest, TaskFramesComeFromThePool) {
  MemFile mem;
  EXPECT_EQ(io::RunSync(nullptr, Nested(&mem)), 3);
  const FramePool::Stats warm = FramePool::ThreadStats();
  EXPECT_GT(warm.cached_bytes, 0u);  // the frames went back to the pool
  for (int i = 0; i < 100; ++i) ASSERT_EQ(io::RunSync(nullptr, Nested(&mem)), 3);
  const FramePool::Stats after = FramePool::ThreadStats();
  EXPECT_EQ(after.misses, warm.misses);
  // RunSync's frame, Nested, MemFile::Flush and Add: four per run.
  EXPECT_EQ(after.hits - warm.hits, 400u);
  EXPECT_EQ(after.cached_bytes, warm.cached_bytes);
}

}  // namespace
}  // namespace uq
