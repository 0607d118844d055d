// Deterministic simulation of the qcow2 engine (TigerBeetle-style): seeded
// random op streams against the engine on in-memory files, compared with a
// flat byte-array model. Many requests are in flight at once and the file
// operations complete in random order (MemFile deferred mode). After the run
// the image is closed, checked structurally (CheckImage), reopened and
// compared again.
//
// Environment: UQ_SIM_SEED overrides every test's seed; UQ_SIM_SCALE
// multiplies the op counts (soak: UQ_SIM_SCALE=50).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <list>
#include <random>

#include "src/engine/check.h"
#include "src/engine/qcow2_image.h"
#include "tests/engine/test_util.h"

namespace uq::engine {
namespace {

using testing::EnvU64;
using testing::FileSet;
using testing::MakeImage;
using testing::OpenSync;

enum class BackingKind { kNone, kQcow2, kRaw };

struct SimConfig {
  uint32_t cluster_bits = 16;
  uint32_t refcount_order = 4;
  bool extended_l2 = false;
  uint32_t version = 3;
  BackingKind backing = BackingKind::kNone;
  bool backing_format_named = true;
  uint64_t l2_cache_bytes = 0;
  uint64_t refcount_cache_bytes = 0;
  format::CompressionType compression = format::CompressionType::kZlib;
  bool lazy_refcounts = false;
  uint64_t size_bytes = 8 << 20;
  uint64_t ops = 1500;
  uint32_t max_inflight = 24;
  uint64_t max_io_bytes = 256 << 10;
  uint64_t seed = 1;
  // > 0: every file fails misaligned I/O (O_DIRECT) and the engine is told to
  // align (OpenOptions.file_alignment_bytes).
  uint64_t strict_alignment = 0;
  // > 0: every request lies inside the first `hot_clusters` clusters and is at
  // most two subclusters (or 4 KiB) long, so concurrent requests keep meeting
  // inside one cluster and one subcluster.
  uint64_t hot_clusters = 0;
};

enum class OpType { kRead, kWrite, kZeroes, kZeroesUnmap, kDiscard, kFlush, kCompressed };

class Simulation {
 public:
  explicit Simulation(SimConfig c) : c_(c), rng_(c.seed) {
    c_.seed = EnvU64("UQ_SIM_SEED", c.seed);
    rng_.seed(c_.seed);
    c_.ops *= EnvU64("UQ_SIM_SCALE", 1);
  }

