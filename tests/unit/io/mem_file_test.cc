#include "src/io/mem_file.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <cstring>
#include <random>

#include "src/io/run_sync.h"
#include "tests/unit/io/test_util.h"

namespace uq::io {
namespace {

using testing::AllZero;
using testing::Pattern;

TEST(MemFileTest, ImmediateWriteReadAndZeroPastEof) {
  MemFile mem;
  auto data = Pattern(1, 300);
  EXPECT_EQ(RunSync(nullptr, mem.Write(100, data)), 300);
  EXPECT_EQ(mem.size_bytes(), 400u);
  EXPECT_TRUE(AllZero(mem.data().data(), 100));

  // Read straddling EOF: the tail is zero-filled and the full length counted.
  std::vector<std::byte> buf(500, std::byte{0xee});
  EXPECT_EQ(RunSync(nullptr, mem.Read(100, buf)), 500);
  EXPECT_EQ(std::memcmp(buf.data(), data.data(), 300), 0);
  EXPECT_TRUE(AllZero(buf.data() + 300, 200));
  EXPECT_EQ(mem.counters().reads, 1u);
  EXPECT_EQ(mem.counters().writes, 1u);
  EXPECT_EQ(mem.counters().bytes_written, 300u);
}

TEST(MemFileTest, ImmediateTaskNeverSuspends) {
  MemFile mem;
  std::optional<int> r;
  Spawn(StoreResult(mem.Flush(), &r));
  EXPECT_TRUE(r.has_value());
}

TEST(MemFileTest, VectoredWriteGathersInOrder) {
  MemFile mem;
  auto a = Pattern(2, 10), b = Pattern(3, 0), c = Pattern(4, 7);
  iovec v[3] = {{a.data(), a.size()}, {b.data(), 0}, {c.data(), c.size()}};
  EXPECT_EQ(RunSync(nullptr, mem.WriteV(5, v)), 17);
  EXPECT_EQ(std::memcmp(mem.data().data() + 5, a.data(), 10), 0);
  EXPECT_EQ(std::memcmp(mem.data().data() + 15, c.data(), 7), 0);
  std::vector<std::byte> x(10), y(7);
  iovec r[2] = {{y.data(), y.size()}, {x.data(), x.size()}};
  EXPECT_EQ(RunSync(nullptr, mem.ReadV(5, r)), 17);
  EXPECT_EQ(std::memcmp(y.data(), a.data(), 7), 0);
}

TEST(MemFileTest, DiscardKeepsSizeWriteZeroesExtends) {
  MemFile mem(MemFile::Mode::kImmediate, Pattern(5, 4096));
  EXPECT_EQ(RunSync(nullptr, mem.Discard(1000, 10000)), 0);
  EXPECT_EQ(mem.size_bytes(), 4096u);
  EXPECT_TRUE(AllZero(mem.data().data() + 1000, 3096));
  EXPECT_FALSE(AllZero(mem.data().data(), 1000));

  EXPECT_EQ(RunSync(nullptr, mem.WriteZeroes(10, 8000)), 0);
  EXPECT_EQ(mem.size_bytes(), 8010u);
  EXPECT_TRUE(AllZero(mem.data().data() + 10, 8000));
  EXPECT_FALSE(AllZero(mem.data().data(), 10));

  EXPECT_EQ(RunSync(nullptr, mem.Truncate(3)), 0);
  EXPECT_EQ(mem.size_bytes(), 3u);
}

TEST(MemFileTest, ReadOnlyAndSizeLimit) {
  MemFile mem;
  mem.set_max_size_bytes(1 << 20);
  std::vector<std::byte> one(1);
  EXPECT_EQ(RunSync(nullptr, mem.Write((1 << 20) - 1, one)), 1);
  EXPECT_EQ(RunSync(nullptr, mem.Write(1 << 20, one)), -EFBIG);
  EXPECT_EQ(RunSync(nullptr, mem.Write(UINT64_MAX, one)), -EINVAL);
  mem.set_read_only(true);
  EXPECT_TRUE(mem.read_only());
  EXPECT_EQ(RunSync(nullptr, mem.Write(0, one)), -EROFS);
  EXPECT_EQ(RunSync(nullptr, mem.Discard(0, 1)), -EROFS);
  EXPECT_EQ(RunSync(nullptr, mem.WriteZeroes(0, 1)), -EROFS);
  EXPECT_EQ(RunSync(nullptr, mem.Truncate(0)), -EROFS);
  EXPECT_EQ(RunSync(nullptr, mem.Read(0, one)), 1);
}

TEST(MemFileTest, DeferredQueuesUntilRun) {
  MemFile mem(MemFile::Mode::kDeferred);
  auto data = Pattern(6, 64);
  std::optional<int64_t> w;
  Spawn(StoreResult(mem.Write(0, data), &w));
  ASSERT_EQ(mem.pending_count(), 1u);
  EXPECT_EQ(mem.pending(0).kind, OpKind::kWrite);
  EXPECT_EQ(mem.pending(0).length_bytes, 64u);
  // Not applied until completed.
  EXPECT_EQ(mem.size_bytes(), 0u);
  EXPECT_FALSE(w.has_value());
  mem.RunOne(0);
  EXPECT_EQ(w, 64);
  EXPECT_EQ(mem.size_bytes(), 64u);
}

TEST(MemFileTest, DeferredReorderedCompletionsApplyInCompletionOrder) {
  MemFile mem(MemFile::Mode::kDeferred);
  std::vector<std::byte> a(8, std::byte{0xaa}), b(8, std::byte{0xbb});
  std::optional<int64_t> ra, rb;
  Spawn(StoreResult(mem.Write(0, a), &ra));
  Spawn(StoreResult(mem.Write(0, b), &rb));
  ASSERT_EQ(mem.pending_count(), 2u);
  mem.RunOne(1);  // b lands first
  EXPECT_TRUE(rb.has_value());
  EXPECT_FALSE(ra.has_value());
  mem.RunOne(0);  // then a overwrites it
  EXPECT_EQ(mem.data()[0], std::byte{0xaa});
}

// A chain of dependent operations: each completion issues the next one, which
// RunAll must also complete.
Task<int> Chain(MemFile* mem, int n) {
  std::vector<std::byte> buf(4);
  for (int i = 0; i < n; ++i) {
    int64_t r = co_await mem->Write(4 * i, buf);
    if (r < 0) co_return -1;
  }
  co_return co_await mem->Flush();
}

TEST(MemFileTest, RunAllCompletesOperationsQueuedByCompletions) {
  MemFile mem(MemFile::Mode::kDeferred);
  std::optional<int> r;
  Spawn(StoreResult(Chain(&mem, 5), &r));
  EXPECT_EQ(mem.pending_count(), 1u);
  EXPECT_EQ(mem.RunAll(), 6u);
  EXPECT_EQ(r, 0);
  EXPECT_EQ(mem.size_bytes(), 20u);
}

TEST(MemFileTest, RunRandomManyInFlight) {
  uint64_t seed = testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "seed=" << seed);
  std::mt19937_64 rng(seed);
  MemFile mem(MemFile::Mode::kDeferred);
  constexpr int kOps = 256;
  std::vector<std::vector<std::byte>> bufs;
  std::vector<std::optional<int64_t>> results(kOps);
  for (int i = 0; i < kOps; ++i) bufs.push_back(Pattern(i, 512));
  for (int i = 0; i < kOps; ++i) Spawn(StoreResult(mem.Write(512 * i, bufs[i]), &results[i]));
  EXPECT_EQ(mem.pending_count(), static_cast<size_t>(kOps));
  EXPECT_EQ(mem.RunRandom(rng), static_cast<size_t>(kOps));
  for (int i = 0; i < kOps; ++i) {
    ASSERT_EQ(results[i], 512) << i;
    ASSERT_EQ(std::memcmp(mem.data().data() + 512 * i, bufs[i].data(), 512), 0) << i;
  }
}

}  // namespace
}  // namespace uq::io
