// The engine simulation with real threads: 2 or 4 std::threads, each with its
// own executor (a run queue standing in for a ublk queue's event loop), issue
// seeded random requests concurrently against ONE Qcow2Image on in-memory
// files, compared with a flat byte-array model. Every file operation yields
// to the issuing thread's run queue (YieldFile), so each thread keeps many
// requests in flight and completes them in random order, while the other
// threads do the same against the same caches, allocator and locks.
//
// The model stays exact because no two requests whose byte ranges overlap
// are in flight at once if either mutates (a shared in-flight registry; reads
// may overlap reads). Requests in one cluster, one L2 slice or one refcount
// block do run concurrently from different threads: that is the point.
// After the threads join, the image is closed and checked (no leaks, no
// corruption), reopened and compared with the model; a second, shorter
// threaded phase runs on the reopened image, then check and compare again.
//
// Thread interleavings are not reproducible from the seed; the seed fixes
// the configuration and every thread's op stream, so a failing seed is worth
// rerunning a few times.
//
// Environment: UQ_SIM_SEED overrides every test's seed; UQ_SIM_SCALE
// multiplies the op counts.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <latch>
#include <list>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "src/engine/check.h"
#include "src/engine/qcow2_image.h"
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

using testing::EnvU64;
using testing::MakeImage;

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

  void Run() {
    SCOPED_TRACE(::testing::Message()
                 << "seed=" << c_.seed << " threads=" << threads_ << " (UQ_SIM_SEED to replay)");
    std::printf(
        "threaded simulation: seed %llu, %d threads, %llu ops (UQ_SIM_SEED / UQ_SIM_SCALE)\n",
        static_cast<unsigned long long>(c_.seed), threads_,
        static_cast<unsigned long long>(c_.ops));
    std::fflush(stdout);
    ASSERT_NO_FATAL_FAILURE(Setup());
    ASSERT_NO_FATAL_FAILURE(RunThreads(c_.ops, 1));
    ASSERT_NO_FATAL_FAILURE(CloseAndCheck());
    ASSERT_NO_FATAL_FAILURE(Reopen(false));
    ASSERT_NO_FATAL_FAILURE(CompareAll());
    // More ops on the reopened image (allocation state rebuilt from disk).
    ASSERT_NO_FATAL_FAILURE(RunThreads(c_.ops / 4 + 1, 2));
    ASSERT_NO_FATAL_FAILURE(CompareAll());
    ASSERT_NO_FATAL_FAILURE(CloseAndCheck());
    ASSERT_NO_FATAL_FAILURE(Reopen(true));
    ASSERT_NO_FATAL_FAILURE(CompareAll());
    ASSERT_TRUE(io::RunSync(nullptr, dev_->Close()).ok());
  }

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

  static void FillRandom(std::mt19937_64& rng, std::span<std::byte> buf) {
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

  FileOpener Opener() {
    return [this](const std::string& path,
                  bool writable) -> absl::StatusOr<std::unique_ptr<io::BlockFile>> {
      if (!backing_ || path != backing_path_) return absl::NotFoundError(path);
      io::BlockFile* f =
          unlocked_backing_ ? static_cast<io::BlockFile*>(unlocked_backing_.get()) : backing_.get();
      return std::make_unique<testing::YieldFile>(
          std::make_unique<testing::BorrowedFile>(f, !writable));
    };
  }

  void Setup() {
    std::mt19937_64 rng(c_.seed);
    const uint64_t backing_size = c_.size_bytes / 4 * 3 - 4096;  // shorter than the overlay
    model_.assign(c_.size_bytes, std::byte{0});
    format::CreateOptions o;
    o.size_bytes = c_.size_bytes;
    o.cluster_bits = c_.cluster_bits;
    o.refcount_order = c_.refcount_order;
    o.extended_l2 = c_.extended_l2;
    o.compression_type = c_.compression;
    o.lazy_refcounts = c_.lazy_refcounts;
    if (c_.backing == BackingKind::kRaw) {
      std::vector<std::byte> bytes(backing_size);
      FillRandom(rng, bytes);
      std::memcpy(model_.data(), bytes.data(), bytes.size());
      backing_ = std::make_unique<io::MemFile>(io::MemFile::Mode::kImmediate, std::move(bytes));
      o.backing_file = "base.raw";
      o.backing_format = "raw";
    } else if (c_.backing == BackingKind::kQcow2) {
      format::CreateOptions bo;
      bo.size_bytes = backing_size;
      bo.cluster_bits = 12;
      backing_ = MakeImage(bo);
      ASSERT_NE(backing_, nullptr);
      auto b = testing::OpenSync(backing_.get(), {});
      ASSERT_TRUE(b.ok()) << b.status();
      for (int i = 0; i < 40; ++i) {
        uint64_t len = (1 + rng() % 64) * 512;
        uint64_t off = rng() % (backing_size / 512) * 512;
        len = std::min(len, backing_size - off);
        std::vector<std::byte> buf(len);
        FillRandom(rng, buf);
        ASSERT_EQ(testing::WriteSync(**b, off, buf), 0);
        std::memcpy(model_.data() + off, buf.data(), len);
      }
      ASSERT_TRUE(io::RunSync(nullptr, (*b)->Close()).ok());
      o.backing_file = "base.qcow2";
      o.backing_format = "qcow2";
    }
    backing_path_ = "/images/" + o.backing_file;
    image_ = MakeImage(o);
    ASSERT_NE(image_, nullptr);
    if (c_.stripe_bytes > 0) {
      const uint64_t capacity = 2 * c_.size_bytes + (16 << 20);
      unlocked_image_ = std::make_unique<testing::UnlockedFile>(image_->data(), capacity);
      if (backing_) {
        unlocked_backing_ =
            std::make_unique<testing::UnlockedFile>(backing_->data(), backing_->data().size());
      }
    }
    ASSERT_NO_FATAL_FAILURE(Reopen(false));
  }

  io::BlockFile& image_file() {
    if (unlocked_image_) return *unlocked_image_;
    return *image_;
  }

  void Reopen(bool read_only) {
    OpenOptions oo;
    oo.path = "/images/disk.qcow2";
    oo.opener = Opener();
    oo.read_only = read_only;
    oo.l2_cache_bytes = c_.l2_cache_bytes;
    oo.refcount_cache_bytes = c_.refcount_cache_bytes;
    auto d = io::RunSync(
        nullptr, OpenImage(std::make_unique<testing::YieldFile>(
                               std::make_unique<testing::BorrowedFile>(&image_file(), read_only)),
                           oo));
    ASSERT_TRUE(d.ok()) << d.status();
    dev_ = std::move(*d);
    ASSERT_EQ(dev_->size_bytes(), c_.size_bytes);
  }

  void CloseAndCheck() {
    absl::Status s = io::RunSync(nullptr, dev_->Close());
    ASSERT_TRUE(s.ok()) << s;
    dev_.reset();
    auto r = io::RunSync(nullptr, CheckImage(image_file()));
    ASSERT_TRUE(r.ok()) << r.status();
    std::string msgs;
    for (const std::string& m : r->messages) msgs += m + "\n";
    EXPECT_EQ(r->corruptions, 0u) << msgs;
    EXPECT_EQ(r->leaks, 0u) << msgs;
  }

  void CompareAll() {
    std::vector<std::byte> buf(c_.size_bytes);
    ASSERT_EQ(testing::ReadSync(*dev_, 0, buf), 0);
    for (uint64_t i = 0; i < c_.size_bytes; i += 512) {
      if (std::memcmp(buf.data() + i, model_.data() + i, 512) != 0) {
        FAIL() << "full read mismatch at offset " << i;
      }
    }
  }

  // Registers [b, e) as in flight unless it overlaps a request in flight on
  // any thread where either mutates.
  bool Register(uint64_t b, uint64_t e, bool mutates, std::list<InFlight>::iterator* it) {
    std::lock_guard<std::mutex> g(registry_mu_);
    for (const InFlight& f : inflight_) {
      if (b < f.end && f.begin < e && (mutates || f.mutates)) return false;
    }
    inflight_.push_front({b, e, mutates});
    *it = inflight_.begin();
    peak_inflight_ = std::max<uint64_t>(peak_inflight_, ++inflight_count_);
    return true;
  }

  void Fail(const std::string& what) {
    ADD_FAILURE() << what;
    failures_.fetch_add(1);
  }

  Task<void> RunOp(Worker* w, OpType type, uint64_t off, uint64_t len,
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
               std::to_string(len) + ") differs from the model at offset " +
               std::to_string(off + i));
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

  bool TryIssue(Worker* w) {
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

  void WorkerMain(Worker* w, uint64_t ops, std::latch* start) {
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

  void RunThreads(uint64_t ops, uint64_t phase) {
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

struct NamedConfig {
  const char* name;
  ThreadedConfig config;
};

const NamedConfig kConfigs[] = {
    {"Cluster64K", {.seed = 201}},
    {"ExtendedL2Cluster64KQcow2Backing",
     {.extended_l2 = true, .backing = BackingKind::kQcow2, .seed = 202}},
    {"ExtendedL2Cluster128KRawBacking",
     {.cluster_bits = 17,
      .extended_l2 = true,
      .backing = BackingKind::kRaw,
      .size_bytes = 16 << 20,
      .seed = 203}},
    {"Cluster4KTinyCachesQcow2Backing",
     {.cluster_bits = 12,
      .refcount_order = 3,
      .backing = BackingKind::kQcow2,
      .l2_cache_bytes = 2 * 4096,
      .refcount_cache_bytes = 2 * 4096,
      .size_bytes = 4 << 20,
      .max_io_bytes = 32 << 10,
      .seed = 204}},
    {"Cluster512TinyCachesRefcount1Bit",
     {.cluster_bits = 9,
      .refcount_order = 0,
      .l2_cache_bytes = 2 * 512,
      .refcount_cache_bytes = 2 * 512,
      .size_bytes = 2 << 20,
      .max_io_bytes = 8192,
      .seed = 205}},
    {"ExtendedL2ZstdTinyCaches",
     {.cluster_bits = 14,
      .extended_l2 = true,
      .l2_cache_bytes = 2 * 4096,
      .refcount_cache_bytes = 2 * 4096,
      .compression = format::CompressionType::kZstd,
      .size_bytes = 4 << 20,
      .seed = 206}},
    {"HotClustersExtendedL2",
     {.extended_l2 = true, .size_bytes = 1 << 20, .hot_clusters = 2, .seed = 207}},
    {"HotClustersExtendedL2Cluster128KQcow2Backing",
     {.cluster_bits = 17,
      .extended_l2 = true,
      .backing = BackingKind::kQcow2,
      .size_bytes = 2 << 20,
      .hot_clusters = 3,
      .seed = 208}},
    {"HotClustersStandardL2RawBacking",
     {.cluster_bits = 14,
      .backing = BackingKind::kRaw,
      .size_bytes = 1 << 20,
      .hot_clusters = 2,
      .seed = 209}},
    // Refcount blocks fill up and the refcount table grows while every
    // thread allocates.
    {"Cluster512Refcount64BitGrowsRefcountTable",
     {.cluster_bits = 9,
      .refcount_order = 6,
      .size_bytes = 6 << 20,
      .max_io_bytes = 64 << 10,
      .seed = 213}},
    // The first write of each thread races to set the dirty bit.
    {"LazyRefcountsQcow2Backing",
     {.cluster_bits = 13,
      .backing = BackingKind::kQcow2,
      .lazy_refcounts = true,
      .size_bytes = 4 << 20,
      .max_io_bytes = 32 << 10,
      .seed = 214}},
    // Partitioned (see stripe_bytes): every thread in every cluster, one
    // subcluster each.
    {"PartitionedSubclustersExtendedL2QcowBacking",
     {.extended_l2 = true,
      .backing = BackingKind::kQcow2,
      .size_bytes = 1 << 20,
      .ops = 40000,
      .seed = 210,
      .stripe_bytes = 2048}},
    {"PartitionedSectorsStandardL2RawBacking",
     {.cluster_bits = 14,
      .backing = BackingKind::kRaw,
      .size_bytes = 1 << 20,
      .ops = 40000,
      .seed = 211,
      .stripe_bytes = 4096}},
    {"PartitionedClustersTinyCaches",
     {.cluster_bits = 12,
      .refcount_order = 3,
      .l2_cache_bytes = 2 * 4096,
      .refcount_cache_bytes = 2 * 4096,
      .size_bytes = 4 << 20,
      .ops = 20000,
      .max_io_bytes = 32 << 10,
      .seed = 212,
      .stripe_bytes = 4 * 4096}},
};

class ThreadedSimulationTest : public ::testing::TestWithParam<std::tuple<size_t, int>> {};

TEST_P(ThreadedSimulationTest, MatchesModel) {
  const auto [config, threads] = GetParam();
  ThreadedConfig c = kConfigs[config].config;
  c.seed += static_cast<uint64_t>(threads) * 100;  // 2 and 4 threads get different streams
  ThreadedSimulation(c, threads).Run();
}

INSTANTIATE_TEST_SUITE_P(All, ThreadedSimulationTest,
                         ::testing::Combine(::testing::Range<size_t>(0, std::size(kConfigs)),
                                            ::testing::Values(2, 4)),
                         [](const ::testing::TestParamInfo<std::tuple<size_t, int>>& info) {
                           return std::string(kConfigs[std::get<0>(info.param)].name) + "_" +
                                  std::to_string(std::get<1>(info.param)) + "Threads";
                         });

}  // namespace
}  // namespace uq::engine
