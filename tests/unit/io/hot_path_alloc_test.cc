// Issue 7's allocation-free hot path, below the engine: once warm, requests
// through Task awaits, the BlockFile implementations, decorators, Join and
// the RunSync drivers make no heap allocation at all.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <random>
#include <string>

#include "src/io/fault_file.h"
#include "src/io/file_wrapper.h"
#include "src/io/join.h"
#include "src/io/mem_file.h"
#include "src/io/run_sync.h"
#include "src/io/uring_file.h"
#include "tests/alloc_counter.h"

namespace uq::io {
namespace {

using uq::testing::AllocationCounter;

constexpr int kDepth = 32;
constexpr int kRequests = 10'000;
constexpr uint64_t kBlock = 4096;
constexpr uint64_t kFileBlocks = 256;

enum class Mix { kReads, kWrites, kBoth };

// Shared by the workers of one run (one thread).
struct Workload {
  BlockFile* file;
  std::mt19937_64 rng{7};
  int remaining = 0;
  Mix mix = Mix::kBoth;
  std::byte buffers[kDepth][kBlock];
};

// Takes requests until none remain: a 4 KiB read or write at a random block.
Task<int> Worker(Workload* w, int slot) {
  while (w->remaining > 0) {
    --w->remaining;
    const uint64_t offset = (w->rng() % kFileBlocks) * kBlock;
    std::span<std::byte> buf(w->buffers[slot], kBlock);
    int64_t r;
    const bool write = w->mix == Mix::kBoth ? (w->rng() & 1) != 0 : w->mix == Mix::kWrites;
    if (write) {
      r = co_await w->file->Write(offset, buf);
    } else {
      r = co_await w->file->Read(offset, buf);
    }
    if (r != static_cast<int64_t>(kBlock)) co_return r < 0 ? static_cast<int>(r) : -EIO;
  }
  co_return 0;
}

// `requests` requests, kDepth of them in flight at a time.
Task<int> RunAtDepth(Workload* w, int requests, Mix mix = Mix::kBoth) {
  w->remaining = requests;
  w->mix = mix;
  Join join;
  for (int slot = 0; slot < kDepth; ++slot) join.Start(Worker(w, slot));
  co_return co_await join.Wait();
}

class HotPathAllocTest : public ::testing::Test {
 protected:
  HotPathAllocTest() : work_(std::make_unique<Workload>()) {}

  // "Warm" means each thread's frame pool holds as many frames of each size
  // as will ever be live at once: run each request kind at full depth.
  template <typename Drive>
  void WarmUp(Drive drive) {
    for (Mix mix : {Mix::kReads, Mix::kWrites, Mix::kBoth}) {
      ASSERT_EQ(drive(RunAtDepth(work_.get(), 500, mix)), 0);
    }
  }

  std::unique_ptr<Workload> work_;
};

// Deferred MemFile: every request really waits and completions come back in
// random order, so 32 requests are in flight at once.
TEST_F(HotPathAllocTest, DeferredMemFileAtDepth32AllocatesNothingOnceWarm) {
  MemFile mem(MemFile::Mode::kDeferred, std::vector<std::byte>(kFileBlocks * kBlock));
  FileWrapper decorated(&mem);  // one pass-through layer, as the engine's files have
  work_->file = &decorated;
  std::mt19937_64 order(11);
  auto pump = [&] { return mem.RunRandomOne(order); };
  WarmUp([&](Task<int> t) { return RunSyncPumping(pump, std::move(t)); });
  mem.ResetCounters();

  AllocationCounter allocs;
  const int r = RunSyncPumping(pump, RunAtDepth(work_.get(), kRequests));
  const uint64_t n = allocs.count();
  ASSERT_EQ(r, 0);
  EXPECT_EQ(n, 0u) << allocs.Describe();
  EXPECT_EQ(mem.counters().reads + mem.counters().writes, static_cast<uint64_t>(kRequests));
}

// Immediate MemFile through FaultFile (rules that never fire) and RunSync per
// request: the synchronous drivers and the fault layer allocate nothing.
TEST_F(HotPathAllocTest, ImmediateRunSyncThroughFaultFileAllocatesNothingOnceWarm) {
  MemFile mem(MemFile::Mode::kImmediate, std::vector<std::byte>(kFileBlocks * kBlock));
  FaultFile fault(&mem);
  fault.AddRule({.offset_bytes = uint64_t{1} << 40, .length_bytes = 1});  // out of range
  std::byte buf[kBlock] = {};
  auto one = [&](int i) {
    const uint64_t offset = (static_cast<uint64_t>(i) % kFileBlocks) * kBlock;
    return i % 2 ? RunSync(nullptr, fault.Write(offset, buf))
                 : RunSync(nullptr, fault.Read(offset, buf));
  };
  for (int i = 0; i < 100; ++i) ASSERT_EQ(one(i), static_cast<int64_t>(kBlock));

  AllocationCounter allocs;
  bool ok = true;
  for (int i = 0; i < kRequests; ++i) ok = ok && one(i) == static_cast<int64_t>(kBlock);
  const uint64_t n = allocs.count();
  EXPECT_TRUE(ok);
  EXPECT_EQ(n, 0u) << allocs.Describe();
}

// The real thing: io_uring reads and writes of a temporary file.
TEST_F(HotPathAllocTest, UringFileAtDepth32AllocatesNothingOnceWarm) {
  std::string dir = (std::filesystem::temp_directory_path() / "uq_alloc_test.XXXXXX").string();
  ASSERT_NE(mkdtemp(dir.data()), nullptr);
  auto loop = EventLoop::Create(64);
  ASSERT_TRUE(loop.ok()) << loop.status();
  auto file = UringFile::Open(loop->get(), dir + "/file", {.create = true});
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ(RunSync(loop->get(), (*file)->Truncate(kFileBlocks * kBlock)), 0);
  work_->file = file->get();
  WarmUp([&](Task<int> t) { return RunSync(loop->get(), std::move(t)); });

  AllocationCounter allocs;
  const int r = RunSync(loop->get(), RunAtDepth(work_.get(), kRequests));
  const uint64_t n = allocs.count();
  file->reset();
  std::filesystem::remove_all(dir);
  ASSERT_EQ(r, 0);
  EXPECT_EQ(n, 0u) << allocs.Describe();
}

}  // namespace
}  // namespace uq::io
