// Power loss with real threads: 2 or 4 std::threads (each with its own
// executor, as a ublk queue thread has its event loop) write, zero, discard,
// read and flush concurrently through ONE engine on a PowerLossFile over an
// immediate-mode MemFile; every file operation yields to the issuing
// thread's run queue, so each thread keeps several requests in flight. After
// a random number of completed requests the power goes (the thread that
// completes that request takes the crash image: every file write not covered
// by a completed flush dropped, or a random subset of them kept), the live
// engine drains and closes, and the crashed image must
//   - have zero corruptions by CheckImage (leaks are allowed) unless it is a
//     dirty lazy-refcount image, which is checked after the engine repaired it,
//   - reopen, and read back every sector written by a request that completed
//     before some flush, issued on any thread, was issued and then completed
//     before the crash (sectors of requests in flight at that flush's issue,
//     or issued since, are uncertain),
//   - check clean of corruptions again after that reopen and a close.
// No two requests in flight overlap (a shared registry), so completion order
// is the model's only ordering.
//
// Environment: UQ_POWER_THREADED_SEEDS (default 150, 25 under TSan), UQ_POWER_BASE_SEED
// (default random, printed), UQ_POWER_SEED=<n> runs only seed n. Thread
// interleavings are not reproducible: rerun a failing seed a few times.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <latch>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "format/create.h"
#include "format/header.h"
#include "src/engine/check.h"
#include "src/engine/image.h"
#include "src/io/mem_file.h"
#include "src/io/power_loss_file.h"
#include "src/io/run_sync.h"
#include "tests/engine/test_util.h"
#include "tests/engine/thread_util.h"

#if defined(__SANITIZE_THREAD__)
#define UQ_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define UQ_TSAN 1
#endif
#endif

namespace uq::engine {
namespace {

constexpr uint64_t kSector = 512;
#ifdef UQ_TSAN
constexpr uint64_t kDefaultSeeds = 25;  // TSan runs ~10x slower
#else
constexpr uint64_t kDefaultSeeds = 150;
#endif

struct Config {
  format::CreateOptions create;
  uint64_t l2_cache_bytes = 0;
  int threads = 2;
  uint32_t depth = 1;        // per thread
  uint64_t crash_after = 1;  // completed requests
  bool random_subset = false;
};

std::string Describe(const Config& c) {
  return absl::StrCat(
      "threads=", c.threads, " cluster_bits=", c.create.cluster_bits,
      " refcount_order=", c.create.refcount_order, " extended_l2=", c.create.extended_l2,
      " lazy_refcounts=", c.create.lazy_refcounts, " size=", c.create.size_bytes,
      " l2_cache=", c.l2_cache_bytes, " depth=", c.depth, " crash_after=", c.crash_after,
      " crash=", c.random_subset ? "random-subset" : "drop-unflushed");
}

Config RandomConfig(uint64_t seed) {
  std::mt19937_64 rng(seed);
  auto pick = [&](uint64_t n) { return rng() % n; };
  Config c;
  static constexpr uint32_t kClusterBits[] = {9, 12, 14, 16};
  c.create.cluster_bits = kClusterBits[pick(4)];
  c.create.lazy_refcounts = pick(2) == 0;
  c.create.extended_l2 = c.create.cluster_bits >= 14 && pick(3) == 0;
  c.create.refcount_order = static_cast<uint32_t>(pick(7));
  c.create.size_bytes = (1 + pick(4)) << 20;  // 1..4 MiB
  static constexpr uint64_t kL2Cache[] = {0, 1, 16384};
  c.l2_cache_bytes = kL2Cache[pick(3)];
  c.threads = pick(2) == 0 ? 2 : 4;
  c.depth = 1 + static_cast<uint32_t>(pick(6));
  c.crash_after = 1 + pick(400);
  c.random_subset = pick(2) == 0;
  return c;
}

// What the seeds covered (printed at the end, so a weak run is visible).
struct Coverage {
  uint64_t seeds = 0;
  uint64_t requests = 0;
  uint64_t with_applied_flush = 0;
  uint64_t dirty_at_crash = 0;
  uint64_t sectors_verified = 0;
};
Coverage coverage;

struct Op {
  enum Kind { kWrite, kZeroes, kDiscard, kRead, kFlush } kind;
  uint64_t first_sector = 0;
  uint64_t sectors = 0;
  uint8_t value = 0;  // kWrite: the pattern byte
  bool may_unmap = false;
  std::vector<std::byte> buf;
  uint64_t flush_seq = 0;  // kFlush: issue order among flushes
};

class ThreadedPowerLossRun {
 public:
  ThreadedPowerLossRun(uint64_t seed, Config config) : seed_(seed), config_(std::move(config)) {}
  void Run();

