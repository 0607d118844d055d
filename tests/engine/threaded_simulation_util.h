// The threaded simulation's harness (threaded_simulation_test.cc describes
// the test): the configuration of a run and ThreadedSimulation, which runs
// seeded request streams from several threads against one image and compares
// it with a flat model. Its methods are split by concern:
// threaded_simulation_run.cc creates, reopens, checks and compares the image
// (the phases of a run), and threaded_simulation_workers.cc runs the threads,
// their executors and their random requests.
#ifndef UQ_TESTS_ENGINE_THREADED_SIMULATION_UTIL_H_
#define UQ_TESTS_ENGINE_THREADED_SIMULATION_UTIL_H_

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <latch>
#include <list>
#include <memory>
#include <mutex>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "format/header.h"
#include "src/engine/device.h"
#include "src/engine/image.h"
#include "src/io/block_file.h"
#include "src/io/mem_file.h"
#include "src/io/task.h"
#include "tests/engine/test_util.h"
#include "tests/engine/thread_util.h"

#if defined(__SANITIZE_THREAD__)
#define UQ_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define UQ_TSAN 1
#endif
#endif

namespace uq::engine::testing {

#ifdef UQ_TSAN
constexpr uint64_t kOpsDivisor = 16;  // TSan runs ~10x slower: same shapes, fewer ops
#else
constexpr uint64_t kOpsDivisor = 1;
#endif

enum class BackingKind { kNone, kQcow2, kRaw };

struct ThreadedConfig {
  uint32_t cluster_bits = 16;
  uint32_t refcount_order = 4;
  bool extended_l2 = false;
  BackingKind backing = BackingKind::kNone;
  uint64_t l2_cache_bytes = 0;
  uint64_t refcount_cache_bytes = 0;
  format::CompressionType compression = format::CompressionType::kZlib;
  bool lazy_refcounts = false;
  uint64_t size_bytes = 8 << 20;
  uint64_t ops = 8000;        // in total, shared out between the threads
  uint32_t max_inflight = 8;  // per thread
  uint64_t max_io_bytes = 256 << 10;
  // > 0: every request lies inside the first `hot_clusters` clusters and is at
  // most two subclusters (or 4 KiB) long.
  uint64_t hot_clusters = 0;
  uint64_t seed = 1;
  // > 0: partitioned mode, for ThreadSanitizer. The disk is cut into stripes
  // of this size and thread i only touches stripes s with s % threads == i
  // (each request inside one stripe); a stripe smaller than a cluster puts
  // every thread inside every cluster. The threads then share nothing but
  // the engine: no registry lock, and the image and backing files are
  // UnlockedFiles (no MemFile mutex), so the only happens-before edges TSan
  // sees between threads are the engine's own synchronisation.
  uint64_t stripe_bytes = 0;
};

enum class OpType { kRead, kWrite, kZeroes, kZeroesUnmap, kDiscard, kFlush, kCompressed };

class ThreadedSimulation {
 public:
  ThreadedSimulation(ThreadedConfig c, int threads) : c_(c), threads_(threads) {
    c_.seed = EnvU64("UQ_SIM_SEED", c.seed);
    c_.ops = std::max<uint64_t>(c_.ops * EnvU64("UQ_SIM_SCALE", 1) / kOpsDivisor, 1);
  }

  void Run();

 private:
  struct InFlight {
    uint64_t begin;
    uint64_t end;
    bool mutates;
  };
  // One thread's state; touched only by that thread (its requests resume
  // only there).
  struct Worker {
    int index = 0;
    std::mt19937_64 rng;
    uint32_t inflight = 0;
    std::list<InFlight> local;  // partitioned mode: this thread's requests
  };

  uint64_t cluster_bytes() const { return uint64_t{1} << c_.cluster_bits; }

  static void FillRandom(std::mt19937_64& rng, std::span<std::byte> buf);
  FileOpener Opener();
  void Setup();
  io::BlockFile& image_file() {
    if (unlocked_image_) return *unlocked_image_;
    return *image_;
  }
  void Reopen(bool read_only);
  void CloseAndCheck();
  void CompareAll();
  // Registers [b, e) as in flight unless it overlaps a request in flight on
  // any thread where either mutates.
  bool Register(uint64_t b, uint64_t e, bool mutates, std::list<InFlight>::iterator* it);
  void Fail(const std::string& what);
  Task<void> RunOp(Worker* w, OpType type, uint64_t off, uint64_t len,
                   std::list<InFlight>::iterator it, std::vector<std::byte> buf);
  bool TryIssue(Worker* w);
  void WorkerMain(Worker* w, uint64_t ops, std::latch* start);
  void RunThreads(uint64_t ops, uint64_t phase);

  ThreadedConfig c_;
  int threads_;
  std::unique_ptr<io::MemFile> image_;
  std::unique_ptr<io::MemFile> backing_;
  std::unique_ptr<testing::UnlockedFile> unlocked_image_;    // partitioned mode
  std::unique_ptr<testing::UnlockedFile> unlocked_backing_;  // partitioned mode
  std::string backing_path_;
  std::unique_ptr<Device> dev_;
  // Each byte is touched only by the thread holding its range in inflight_
  // (or, for reads, by threads that all only read it; in partitioned mode,
  // by the thread owning its stripe).
  std::vector<std::byte> model_;
  std::mutex registry_mu_;
  std::list<InFlight> inflight_;  // guarded by registry_mu_
  uint64_t inflight_count_ = 0;   // guarded by registry_mu_
  uint64_t peak_inflight_ = 0;    // guarded by registry_mu_
  std::atomic<uint64_t> cross_thread_wakeups_{0};
  std::atomic<uint64_t> failures_{0};
  std::atomic<uint64_t> progress_{0};  // requests completed, for hang detection
};

}  // namespace uq::engine::testing

#endif  // UQ_TESTS_ENGINE_THREADED_SIMULATION_UTIL_H_
