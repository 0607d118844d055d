// The engine's hot path allocates nothing once warm: 10,000 random 4 KiB
// reads and overwrites of allocated clusters (COPIED, every subcluster
// allocated), 32 in flight at a time, through the Device API on an in-memory
// file whose completions come back in random order.
#include <gtest/gtest.h>

#include <memory>
#include <random>
#include <vector>

#include "src/io/join.h"
#include "src/io/run_sync.h"
#include "tests/alloc_counter.h"
#include "tests/engine/test_util.h"

namespace uq::engine {
namespace {

using uq::testing::AllocationCounter;

constexpr int kDepth = 32;
constexpr int kRequests = 10'000;
constexpr uint64_t kBlock = 4096;
constexpr uint64_t kImageBytes = 8 << 20;

enum class Mix { kReads, kWrites, kBoth };

struct Workload {
  Device* device = nullptr;
  Mix mix = Mix::kBoth;
  std::mt19937_64 rng{3};
  int remaining = 0;
  uint64_t reads = 0;
  uint64_t writes = 0;
  std::byte buffers[kDepth][kBlock];
};

Task<int> Worker(Workload* w, int slot) {
  while (w->remaining > 0) {
    --w->remaining;
    const uint64_t offset = w->rng() % (kImageBytes / kBlock) * kBlock;
    iovec v{w->buffers[slot], kBlock};
    int r;
    const bool write = w->mix == Mix::kBoth ? (w->rng() & 1) != 0 : w->mix == Mix::kWrites;
    if (write) {
      ++w->writes;
      r = co_await w->device->Write(offset, std::span<const iovec>(&v, 1), false);
    } else {
      ++w->reads;
      r = co_await w->device->Read(offset, std::span<const iovec>(&v, 1));
    }
    if (r < 0) co_return r;
  }
  co_return 0;
}

Task<int> RunAtDepth(Workload* w, int requests, Mix mix = Mix::kBoth) {
  w->remaining = requests;
  w->mix = mix;
  io::Join join;
  for (int slot = 0; slot < kDepth; ++slot) join.Start(Worker(w, slot));
  co_return co_await join.Wait();
}

class EngineHotPathAllocTest : public ::testing::TestWithParam<bool> {};

TEST_P(EngineHotPathAllocTest, ReadsAndOverwritesOfAllocatedClustersAllocateNothing) {
  format::CreateOptions o;
  o.size_bytes = kImageBytes;
  o.extended_l2 = GetParam();
  auto file = testing::MakeImage(o);
  ASSERT_NE(file, nullptr);
  auto d = testing::OpenSync(file.get(), {});
  ASSERT_TRUE(d.ok()) << d.status();
  Device& device = **d;
  // Allocate every cluster, then flush: from here on every request is a
  // read or a COPIED overwrite.
  std::vector<std::byte> fill(1 << 20, std::byte{0x3c});
  for (uint64_t off = 0; off < kImageBytes; off += fill.size()) {
    ASSERT_EQ(testing::WriteSync(device, off, fill), 0);
  }
  ASSERT_EQ(io::RunSync(nullptr, device.Flush()), 0);

  file->set_mode(io::MemFile::Mode::kDeferred);
  std::mt19937_64 order(5);
  auto pump = [&] { return file->RunRandomOne(order) > 0; };
  auto w = std::make_unique<Workload>();
  w->device = &device;
  // Warm (src/io/frame_pool.h): each request kind at full depth, so every
  // frame size's pool holds as many frames as will be live at once.
  for (Mix mix : {Mix::kReads, Mix::kWrites, Mix::kBoth}) {
    ASSERT_EQ(io::RunSyncPumping(pump, RunAtDepth(w.get(), 3000, mix)), 0);
  }
  file->ResetCounters();
  w->reads = w->writes = 0;

  AllocationCounter allocs;
  const int r = io::RunSyncPumping(pump, RunAtDepth(w.get(), kRequests));
  const uint64_t n = allocs.count();
  ASSERT_EQ(r, 0);
  EXPECT_EQ(n, 0u) << allocs.Describe();
  // One data I/O per request and nothing else (no metadata read or written).
  EXPECT_EQ(file->counters().reads, w->reads);
  EXPECT_EQ(file->counters().writes, w->writes);
  file->set_mode(io::MemFile::Mode::kImmediate);
  ASSERT_TRUE(io::RunSync(nullptr, device.Close()).ok());
}

INSTANTIATE_TEST_SUITE_P(L2, EngineHotPathAllocTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "ExtendedL2" : "StandardL2";
                         });

}  // namespace
}  // namespace uq::engine
