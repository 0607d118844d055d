#include "src/io/run_sync.h"

#include <gtest/gtest.h>

#include <vector>

#include "src/io/mem_file.h"
#include "src/io/task.h"

namespace uq::io {
namespace {

Task<int> Add(int a, int b) { co_return a + b; }

Task<int> Nested() {
  int x = co_await Add(1, 2);
  int y = co_await Add(x, 10);
  co_return y;
}

TEST(RunSyncTest, ImmediateTaskWithoutLoop) { EXPECT_EQ(RunSync(nullptr, Nested()), 13); }

TEST(RunSyncTest, VoidTask) {
  int hits = 0;
  auto body = [](int* h) -> Task<void> {
    ++*h;
    co_return;
  };
  RunSync(nullptr, body(&hits));
  EXPECT_EQ(hits, 1);
}

TEST(RunSyncTest, RealLoopNop) {
  auto loop = EventLoop::Create(8);
  ASSERT_TRUE(loop.ok()) << loop.status();
  // A NOP goes through the ring and comes back with res 0.
  auto nop = [](EventLoop* l) -> Task<int> {
    co_return co_await l->Op([](io_uring_sqe* sqe) { io_uring_prep_nop(sqe); });
  };
  EXPECT_EQ(RunSync(loop->get(), nop(loop->get())), 0);
  EXPECT_EQ((*loop)->in_flight(), 0u);
}

TEST(RunSyncTest, PumpingDrivesDeferredMemFile) {
  MemFile mem(MemFile::Mode::kDeferred);
  std::vector<std::byte> buf(16, std::byte{7});
  int64_t r = RunSyncPumping([&] { return mem.RunAll() > 0; }, mem.Write(4, buf));
  EXPECT_EQ(r, 16);
  EXPECT_EQ(mem.size_bytes(), 20u);
}

// A million synchronously completing awaits in one coroutine: symmetric
// transfer must keep the stack flat (a fuzzer on an immediate MemFile does
// exactly this).
Task<int> ManyFlushes(MemFile* mem, int n) {
  for (int i = 0; i < n; ++i) {
    int r = co_await mem->Flush();
    if (r != 0) co_return -1;
  }
  co_return n;
}

TEST(RunSyncTest, DeepSynchronousAwaitChainDoesNotGrowStack) {
  MemFile mem;
  EXPECT_EQ(RunSync(nullptr, ManyFlushes(&mem, 1'000'000)), 1'000'000);
  EXPECT_EQ(mem.counters().flushes, 1'000'000u);
}

TEST(RunSyncDeathTest, SuspendedWithoutLoopAborts) {
  MemFile mem(MemFile::Mode::kDeferred);
  EXPECT_DEATH(RunSync(nullptr, mem.Flush()), "no event loop");
}

TEST(WhenAllTest, CompletesAfterEveryTaskInAnyOrder) {
  MemFile mem(MemFile::Mode::kDeferred);
  std::vector<std::vector<std::byte>> bufs;
  for (int i = 0; i < 8; ++i) bufs.emplace_back(100 + i, static_cast<std::byte>(i));
  std::vector<Task<int64_t>> tasks;
  for (int i = 0; i < 8; ++i) tasks.push_back(mem.Write(1000 * i, bufs[i]));
  std::optional<std::vector<int64_t>> results;
  Spawn(StoreResult(WhenAll(std::move(tasks)), &results));
  ASSERT_EQ(mem.pending_count(), 8u);
  // Complete in reverse: WhenAll must wait for the last one (index 0).
  for (int i = 7; i >= 1; --i) {
    mem.RunOne(static_cast<size_t>(i));
    EXPECT_FALSE(results.has_value());
  }
  mem.RunOne(0);
  ASSERT_TRUE(results.has_value());
  for (int i = 0; i < 8; ++i) EXPECT_EQ((*results)[i], 100 + i) << i;
}

TEST(WhenAllTest, EmptyAndSynchronous) {
  EXPECT_TRUE(RunSync(nullptr, WhenAll(std::vector<Task<int>>{})).empty());
  std::vector<Task<int>> tasks;
  tasks.push_back(Add(1, 1));
  tasks.push_back(Add(2, 2));
  EXPECT_EQ(RunSync(nullptr, WhenAll(std::move(tasks))), (std::vector<int>{2, 4}));
  std::vector<Task<void>> voids;
  voids.push_back([]() -> Task<void> { co_return; }());
  RunSync(nullptr, WhenAll(std::move(voids)));
}

}  // namespace
}  // namespace uq::io