  void Run() {
    SCOPED_TRACE(::testing::Message() << "seed=" << c_.seed << " (UQ_SIM_SEED to replay)");
    std::printf("simulation: seed %llu, %llu ops (UQ_SIM_SEED / UQ_SIM_SCALE)\n",
                static_cast<unsigned long long>(c_.seed), static_cast<unsigned long long>(c_.ops));
    ASSERT_NO_FATAL_FAILURE(Setup());
    ASSERT_NO_FATAL_FAILURE(RandomOps());
    ASSERT_NO_FATAL_FAILURE(CloseAndCheck());
    ASSERT_NO_FATAL_FAILURE(Reopen(false));
    ASSERT_NO_FATAL_FAILURE(CompareAll());
    // A few more ops after the reopen (allocation state rebuilt from disk).
    c_.ops = c_.ops / 4 + 1;
    ASSERT_NO_FATAL_FAILURE(RandomOps());
    ASSERT_NO_FATAL_FAILURE(CompareAll());
    if (c_.lazy_refcounts) {
      // Crash with the dirty bit set: drop the device without Close.
      ASSERT_EQ(io::RunSync(nullptr, dev_->Flush()), 0);
      dev_.reset();
      ASSERT_NO_FATAL_FAILURE(Reopen(false));  // repairs the refcounts
      ASSERT_NO_FATAL_FAILURE(CompareAll());
    }
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

  uint64_t cluster_bytes() const { return uint64_t{1} << c_.cluster_bits; }

  void FillRandom(std::span<std::byte> buf) {
    // Mix of random bytes, repeated bytes (compressible) and zeros.
    uint64_t pos = 0;
    while (pos < buf.size()) {
      uint64_t run = std::min<uint64_t>(buf.size() - pos, 512 * (1 + rng_() % 16));
      switch (rng_() % 4) {
        case 0:
          std::memset(buf.data() + pos, static_cast<int>(rng_() & 0xff), run);
          break;
        case 1:
          std::memset(buf.data() + pos, 0, run);
          break;
        default:
          for (uint64_t i = 0; i < run; i += 8) {
            uint64_t v = rng_();
            std::memcpy(buf.data() + pos + i, &v, std::min<uint64_t>(8, run - i));
          }
      }
      pos += run;
    }
  }

  void Setup() {
    const uint64_t backing_size = c_.size_bytes / 4 * 3 - 4096;  // shorter than the overlay
    model_.assign(c_.size_bytes, std::byte{0});
    format::CreateOptions o;
    o.size_bytes = c_.size_bytes;
    o.version = c_.version;
    o.cluster_bits = c_.cluster_bits;
    o.refcount_order = c_.refcount_order;
    o.extended_l2 = c_.extended_l2;
    o.compression_type = c_.compression;
    o.lazy_refcounts = c_.lazy_refcounts;
    if (c_.backing == BackingKind::kRaw) {
      std::vector<std::byte> bytes(backing_size);
      FillRandom(bytes);
      std::memcpy(model_.data(), bytes.data(), bytes.size());
      backing_ = std::make_unique<io::MemFile>(io::MemFile::Mode::kImmediate, std::move(bytes));
      o.backing_file = "base.raw";
      if (c_.backing_format_named) o.backing_format = "raw";
    } else if (c_.backing == BackingKind::kQcow2) {
      format::CreateOptions bo;
      bo.size_bytes = backing_size;
      bo.cluster_bits = 12;
      backing_ = MakeImage(bo);
      ASSERT_NE(backing_, nullptr);
      auto b = OpenSync(backing_.get(), {});
      ASSERT_TRUE(b.ok()) << b.status();
      for (int i = 0; i < 40; ++i) {
        uint64_t len = (1 + rng_() % 64) * 512;
        uint64_t off = rng_() % (backing_size / 512) * 512;
        len = std::min(len, backing_size - off);
        std::vector<std::byte> buf(len);
        FillRandom(buf);
        ASSERT_EQ(testing::WriteSync(**b, off, buf), 0);
        std::memcpy(model_.data() + off, buf.data(), len);
      }
      ASSERT_TRUE(io::RunSync(nullptr, (*b)->Close()).ok());
      o.backing_file = "base.qcow2";
      if (c_.backing_format_named) o.backing_format = "qcow2";
    }
    if (backing_) files_.files["/images/" + o.backing_file] = backing_.get();
    image_ = MakeImage(o);
    ASSERT_NE(image_, nullptr);
    ASSERT_NO_FATAL_FAILURE(Reopen(false));
  }

  void Reopen(bool read_only) {
    OpenOptions oo;
    oo.path = "/images/disk.qcow2";
    oo.opener = files_.Opener();
    oo.read_only = read_only;
    oo.l2_cache_bytes = c_.l2_cache_bytes;
    oo.refcount_cache_bytes = c_.refcount_cache_bytes;
    image_->set_mode(io::MemFile::Mode::kImmediate);
    if (backing_) backing_->set_mode(io::MemFile::Mode::kImmediate);
    absl::StatusOr<std::unique_ptr<Device>> d;
    if (c_.strict_alignment) {
      oo.file_alignment_bytes = static_cast<uint32_t>(c_.strict_alignment);
      files_.strict_alignment = c_.strict_alignment;
      d = io::RunSync(nullptr, OpenImage(std::make_unique<testing::StrictAlignFile>(
                                             std::make_unique<testing::BorrowedFile>(image_.get()),
                                             c_.strict_alignment),
                                         oo));
    } else {
      d = OpenSync(image_.get(), oo);
    }
    ASSERT_TRUE(d.ok()) << d.status();
    dev_ = std::move(*d);
    ASSERT_EQ(dev_->size_bytes(), c_.size_bytes);
  }

  void CloseAndCheck() {
    image_->set_mode(io::MemFile::Mode::kImmediate);
    if (backing_) backing_->set_mode(io::MemFile::Mode::kImmediate);
    absl::Status s = io::RunSync(nullptr, dev_->Close());
    ASSERT_TRUE(s.ok()) << s;
    dev_.reset();
    auto r = io::RunSync(nullptr, CheckImage(*image_));
    ASSERT_TRUE(r.ok()) << r.status();
    std::string msgs;
    for (const std::string& m : r->messages) msgs += m + "\n";
    EXPECT_EQ(r->corruptions, 0u) << msgs;
    EXPECT_EQ(r->leaks, 0u) << msgs;
  }

  void CompareAll() {
    image_->set_mode(io::MemFile::Mode::kImmediate);
    if (backing_) backing_->set_mode(io::MemFile::Mode::kImmediate);
    std::vector<std::byte> buf(c_.size_bytes);
    ASSERT_EQ(testing::ReadSync(*dev_, 0, buf), 0);
    for (uint64_t i = 0; i < c_.size_bytes; i += 512) {
      if (std::memcmp(buf.data() + i, model_.data() + i, 512) != 0) {
        FAIL() << "full read mismatch at offset " << i;
      }
    }
  }

  bool Overlaps(uint64_t b, uint64_t e, bool mutates) const {
    for (const InFlight& f : inflight_) {
      if (b < f.end && f.begin < e && (mutates || f.mutates)) return true;
    }
    return false;
  }

  Task<void> RunOp(OpType type, uint64_t off, uint64_t len, std::list<InFlight>::iterator it,
                   uint64_t op_id) {
    int r = 0;
    std::vector<std::byte> buf;
    switch (type) {
      case OpType::kRead: {
        buf.resize(len);
        // Two iovecs when possible: exercises the iovec slicing.
        const uint64_t first = len >= 1024 ? len / 2 / 512 * 512 : len;
        iovec v[2] = {{buf.data(), first}, {buf.data() + first, len - first}};
        r = co_await dev_->Read(off, std::span<const iovec>(v, first == len ? 1 : 2));
        if (r == 0 && std::memcmp(buf.data(), model_.data() + off, len) != 0) {
          uint64_t i = 0;
          while (buf[i] == model_[off + i]) ++i;
          ADD_FAILURE() << "op " << op_id << ": read [" << off << ", +" << len
                        << ") differs from the model at offset " << off + i;
          ++failures_;
        }
        break;
      }
      case OpType::kWrite: {
        buf.resize(len);
        FillRandom(buf);
        std::memcpy(model_.data() + off, buf.data(), len);
        iovec v{buf.data(), len};
        r = co_await dev_->Write(off, std::span<const iovec>(&v, 1), rng_() % 20 == 0);
        break;
      }
      case OpType::kCompressed: {
        buf.resize(len);
        FillRandom(buf);
        std::memcpy(model_.data() + off, buf.data(), len);
        r = co_await static_cast<Qcow2Image*>(dev_.get())->WriteCompressed(off, buf);
        break;
      }
      case OpType::kZeroes:
      case OpType::kZeroesUnmap:
      case OpType::kDiscard:
        if (type == OpType::kDiscard) {
          const bool qcow2 = dynamic_cast<Qcow2Image*>(dev_.get()) != nullptr;
          auto [zb, ze] = testing::DiscardedZeroRange(
              off, len, qcow2 ? cluster_bytes() : 512, c_.size_bytes,
              qcow2 && c_.version < 3 && c_.backing != BackingKind::kNone);
          std::memset(model_.data() + zb, 0, ze - zb);
          r = co_await dev_->Discard(off, len);
        } else {
          std::memset(model_.data() + off, 0, len);
          r = co_await dev_->WriteZeroes(off, len, type == OpType::kZeroesUnmap);
        }
        break;
      case OpType::kFlush:
        r = co_await dev_->Flush();
        break;
    }
    if (r != 0) {
      ADD_FAILURE() << "op " << op_id << " type " << static_cast<int>(type) << " [" << off << ", +"
                    << len << ") failed: " << r;
      ++failures_;
    }
    inflight_.erase(it);
  }

  bool TryIssue(uint64_t op_id) {
    const uint64_t cs = cluster_bytes();
    const bool qcow2 = dynamic_cast<Qcow2Image*>(dev_.get()) != nullptr;
    uint32_t roll = rng_() % 100;
    OpType type = roll < 36   ? OpType::kRead
                  : roll < 72 ? OpType::kWrite
                  : roll < 80 ? OpType::kZeroes
                  : roll < 86 ? OpType::kZeroesUnmap
                  : roll < 92 ? OpType::kDiscard
                  : roll < 95 ? OpType::kFlush
                              : OpType::kCompressed;
    if (type == OpType::kCompressed && !qcow2) type = OpType::kWrite;
    uint64_t off = 0;
    uint64_t len = 0;
    if (type == OpType::kCompressed) {
      const uint64_t clusters = c_.hot_clusters ? c_.hot_clusters : (c_.size_bytes + cs - 1) / cs;
      off = rng_() % clusters * cs;
      len = std::min(cs, c_.size_bytes - off);
    } else if (type != OpType::kFlush && c_.hot_clusters > 0) {
      const uint64_t hot_bytes = std::min(c_.size_bytes, c_.hot_clusters * cs);
      const uint64_t sub = c_.extended_l2 ? cs / 32 : std::min<uint64_t>(cs, 4096);
      off = rng_() % (hot_bytes / 512) * 512;
      len = (1 + rng_() % std::max<uint64_t>(1, 2 * sub / 512)) * 512;
      len = std::min(len, hot_bytes - off);
    } else if (type != OpType::kFlush) {
      // A small hot set of clusters makes concurrent ops share clusters.
      if (rng_() % 3 == 0) {
        off = (rng_() % 4) * cs + (rng_() % (cs / 512)) * 512;
        off = std::min(off, c_.size_bytes - 512);
      } else {
        off = rng_() % (c_.size_bytes / 512) * 512;
      }
      const uint64_t max_len = std::min<uint64_t>(c_.max_io_bytes, 4 * cs);
      len = (1 + rng_() % (max_len / 512)) * 512;
      if (rng_() % 4 == 0) len = std::min<uint64_t>(len, 4096);
      len = std::min(len, c_.size_bytes - off);
    }
    const bool mutates = type != OpType::kRead && type != OpType::kFlush;
    if (len > 0 && Overlaps(off, off + len, mutates)) return false;
    inflight_.push_front({off, off + len, mutates});
    Spawn(RunOp(type, off, len, inflight_.begin(), op_id));
    return true;
  }

  bool CompleteOne() {
    std::vector<io::MemFile*> candidates;
    if (image_->pending_count() > 0) candidates.push_back(image_.get());
    if (backing_ && backing_->pending_count() > 0) candidates.push_back(backing_.get());
    if (candidates.empty()) return false;
    candidates[rng_() % candidates.size()]->RunRandomOne(rng_);
    return true;
  }

  void RandomOps() {
    image_->set_mode(io::MemFile::Mode::kDeferred);
    if (backing_) backing_->set_mode(io::MemFile::Mode::kDeferred);
    uint64_t issued = 0;
    while (issued < c_.ops || !inflight_.empty()) {
      const bool can_issue = issued < c_.ops && inflight_.size() < c_.max_inflight;
      if (can_issue && (rng_() % 2 == 0 || image_->pending_count() == 0)) {
        if (TryIssue(issued)) {
          ++issued;
          continue;
        }
      }
      if (!CompleteOne()) {
        if (can_issue) continue;
        FAIL() << inflight_.size() << " requests in flight, no file operation pending (hang)";
      }
      if (failures_ > 5) FAIL() << "too many failures";
    }
    image_->set_mode(io::MemFile::Mode::kImmediate);
    if (backing_) backing_->set_mode(io::MemFile::Mode::kImmediate);
  }

  SimConfig c_;
  std::mt19937_64 rng_;
  FileSet files_;
  std::unique_ptr<io::MemFile> image_;
  std::unique_ptr<io::MemFile> backing_;
  std::unique_ptr<Device> dev_;
  std::vector<std::byte> model_;
  std::list<InFlight> inflight_;
  uint64_t failures_ = 0;
};

TEST(SimulationTest, Cluster64K) { Simulation(SimConfig{.seed = 101}).Run(); }

TEST(SimulationTest, Cluster512Refcount1Bit) {
  Simulation(SimConfig{.cluster_bits = 9,
                       .refcount_order = 0,
                       .size_bytes = 4 << 20,
                       .max_io_bytes = 8192,
                       .seed = 102})
      .Run();
}

TEST(SimulationTest, Cluster512Refcount64BitGrowsRefcountTable) {
  Simulation(SimConfig{.cluster_bits = 9,
                       .refcount_order = 6,
                       .size_bytes = 6 << 20,
                       .ops = 2500,
                       .max_io_bytes = 64 << 10,
                       .seed = 103})
      .Run();
}

TEST(SimulationTest, Cluster4KRefcount8BitTinyCacheQcow2Backing) {
  Simulation(SimConfig{.cluster_bits = 12,
                       .refcount_order = 3,
                       .backing = BackingKind::kQcow2,
                       .l2_cache_bytes = 2 * 4096,
                       .refcount_cache_bytes = 2 * 4096,
                       .size_bytes = 4 << 20,
                       .max_io_bytes = 32 << 10,
                       .seed = 104})
      .Run();
}

TEST(SimulationTest, ExtendedL2RawBacking) {
  Simulation(SimConfig{.cluster_bits = 15,
                       .refcount_order = 5,
                       .extended_l2 = true,
                       .backing = BackingKind::kRaw,
                       .backing_format_named = false,
                       .size_bytes = 8 << 20,
                       .seed = 105})
      .Run();
}

TEST(SimulationTest, ExtendedL2ZstdTinyCache) {
  Simulation(SimConfig{.cluster_bits = 14,
                       .refcount_order = 4,
                       .extended_l2 = true,
                       .l2_cache_bytes = 2 * 4096,
                       .refcount_cache_bytes = 2 * 4096,
                       .compression = format::CompressionType::kZstd,
                       .size_bytes = 4 << 20,
                       .seed = 106})
      .Run();
}

TEST(SimulationTest, Cluster2MRefcount2Bit) {
  Simulation(SimConfig{.cluster_bits = 21,
                       .refcount_order = 1,
                       .size_bytes = 24 << 20,
                       .ops = 300,
                       .max_inflight = 8,
                       .max_io_bytes = 1 << 20,
                       .seed = 107})
      .Run();
}

TEST(SimulationTest, Version2RawBacking) {
  Simulation(SimConfig{.cluster_bits = 12,
                       .version = 2,
                       .backing = BackingKind::kRaw,
                       .size_bytes = 4 << 20,
                       .max_io_bytes = 32 << 10,
                       .seed = 108})
      .Run();
}

TEST(SimulationTest, ODirectAlignmentSmallClustersCompressedBacking) {
  Simulation(SimConfig{.cluster_bits = 10,
                       .refcount_order = 4,
                       .backing = BackingKind::kQcow2,
                       .size_bytes = 4 << 20,
                       .max_io_bytes = 32 << 10,
                       .seed = 110,
                       .strict_alignment = 4096})
      .Run();
}

TEST(SimulationTest, LazyRefcountsCrashRepair) {
  Simulation(SimConfig{.cluster_bits = 13,
                       .refcount_order = 4,
                       .backing = BackingKind::kQcow2,
                       .lazy_refcounts = true,
                       .size_bytes = 4 << 20,
                       .max_io_bytes = 32 << 10,
                       .seed = 109})
      .Run();
}

// Requests concentrated on two or three clusters: they begin and end inside
// subclusters and meet each other there (COW, zeroing and allocation racing).
TEST(SimulationTest, HotClustersExtendedL2) {
  Simulation(SimConfig{.cluster_bits = 16,
                       .extended_l2 = true,
                       .size_bytes = 1 << 20,
                       .ops = 3000,
                       .seed = 111,
                       .hot_clusters = 2})
      .Run();
}

TEST(SimulationTest, HotClustersExtendedL2QcowBacking) {
  Simulation(SimConfig{.cluster_bits = 15,
                       .extended_l2 = true,
                       .backing = BackingKind::kQcow2,
                       .size_bytes = 1 << 20,
                       .ops = 3000,
                       .seed = 112,
                       .hot_clusters = 3})
      .Run();
}

TEST(SimulationTest, HotClustersStandardL2RawBacking) {
  Simulation(SimConfig{.cluster_bits = 14,
                       .backing = BackingKind::kRaw,
                       .size_bytes = 1 << 20,
                       .ops = 3000,
                       .seed = 113,
                       .hot_clusters = 2})
      .Run();
}

TEST(SimulationTest, HotClustersVersion2QcowBacking) {
  Simulation(SimConfig{.cluster_bits = 13,
                       .version = 2,
                       .backing = BackingKind::kQcow2,
                       .size_bytes = 1 << 20,
                       .ops = 3000,
                       .seed = 114,
                       .hot_clusters = 3})
      .Run();
}

}  // namespace
}  // namespace uq::engine