 private:
  struct Worker {
    int index = 0;
    std::mt19937_64 rng;
    uint32_t inflight = 0;
  };
  // A flush in flight: the model as of its issue.
  struct PendingFlush {
    uint64_t seq;
    std::vector<uint8_t> snapshot;
    std::vector<bool> uncertain;
  };

  uint64_t Uniform(std::mt19937_64& rng, uint64_t lo, uint64_t hi) {
    return std::uniform_int_distribution<uint64_t>(lo, hi)(rng);
  }
  bool OverlapsLocked(uint64_t first, uint64_t count) const;
  bool TryIssue(Worker* w);
  void Complete(Op* op, int result);
  Task<void> Drive(Worker* w, Op* op);
  void WorkerMain(Worker* w, std::latch* start);
  void CheckCrashedImage();

  uint64_t seed_;
  Config config_;
  uint64_t sectors_ = 0;
  std::unique_ptr<io::MemFile> base_;
  std::unique_ptr<io::PowerLossFile> power_;
  std::unique_ptr<Device> device_;

  // Model, one byte per sector, all guarded by mu_. current_: as of the
  // completed requests. durable_/uncertain_: as of the latest-issued flush
  // that completed before the crash.
  std::mutex mu_;
  std::list<Op> ops_;  // in flight (stable addresses)
  std::vector<uint8_t> current_;
  std::vector<uint8_t> durable_;
  std::vector<bool> uncertain_;
  std::list<PendingFlush> flushes_;
  uint64_t next_flush_seq_ = 1;
  uint64_t applied_flush_seq_ = 0;
  uint64_t completed_ = 0;
  bool crashed_ = false;
  std::vector<std::byte> crashed_image_;
  std::mt19937_64 crash_rng_;
  std::atomic<bool> stop_{false};
  std::atomic<int> failures_{0};
};

bool ThreadedPowerLossRun::OverlapsLocked(uint64_t first, uint64_t count) const {
  for (const Op& op : ops_) {
    if (op.kind == Op::kFlush) continue;
    if (first < op.first_sector + op.sectors && op.first_sector < first + count) return true;
  }
  return false;
}

bool ThreadedPowerLossRun::TryIssue(Worker* w) {
  std::mt19937_64& rng = w->rng;
  const uint64_t kind = Uniform(rng, 0, 99);
  Op op;
  if (kind < 8) {
    op.kind = Op::kFlush;
  } else {
    const uint64_t cluster_sectors = (uint64_t{1} << config_.create.cluster_bits) / kSector;
    const uint64_t max_sectors =
        std::min<uint64_t>(sectors_, std::max<uint64_t>(4 * cluster_sectors, 64));
    uint64_t count = Uniform(rng, 1, max_sectors);
    uint64_t first = Uniform(rng, 0, sectors_ - count);
    if (Uniform(rng, 0, 2) == 0) first = first / cluster_sectors * cluster_sectors;
    count = std::min(count, sectors_ - first);
    op.first_sector = first;
    op.sectors = count;
    if (kind < 50) {
      op.kind = Op::kWrite;
      op.value = static_cast<uint8_t>(Uniform(rng, 1, 255));
      op.buf.assign(count * kSector, std::byte{op.value});
    } else if (kind < 65) {
      op.kind = Op::kZeroes;
      op.may_unmap = Uniform(rng, 0, 1) == 1;
    } else if (kind < 78) {
      op.kind = Op::kDiscard;
    } else {
      op.kind = Op::kRead;
      op.buf.assign(count * kSector, std::byte{0xee});
    }
  }
  Op* p;
  {
    std::lock_guard<std::mutex> g(mu_);
    if (op.kind != Op::kFlush && OverlapsLocked(op.first_sector, op.sectors)) return false;
    ops_.push_back(std::move(op));
    p = &ops_.back();
    if (p->kind == Op::kFlush) {
      PendingFlush f{next_flush_seq_++, current_, std::vector<bool>(sectors_, false)};
      p->flush_seq = f.seq;
      for (const Op& o : ops_) {
        if (o.kind == Op::kFlush || o.kind == Op::kRead) continue;
        std::fill_n(f.uncertain.begin() + o.first_sector, o.sectors, true);
      }
      flushes_.push_back(std::move(f));
    } else if (p->kind != Op::kRead) {
      // Not covered by any flush yet, nor by those in flight.
      std::fill_n(uncertain_.begin() + p->first_sector, p->sectors, true);
      for (PendingFlush& f : flushes_) {
        std::fill_n(f.uncertain.begin() + p->first_sector, p->sectors, true);
      }
    }
  }
  ++w->inflight;
  Spawn(Drive(w, p));
  return true;
}

Task<void> ThreadedPowerLossRun::Drive(Worker* w, Op* op) {
  iovec v{op->buf.data(), op->buf.size()};
  std::span<const iovec> iov(&v, 1);
  const uint64_t offset = op->first_sector * kSector;
  const uint64_t length = op->sectors * kSector;
  int r = 0;
  switch (op->kind) {
    case Op::kWrite:
      r = co_await device_->Write(offset, iov, /*fua=*/w->rng() % 16 == 0);
      break;
    case Op::kZeroes:
      r = co_await device_->WriteZeroes(offset, length, op->may_unmap);
      break;
    case Op::kDiscard:
      r = co_await device_->Discard(offset, length);
      break;
    case Op::kRead:
      r = co_await device_->Read(offset, iov);
      break;
    case Op::kFlush:
      r = co_await device_->Flush();
      break;
  }
  Complete(op, r);
  --w->inflight;
}

void ThreadedPowerLossRun::Complete(Op* op, int result) {
  std::lock_guard<std::mutex> g(mu_);
  if (result < 0) {
    ADD_FAILURE() << "request kind " << op->kind << " at sector " << op->first_sector << "+"
                  << op->sectors << " failed: " << std::strerror(-result);
    ++failures_;
  }
  switch (op->kind) {
    case Op::kWrite:
      std::fill_n(current_.begin() + op->first_sector, op->sectors, op->value);
      break;
    case Op::kZeroes:
      std::fill_n(current_.begin() + op->first_sector, op->sectors, 0);
      break;
    case Op::kDiscard: {
      auto [zb, ze] = testing::DiscardedZeroRange(op->first_sector * kSector, op->sectors * kSector,
                                                  uint64_t{1} << config_.create.cluster_bits,
                                                  sectors_ * kSector);
      std::fill(current_.begin() + zb / kSector, current_.begin() + ze / kSector, 0);
      break;
    }
    case Op::kRead:
      for (uint64_t s = 0; s < op->sectors && failures_ < 5; ++s) {
        const uint8_t want = current_[op->first_sector + s];
        for (uint64_t b = 0; b < kSector; ++b) {
          const uint8_t got = static_cast<uint8_t>(op->buf[s * kSector + b]);
          if (got != want) {
            ADD_FAILURE() << "live read: sector " << op->first_sector + s << " byte " << b << " is "
                          << int(got) << ", model says " << int(want);
            ++failures_;
            break;
          }
        }
      }
      break;
    case Op::kFlush: {
      auto it = std::find_if(flushes_.begin(), flushes_.end(),
                             [&](const PendingFlush& f) { return f.seq == op->flush_seq; });
      // A flush completing after the power cut covers nothing in the crashed
      // image; one issued before an already applied flush adds nothing.
      if (result == 0 && !crashed_ && it->seq > applied_flush_seq_) {
        applied_flush_seq_ = it->seq;
        durable_ = std::move(it->snapshot);
        uncertain_ = std::move(it->uncertain);
      }
      flushes_.erase(it);
      break;
    }
  }
  ops_.remove_if([op](const Op& o) { return &o == op; });
  if (++completed_ == config_.crash_after && !crashed_) {
    crashed_ = true;
    crashed_image_ =
        config_.random_subset ? power_->CrashRandomSubset(crash_rng_) : power_->Crash();
    stop_ = true;
  }
}

void ThreadedPowerLossRun::WorkerMain(Worker* w, std::latch* start) {
  testing::ThreadExecutor exec(w->rng());
  io::Executor::SetCurrent(&exec);
  start->arrive_and_wait();
  auto last_progress = std::chrono::steady_clock::now();
  while (!(stop_ || failures_ > 0) || w->inflight > 0) {
    if (exec.RunPosted() > 0) last_progress = std::chrono::steady_clock::now();
    const bool can_issue = !(stop_ || failures_ > 0) && w->inflight < config_.depth;
    if (can_issue && (w->rng() % 2 == 0 || w->inflight == 0) && TryIssue(w)) continue;
    if (exec.WaitForPost(std::chrono::microseconds(can_issue ? 50 : 2000))) continue;
    if (w->inflight > 0 &&
        std::chrono::steady_clock::now() - last_progress > std::chrono::seconds(60)) {
      std::fprintf(stderr, "threaded power loss: seed %llu thread %d: hang\n",
                   static_cast<unsigned long long>(seed_), w->index);
      std::abort();  // parked coroutines cannot be unwound
    }
  }
  io::Executor::SetCurrent(nullptr);
}

void ThreadedPowerLossRun::Run() {
  sectors_ = config_.create.size_bytes / kSector;
  current_.assign(sectors_, 0);
  durable_ = current_;
  uncertain_.assign(sectors_, false);
  crash_rng_.seed(seed_ ^ 0x9e3779b97f4a7c15ull);
  base_ = testing::MakeImage(config_.create);
  ASSERT_NE(base_, nullptr);
  power_ = std::make_unique<io::PowerLossFile>(base_.get(), base_->data());

  OpenOptions options;
  options.l2_cache_bytes = config_.l2_cache_bytes;
  options.opener = [](const std::string& path,
                      bool) -> absl::StatusOr<std::unique_ptr<io::BlockFile>> {
    return absl::NotFoundError(path);
  };
  auto opened =
      io::RunSync(nullptr, OpenImage(std::make_unique<testing::YieldFile>(power_.get()), options));
  ASSERT_TRUE(opened.ok()) << opened.status();
  device_ = std::move(*opened);

  std::vector<Worker> workers(config_.threads);
  std::vector<std::thread> threads;
  std::latch start(config_.threads);
  for (int i = 0; i < config_.threads; ++i) {
    workers[i].index = i;
    workers[i].rng.seed(seed_ * 1000003 + static_cast<uint64_t>(i));
    threads.emplace_back([this, w = &workers[i], &start] { WorkerMain(w, &start); });
  }
  for (std::thread& t : threads) t.join();
  ASSERT_EQ(failures_.load(), 0);
  ASSERT_TRUE(crashed_);
  ASSERT_TRUE(ops_.empty());

  // The live engine is drained; close it so nothing dangles.
  absl::Status closed = io::RunSync(nullptr, device_->Close());
  EXPECT_TRUE(closed.ok()) << closed;
  device_.reset();
  power_.reset();
  base_.reset();
  CheckCrashedImage();
}

void ThreadedPowerLossRun::CheckCrashedImage() {
  auto header = format::DecodeHeader(crashed_image_, format::DecodeLimits{crashed_image_.size()});
  ASSERT_TRUE(header.ok()) << "crashed image header: " << header.status();
  const bool dirty = (header->incompatible_features & format::kIncompatDirty) != 0;
  ++coverage.seeds;
  coverage.requests += completed_;
  if (applied_flush_seq_ > 0) ++coverage.with_applied_flush;
  if (dirty) ++coverage.dirty_at_crash;
  io::MemFile file(io::MemFile::Mode::kImmediate, std::move(crashed_image_));
  if (!dirty) {
    auto result = io::RunSync(nullptr, CheckImage(file));
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->corruptions, 0u)
        << "crashed image: " << (result->messages.empty() ? "" : result->messages[0]);
  }
  OpenOptions options;
  options.opener = [](const std::string& path,
                      bool) -> absl::StatusOr<std::unique_ptr<io::BlockFile>> {
    return absl::NotFoundError(path);
  };
  auto reopened =
      io::RunSync(nullptr, OpenImage(std::make_unique<testing::BorrowedFile>(&file), options));
  ASSERT_TRUE(reopened.ok()) << "reopen after crash: " << reopened.status();
  std::vector<std::byte> contents(sectors_ * kSector);
  ASSERT_EQ(testing::ReadSync(**reopened, 0, contents), 0);
  int mismatches = 0;
  for (uint64_t s = 0; s < sectors_ && mismatches < 3; ++s) {
    if (uncertain_[s]) continue;
    ++coverage.sectors_verified;
    for (uint64_t b = 0; b < kSector; ++b) {
      const uint8_t got = static_cast<uint8_t>(contents[s * kSector + b]);
      if (got != durable_[s]) {
        ADD_FAILURE() << "after crash: sector " << s << " byte " << b << " is " << int(got)
                      << ", flushed data says " << int(durable_[s]);
        ++mismatches;
        break;
      }
    }
  }
  absl::Status closed = io::RunSync(nullptr, (*reopened)->Close());
  EXPECT_TRUE(closed.ok()) << closed;
  reopened->reset();
  auto after = io::RunSync(nullptr, CheckImage(file));
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->corruptions, 0u)
      << "after reopen and close: " << (after->messages.empty() ? "" : after->messages[0]);
}

