// The threads of a threaded simulation run (ThreadedSimulation::RunThreads):
// each runs its own executor (WorkerMain) and issues random requests, unless
// they overlap a request in flight where either mutates (the shared registry,
// Register, or in partitioned mode the thread's own list), updating the
// model before the request starts (TryIssue); the requests run against the
// engine and reads are checked with the model (RunOp).
#include <gtest/gtest.h>
#include <sys/uio.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <latch>
#include <list>
#include <mutex>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "src/engine/qcow2_image.h"
#include "src/io/executor.h"
#include "src/io/task.h"
#include "tests/engine/test_util.h"
#include "tests/engine/thread_util.h"
#include "tests/engine/threaded_simulation_util.h"

namespace uq::engine::testing {

void ThreadedSimulation::FillRandom(std::mt19937_64& rng, std::span<std::byte> buf) {
  // Mix of random bytes, repeated bytes (compressible) and zeros.
  uint64_t pos = 0;
  while (pos < buf.size()) {
    uint64_t run = std::min<uint64_t>(buf.size() - pos, 512 * (1 + rng() % 16));
    switch (rng() % 4) {
      case 0:
        std::memset(buf.data() + pos, static_cast<int>(rng() & 0xff), run);
        break;
      case 1:
        std::memset(buf.data() + pos, 0, run);
        break;
      default:
        for (uint64_t i = 0; i < run; i += 8) {
          uint64_t v = rng();
          std::memcpy(buf.data() + pos + i, &v, std::min<uint64_t>(8, run - i));
        }
    }
    pos += run;
  }
}

bool ThreadedSimulation::Register(uint64_t b, uint64_t e, bool mutates,
                                  std::list<InFlight>::iterator* it) {
  std::lock_guard<std::mutex> g(registry_mu_);
  for (const InFlight& f : inflight_) {
    if (b < f.end && f.begin < e && (mutates || f.mutates)) return false;
  }
  inflight_.push_front({b, e, mutates});
  *it = inflight_.begin();
  peak_inflight_ = std::max<uint64_t>(peak_inflight_, ++inflight_count_);
  return true;
}

void ThreadedSimulation::Fail(const std::string& what) {
  ADD_FAILURE() << what;
  failures_.fetch_add(1);
}

Task<void> ThreadedSimulation::RunOp(Worker* w, OpType type, uint64_t off, uint64_t len,
                                     std::list<InFlight>::iterator it, std::vector<std::byte> buf) {
  int r = 0;
  switch (type) {
    case OpType::kRead: {
      // Two iovecs when possible: exercises the iovec slicing.
      const uint64_t first = len >= 1024 ? len / 2 / 512 * 512 : len;
      iovec v[2] = {{buf.data(), first}, {buf.data() + first, len - first}};
      r = co_await dev_->Read(off, std::span<const iovec>(v, first == len ? 1 : 2));
      // No mutation of this range is in flight: the model is stable here.
      if (r == 0 && std::memcmp(buf.data(), model_.data() + off, len) != 0) {
        uint64_t i = 0;
        while (buf[i] == model_[off + i]) ++i;
        Fail("thread " + std::to_string(w->index) + ": read [" + std::to_string(off) + ", +" +
             std::to_string(len) + ") differs from the model at offset " + std::to_string(off + i));
      }
      break;
    }
    case OpType::kWrite: {
      iovec v{buf.data(), len};
      r = co_await dev_->Write(off, std::span<const iovec>(&v, 1), w->rng() % 20 == 0);
      break;
    }
    case OpType::kCompressed:
      r = co_await static_cast<Qcow2Image*>(dev_.get())->WriteCompressed(off, buf);
      break;
    case OpType::kDiscard:
      r = co_await dev_->Discard(off, len);
      break;
    case OpType::kZeroes:
    case OpType::kZeroesUnmap:
      r = co_await dev_->WriteZeroes(off, len, type == OpType::kZeroesUnmap);
      break;
    case OpType::kFlush:
      r = co_await dev_->Flush();
      break;
  }
  if (r != 0) {
    Fail("thread " + std::to_string(w->index) + ": op type " +
         std::to_string(static_cast<int>(type)) + " [" + std::to_string(off) + ", +" +
         std::to_string(len) + ") failed: " + std::to_string(r));
  }
  if (c_.stripe_bytes > 0) {
    w->local.erase(it);
  } else {
    std::lock_guard<std::mutex> g(registry_mu_);
    inflight_.erase(it);
    --inflight_count_;
  }
  --w->inflight;
  progress_.fetch_add(1, std::memory_order_relaxed);
}

bool ThreadedSimulation::TryIssue(Worker* w) {
  std::mt19937_64& rng = w->rng;
  const uint64_t cs = cluster_bytes();
  uint32_t roll = rng() % 100;
  OpType type = roll < 36   ? OpType::kRead
                : roll < 72 ? OpType::kWrite
                : roll < 80 ? OpType::kZeroes
                : roll < 86 ? OpType::kZeroesUnmap
                : roll < 92 ? OpType::kDiscard
                : roll < 95 ? OpType::kFlush
                            : OpType::kCompressed;
  uint64_t off = 0;
  uint64_t len = 0;
  if (c_.stripe_bytes > 0) {
    if (type == OpType::kCompressed && c_.stripe_bytes % cs != 0) type = OpType::kWrite;
    // One of this thread's stripes.
    const uint64_t sb = c_.stripe_bytes;
    const uint64_t stripes = (c_.size_bytes + sb - 1) / sb;
    const uint64_t own = (stripes - w->index + threads_ - 1) / threads_;
    const uint64_t base = (rng() % own * threads_ + w->index) * sb;
    const uint64_t end = std::min(base + sb, c_.size_bytes);
    if (type == OpType::kCompressed) {
      off = base + rng() % ((end - base + cs - 1) / cs) * cs;
      len = std::min(cs, end - off);
    } else if (type != OpType::kFlush) {
      off = base + rng() % ((end - base) / 512) * 512;
      len = (1 + rng() % ((end - off) / 512)) * 512;
      len = std::min(len, c_.max_io_bytes);
    }
  } else if (type == OpType::kCompressed) {
    const uint64_t clusters = c_.hot_clusters ? c_.hot_clusters : (c_.size_bytes + cs - 1) / cs;
    off = rng() % clusters * cs;
    len = std::min(cs, c_.size_bytes - off);
  } else if (type != OpType::kFlush && c_.hot_clusters > 0) {
    const uint64_t hot_bytes = std::min(c_.size_bytes, c_.hot_clusters * cs);
    const uint64_t sub = c_.extended_l2 ? cs / 32 : std::min<uint64_t>(cs, 4096);
    off = rng() % (hot_bytes / 512) * 512;
    len = (1 + rng() % std::max<uint64_t>(1, 2 * sub / 512)) * 512;
    len = std::min(len, hot_bytes - off);
  } else if (type != OpType::kFlush) {
    // A small hot set of clusters makes concurrent ops share clusters.
    if (rng() % 3 == 0) {
      off = (rng() % 4) * cs + (rng() % (cs / 512)) * 512;
      off = std::min(off, c_.size_bytes - 512);
    } else {
      off = rng() % (c_.size_bytes / 512) * 512;
    }
    const uint64_t max_len = std::min<uint64_t>(c_.max_io_bytes, 4 * cs);
    len = (1 + rng() % (max_len / 512)) * 512;
    if (rng() % 4 == 0) len = std::min<uint64_t>(len, 4096);
    len = std::min(len, c_.size_bytes - off);
  }
  const bool mutates = type != OpType::kRead && type != OpType::kFlush;
  std::list<InFlight>::iterator it;
  if (c_.stripe_bytes > 0) {
    for (const InFlight& f : w->local) {
      if (off < f.end && f.begin < off + len && (mutates || f.mutates)) return false;
    }
    w->local.push_front({off, off + len, mutates});
    it = w->local.begin();
  } else if (!Register(off, off + len, mutates, &it)) {
    return false;
  }
  // The range is ours: update the model before the request starts, as the
  // single-threaded simulation does.
  std::vector<std::byte> buf;
  switch (type) {
    case OpType::kRead:
      buf.resize(len);
      break;
    case OpType::kWrite:
    case OpType::kCompressed:
      buf.resize(len);
      FillRandom(rng, buf);
      std::memcpy(model_.data() + off, buf.data(), len);
      break;
    case OpType::kDiscard: {
      auto [zb, ze] = testing::DiscardedZeroRange(off, len, cs, c_.size_bytes);
      std::memset(model_.data() + zb, 0, ze - zb);
      break;
    }
    case OpType::kZeroes:
    case OpType::kZeroesUnmap:
      std::memset(model_.data() + off, 0, len);
      break;
    case OpType::kFlush:
      break;
  }
  ++w->inflight;
  Spawn(RunOp(w, type, off, len, it, std::move(buf)));
  return true;
}

void ThreadedSimulation::WorkerMain(Worker* w, uint64_t ops, std::latch* start) {
  testing::ThreadExecutor exec(w->rng());
  io::Executor::SetCurrent(&exec);
  start->arrive_and_wait();  // all threads start together, so their requests overlap in time
  uint64_t issued = 0;
  uint64_t last_progress = progress_.load();
  auto last_change = std::chrono::steady_clock::now();
  while (issued < ops || w->inflight > 0) {
    if (failures_.load() > 5) issued = ops;  // stop issuing, drain what is in flight
    exec.RunPosted();
    const bool can_issue = issued < ops && w->inflight < c_.max_inflight;
    if (can_issue && (w->rng() % 2 == 0 || w->inflight == 0)) {
      if (TryIssue(w)) {
        ++issued;
        continue;
      }
    }
    if (exec.WaitForPost(std::chrono::microseconds(can_issue ? 50 : 2000))) continue;
    // Nothing to run here: a hang if no thread has made progress for long.
    const uint64_t p = progress_.load();
    const auto now = std::chrono::steady_clock::now();
    if (p != last_progress) {
      last_progress = p;
      last_change = now;
    } else if (w->inflight > 0 && now - last_change > std::chrono::seconds(60)) {
      std::fprintf(stderr,
                   "threaded simulation: seed %llu, thread %d: %u requests parked and no "
                   "progress for 60 s (hang)\n",
                   static_cast<unsigned long long>(c_.seed), w->index, w->inflight);
      std::abort();  // parked coroutines cannot be unwound
    }
  }
  io::Executor::SetCurrent(nullptr);
  cross_thread_wakeups_.fetch_add(exec.foreign_posts());
}

void ThreadedSimulation::RunThreads(uint64_t ops, uint64_t phase) {
  std::vector<Worker> workers(threads_);
  std::vector<std::thread> threads;
  for (int i = 0; i < threads_; ++i) {
    workers[i].index = i;
    workers[i].rng.seed(c_.seed * 1000003 + phase * 101 + static_cast<uint64_t>(i));
  }
  const uint64_t per_thread = (ops + threads_ - 1) / threads_;
  std::latch start(threads_);
  for (int i = 0; i < threads_; ++i) {
    threads.emplace_back(
        [this, w = &workers[i], per_thread, &start] { WorkerMain(w, per_thread, &start); });
  }
  for (std::thread& t : threads) t.join();
  std::printf("  phase %llu: %llu cross-thread wake-ups, peak %llu requests in flight\n",
              static_cast<unsigned long long>(phase),
              static_cast<unsigned long long>(cross_thread_wakeups_.exchange(0)),
              static_cast<unsigned long long>(std::exchange(peak_inflight_, 0)));
  EXPECT_TRUE(inflight_.empty());
  ASSERT_EQ(failures_.load(), 0u);
}

}  // namespace uq::engine::testing
