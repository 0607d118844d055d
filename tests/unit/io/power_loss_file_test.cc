#include "src/io/power_loss_file.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <map>
#include <random>
#include <thread>
#include <vector>

#include "src/io/fault_file.h"
#include "src/io/mem_file.h"
#include "src/io/run_sync.h"
#include "tests/unit/io/test_util.h"

namespace uq::io {
namespace {

using testing::Pattern;

std::vector<std::byte> Bytes(size_t n, uint8_t v) {
  return std::vector<std::byte>(n, std::byte{v});
}

TEST(PowerLossFileTest, FlushedDataSurvivesUnflushedIsDropped) {
  MemFile mem(MemFile::Mode::kImmediate, Bytes(4096, 0x11));
  PowerLossFile plf(&mem, mem.data());
  auto a = Bytes(512, 0xaa), b = Bytes(512, 0xbb);
  ASSERT_EQ(RunSync(nullptr, plf.Write(0, a)), 512);
  ASSERT_EQ(RunSync(nullptr, plf.Flush()), 0);
  ASSERT_EQ(RunSync(nullptr, plf.Write(512, b)), 512);
  ASSERT_EQ(RunSync(nullptr, plf.Write(8192, b)), 512);  // extends, unflushed
  EXPECT_EQ(plf.unflushed_count(), 2u);
  EXPECT_EQ(plf.unflushed_bytes(), 1024u);

  std::vector<std::byte> crashed = plf.Crash();
  ASSERT_EQ(crashed.size(), 4096u);  // the extension was never flushed
  EXPECT_EQ(crashed[0], std::byte{0xaa});
  EXPECT_EQ(crashed[511], std::byte{0xaa});
  EXPECT_EQ(crashed[512], std::byte{0x11});  // unflushed write dropped
  // The live file still has everything.
  EXPECT_EQ(mem.data()[512], std::byte{0xbb});
  EXPECT_EQ(mem.size_bytes(), 8704u);
}

TEST(PowerLossFileTest, ZeroesDiscardTruncateAreJournaled) {
  MemFile mem(MemFile::Mode::kImmediate, Bytes(4096, 0x22));
  PowerLossFile plf(&mem, mem.data());
  ASSERT_EQ(RunSync(nullptr, plf.Discard(0, 100)), 0);
  ASSERT_EQ(RunSync(nullptr, plf.WriteZeroes(4000, 200)), 0);
  EXPECT_EQ(plf.Crash(), Bytes(4096, 0x22));
  ASSERT_EQ(RunSync(nullptr, plf.Flush()), 0);
  std::vector<std::byte> after = plf.Crash();
  EXPECT_EQ(after, mem.data());
  EXPECT_EQ(after.size(), 4200u);
  ASSERT_EQ(RunSync(nullptr, plf.Truncate(10)), 0);
  EXPECT_EQ(plf.Crash().size(), 4200u);
  ASSERT_EQ(RunSync(nullptr, plf.Flush()), 0);
  EXPECT_EQ(plf.Crash().size(), 10u);
}

TEST(PowerLossFileTest, FlushCoversOnlyWritesCompletedBeforeIssue) {
  MemFile mem(MemFile::Mode::kDeferred, Bytes(1024, 0));
  PowerLossFile plf(&mem, mem.data());
  auto a = Bytes(100, 0xaa), b = Bytes(100, 0xbb);
  std::optional<int64_t> ra, rb;
  std::optional<int> rf;
  Spawn(StoreResult(plf.Write(0, a), &ra));
  mem.RunOne(0);                               // a completes
  Spawn(StoreResult(plf.Write(200, b), &rb));  // b in flight
  Spawn(StoreResult(plf.Flush(), &rf));        // flush issued now
  mem.RunOne(0);                               // b completes after flush issue
  mem.RunOne(0);                               // flush completes
  ASSERT_EQ(rf, 0);
  std::vector<std::byte> crashed = plf.Crash();
  EXPECT_EQ(crashed[0], std::byte{0xaa});
  EXPECT_EQ(crashed[200], std::byte{0});  // not covered by that flush
  EXPECT_EQ(plf.unflushed_count(), 1u);
}

TEST(PowerLossFileTest, FailedFlushMakesNothingDurable) {
  MemFile mem(MemFile::Mode::kImmediate, Bytes(64, 0));
  FaultFile fault(&mem);
  PowerLossFile plf(&fault, mem.data());
  fault.FailNthOf(OpKind::kFlush, 1, EIO);
  auto a = Bytes(8, 0xaa);
  ASSERT_EQ(RunSync(nullptr, plf.Write(0, a)), 8);
  EXPECT_EQ(RunSync(nullptr, plf.Flush()), -EIO);
  EXPECT_EQ(plf.Crash()[0], std::byte{0});
  EXPECT_EQ(RunSync(nullptr, plf.Flush()), 0);
  EXPECT_EQ(plf.Crash()[0], std::byte{0xaa});
}

TEST(PowerLossFileTest, CrashRandomSubsetKeepsOnlyCandidateWrites) {
  uint64_t seed = testing::TestSeed();
  std::mt19937_64 rng(seed);
  MemFile mem(MemFile::Mode::kDeferred, Bytes(16 * 512, 0));
  PowerLossFile plf(&mem, mem.data());
  std::vector<std::vector<std::byte>> bufs;
  for (int i = 0; i < 16; ++i) bufs.push_back(Bytes(512, static_cast<uint8_t>(i + 1)));
  std::vector<std::optional<int64_t>> results(16);
  for (int i = 0; i < 16; ++i) Spawn(StoreResult(plf.Write(512 * i, bufs[i]), &results[i]));
  for (int i = 0; i < 8; ++i) mem.RunOne(0);  // half completed (unflushed), half in flight
  bool saw_kept = false, saw_dropped = false;
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<std::byte> img = plf.CrashRandomSubset(rng);
    ASSERT_EQ(img.size(), 16u * 512);
    for (int i = 0; i < 16; ++i) {
      std::byte first = img[512 * i];
      // Whole write or nothing, never another write's bytes.
      ASSERT_TRUE(first == std::byte{0} || first == std::byte(i + 1)) << i;
      ASSERT_EQ(img[512 * i + 511], first) << i;
      (first == std::byte{0} ? saw_dropped : saw_kept) = true;
    }
  }
  EXPECT_TRUE(saw_kept);
  EXPECT_TRUE(saw_dropped);
  mem.RunAll();
}

// Randomized: against a model of durable contents, for many seeds on a
// multi-MiB image, interleaving writes, zeroes and flushes.
TEST(PowerLossFileTest, RandomOpsMatchModel) {
  uint64_t base_seed = testing::TestSeed();
  constexpr size_t kImageBytes = 4 << 20;
  for (uint64_t s = 0; s < 50; ++s) {
    uint64_t seed = base_seed + s;
    SCOPED_TRACE(::testing::Message() << "seed=" << seed);
    std::mt19937_64 rng(seed);
    MemFile mem(MemFile::Mode::kImmediate, std::vector<std::byte>(kImageBytes));
    PowerLossFile plf(&mem, mem.data());
    std::vector<std::byte> durable_model = mem.data();
    std::vector<std::byte> live_model = mem.data();
    // Ranges changed since the last flush: the model copies only those.
    std::vector<std::pair<uint64_t, size_t>> dirty;
    for (int op = 0; op < 100; ++op) {
      uint64_t offset = rng() % (kImageBytes - 65536);
      size_t len = 1 + rng() % 65536;
      switch (rng() % 4) {
        case 0:
        case 1: {
          auto buf = Pattern(rng(), len);
          ASSERT_EQ(RunSync(nullptr, plf.Write(offset, buf)), static_cast<int64_t>(len));
          std::memcpy(live_model.data() + offset, buf.data(), len);
          dirty.emplace_back(offset, len);
          break;
        }
        case 2:
          ASSERT_EQ(RunSync(nullptr, plf.WriteZeroes(offset, len)), 0);
          std::memset(live_model.data() + offset, 0, len);
          dirty.emplace_back(offset, len);
          break;
        case 3:
          ASSERT_EQ(RunSync(nullptr, plf.Flush()), 0);
          for (auto [o, n] : dirty) std::memcpy(durable_model.data() + o, live_model.data() + o, n);
          dirty.clear();
          break;
      }
    }
    ASSERT_EQ(mem.data(), live_model);
    ASSERT_TRUE(plf.Crash() == durable_model);
  }
}

// Queue threads share one PowerLossFile: writes and flushes from two
// threads while a third takes crash images; each crash image holds every
// write whole or not at all, and after a final flush the durable image is
// the live one.
TEST(PowerLossFileTest, SharedBetweenThreads) {
  MemFile base(MemFile::Mode::kImmediate, std::vector<std::byte>(1 << 16));
  PowerLossFile power(&base, base.data());
  std::atomic<bool> done{false};
  auto writer = [&](int t) {
    for (int i = 0; i < 2000; ++i) {
      // Thread t owns the 4 KiB blocks of its parity; each write fills one
      // block with one value.
      std::vector<std::byte> buf(4096, std::byte{static_cast<uint8_t>(1 + (i % 200))});
      uint64_t block = (static_cast<uint64_t>(i) * 7 % 8) * 2 + static_cast<uint64_t>(t);
      iovec v{buf.data(), buf.size()};
      ASSERT_EQ(RunSync(nullptr, power.WriteV(block * 4096, std::span<const iovec>(&v, 1))), 4096);
      if (i % 50 == 0) {
        ASSERT_EQ(RunSync(nullptr, power.Flush()), 0);
      }
    }
  };
  std::thread crasher([&] {
    std::mt19937_64 rng(1);
    while (!done) {
      std::vector<std::byte> image = (rng() % 2) ? power.Crash() : power.CrashRandomSubset(rng);
      for (size_t block = 0; block < image.size() / 4096; ++block) {
        for (size_t b = 1; b < 4096; ++b) {
          ASSERT_EQ(image[block * 4096 + b], image[block * 4096]) << "torn block " << block;
        }
      }
    }
  });
  std::thread a(writer, 0), b(writer, 1);
  a.join();
  b.join();
  done = true;
  crasher.join();
  ASSERT_EQ(RunSync(nullptr, power.Flush()), 0);
  EXPECT_EQ(power.Crash(), base.data());
  EXPECT_EQ(power.unflushed_count(), 0u);
}

}  // namespace
}  // namespace uq::io