TEST(ThreadedPowerLoss, ConcurrentStreamsSurviveCrash) {
  const uint64_t seeds = testing::EnvU64("UQ_POWER_THREADED_SEEDS", kDefaultSeeds);
  const uint64_t base = testing::EnvU64("UQ_POWER_BASE_SEED", std::random_device{}());
  std::optional<uint64_t> only;
  if (std::getenv("UQ_POWER_SEED") != nullptr) only = testing::EnvU64("UQ_POWER_SEED", 0);
  std::printf("threaded power loss: base seed %llu, %llu seeds (rerun one: UQ_POWER_SEED=<seed>)\n",
              static_cast<unsigned long long>(base), static_cast<unsigned long long>(seeds));
  std::fflush(stdout);
  int failed_seeds = 0;
  for (uint64_t i = 0; i < (only ? 1 : seeds); ++i) {
    const uint64_t seed = only ? *only : base + i;
    const Config config = RandomConfig(seed);
    SCOPED_TRACE(absl::StrCat("UQ_POWER_SEED=", seed, " ", Describe(config)));
    const ::testing::TestResult* result =
        ::testing::UnitTest::GetInstance()->current_test_info()->result();
    const int parts_before = result->total_part_count();
    ThreadedPowerLossRun(seed, config).Run();
    if (result->total_part_count() != parts_before) {
      std::printf("threaded power loss: seed %llu FAILED (%s)\n",
                  static_cast<unsigned long long>(seed), Describe(config).c_str());
      if (++failed_seeds >= 3) break;
    }
  }
  std::printf(
      "threaded power loss: %llu seeds, %llu requests completed before the crashes, %llu with "
      "a completed flush, %llu crashed dirty (lazy refcounts), %llu sectors verified\n",
      (unsigned long long)coverage.seeds, (unsigned long long)coverage.requests,
      (unsigned long long)coverage.with_applied_flush, (unsigned long long)coverage.dirty_at_crash,
      (unsigned long long)coverage.sectors_verified);
}

}  // namespace
}  // namespace uq::engine
