#include "src/io/join.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <optional>

#include "src/io/mem_file.h"
#include "src/io/run_sync.h"

namespace uq::io {
namespace {

// A piece that waits for one (deferred) flush, then reports `result`.
Task<int> Piece(MemFile* mem, int result) {
  const int r = co_await mem->Flush();
  if (r < 0) co_return r;
  co_return result;
}

// Starts one piece per entry of `results` and waits for them.
Task<int> FanOut(MemFile* mem, std::vector<int> results) {
  Join join;
  for (int r : results) join.Start(Piece(mem, r));
  co_return co_await join.Wait();
}

TEST(JoinTest, NoPiecesIsReadyAtOnce) { EXPECT_EQ(RunSync(nullptr, FanOut(nullptr, {})), 0); }

TEST(JoinTest, SynchronousPiecesFinishDuringStart) {
  MemFile mem;
  EXPECT_EQ(RunSync(nullptr, FanOut(&mem, {1, 2, 3})), 0);
  EXPECT_EQ(mem.counters().flushes, 3u);
}

TEST(JoinTest, WaitsForTheLastPieceWhateverTheOrder) {
  MemFile mem(MemFile::Mode::kDeferred);
  std::optional<int> result;
  Spawn(StoreResult(FanOut(&mem, {0, 0, 0, 0}), &result));
  ASSERT_EQ(mem.pending_count(), 4u);  // all four started before any finished
  mem.RunOne(2);
  mem.RunOne(0);
  mem.RunOne(1);
  EXPECT_FALSE(result.has_value());
  mem.RunOne(0);
  ASSERT_TRUE(result.has_value());
  EXPECT_EQ(*result, 0);
}

TEST(JoinTest, FirstErrorToFinishWins) {
  MemFile mem(MemFile::Mode::kDeferred);
  std::optional<int> result;
  Spawn(StoreResult(FanOut(&mem, {-EIO, 5, -ENOSPC}), &result));
  ASSERT_EQ(mem.pending_count(), 3u);
  mem.RunOne(2);  // -ENOSPC finishes first
  mem.RunOne(0);  // then -EIO
  EXPECT_FALSE(result.has_value());
  mem.RunOne(0);  // then the success: a later success does not clear the error
  ASSERT_TRUE(result.has_value());
  EXPECT_EQ(*result, -ENOSPC);
}

TEST(JoinTest, StartIntoStoresValues) {
  MemFile mem(MemFile::Mode::kDeferred);
  std::optional<int> a, b;
  std::optional<int> done;
  auto run = [&]() -> Task<int> {
    Join join;
    join.StartInto(Piece(&mem, 7), &a);
    join.StartInto(Piece(&mem, 9), &b);
    EXPECT_EQ(join.pending(), 2u);
    co_return co_await join.Wait();
  };
  Spawn(StoreResult(run(), &done));
  mem.RunAll();
  ASSERT_TRUE(done.has_value());
  EXPECT_EQ(*done, 0);  // StartInto pieces carry values, not errors
  EXPECT_EQ(a, 7);
  EXPECT_EQ(b, 9);
}

}  // namespace
}  // namespace uq::io
