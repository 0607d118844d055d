// OpenOptions::metadata_writethrough: a killed server process loses no
// completed request, and power loss still leaves a consistent image.
//
// Kill -9 model: the image file's bytes at the moment a request completes
// (MemFile contents: every file write that completed) are what survives the
// process, since the page cache outlives it. Each such snapshot is opened as
// a fresh image (dirty: refcounts rebuilt), every completed request must read
// back, and CheckImage must report zero corruptions. Requests run
// concurrently on a deferred MemFile, so slices shared by several in-flight
// requests and write-backs racing with completions are covered. The same
// streams with the option off must lose something for at least one seed:
// that proves the snapshots really model a kill.
//
// Power loss: the same streams on a PowerLossFile, crashed at a random point
// (unflushed writes dropped, or a random subset kept): zero corruptions and
// every sector written before the last completed Flush reads back.
//
// UQ_WT_SEEDS=<n> (default 12), UQ_WT_BASE_SEED=<n> (default random, printed),
// UQ_WT_TRACE=1 prints each completion of the kill -9 runs and what mismatched.
#include <gtest/gtest.h>

#include <cstdio>
#include <list>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "format/header.h"
#include "src/engine/check.h"
#include "src/engine/qcow2_image.h"
#include "src/io/power_loss_file.h"
#include "tests/engine/test_util.h"

namespace uq::engine {
namespace {

constexpr uint64_t kSector = 512;

enum class Kind { kWrite, kDiscard, kZeroes, kZeroesKeep, kCompressed };

struct Op {
  Kind kind = Kind::kWrite;
  uint64_t offset = 0;
  uint64_t length = 0;
  uint8_t value = 0;  // written byte (0 for the zeroing kinds)
  bool done = false;
  int result = 0;
  std::vector<std::byte> buf;
};

struct Config {
  uint32_t version = 3;
  uint32_t cluster_bits = 16;
  bool extended_l2 = false;
  uint64_t size_bytes = 4 << 20;
  uint64_t l2_cache_bytes = 0;
  int max_in_flight = 1;
  int ops = 40;
};

Config RandomConfig(std::mt19937_64& rng) {
  Config c;
  c.version = rng() % 4 == 0 ? 2 : 3;
  const uint32_t bits[] = {12, 14, 16};
  c.cluster_bits = bits[rng() % 3];
  c.extended_l2 = c.version == 3 && c.cluster_bits >= 14 && rng() % 3 == 0;
  // A tiny L2 cache makes evictions (write-backs outside the request path).
  c.l2_cache_bytes = rng() % 2 ? 4096 : 0;
  c.max_in_flight = 1 + static_cast<int>(rng() % 4);
  return c;
}

std::string Describe(const Config& c) {
  return absl::StrCat("v", c.version, " cluster_bits=", c.cluster_bits,
                      c.extended_l2 ? " extended_l2" : "", " l2_cache=", c.l2_cache_bytes,
                      " in_flight=", c.max_in_flight);
}

Task<void> Drive(Qcow2Image* img, Op* op) {
  int r = 0;
  switch (op->kind) {
    case Kind::kWrite: {
      iovec v{op->buf.data(), op->buf.size()};
      r = co_await img->Write(op->offset, std::span<const iovec>(&v, 1), false);
      break;
    }
    case Kind::kDiscard:
      r = co_await img->Discard(op->offset, op->length);
      break;
    case Kind::kZeroes:
      r = co_await img->WriteZeroes(op->offset, op->length, true);
      break;
    case Kind::kZeroesKeep:
      r = co_await img->WriteZeroes(op->offset, op->length, false);
      break;
    case Kind::kCompressed:
      r = co_await img->WriteCompressed(op->offset, op->buf);
      break;
  }
  op->result = r;
  op->done = true;
}

// Random request streams against a per-sector model (each sector holds one
// byte value repeated). Requests in flight never overlap each other.
class Stream {
 public:
  Stream(uint64_t seed, Config config) : rng_(seed), config_(config) {
    sectors_ = config_.size_bytes / kSector;
    model_.assign(sectors_, 0);
  }

  // Picks a request not overlapping any in flight; false if none found.
  bool Next(Op* op) {
    const uint64_t cluster = uint64_t{1} << config_.cluster_bits;
    for (int attempt = 0; attempt < 8; ++attempt) {
      const int k = static_cast<int>(rng_() % 10);
      Op o;
      if (k < 6) {
        o.kind = Kind::kWrite;
        const uint64_t max_len = 3 * cluster / kSector;
        o.length = (1 + rng_() % max_len) * kSector;
        o.offset = (rng_() % (sectors_ - o.length / kSector + 1)) * kSector;
      } else if (k < 9) {
        o.kind = k == 6 ? Kind::kDiscard : k == 7 ? Kind::kZeroes : Kind::kZeroesKeep;
        // Mostly whole clusters (metadata-only changes), sometimes ragged.
        const uint64_t clusters = config_.size_bytes / cluster;
        const uint64_t first = rng_() % clusters;
        const uint64_t n = 1 + rng_() % std::min<uint64_t>(4, clusters - first);
        o.offset = first * cluster;
        o.length = n * cluster;
        if (rng_() % 3 == 0 && o.length > kSector) {
          o.offset += kSector;
          o.length -= 2 * kSector;
        }
      } else {
        o.kind = Kind::kCompressed;
        o.offset = (rng_() % (config_.size_bytes / cluster)) * cluster;
        o.length = cluster;
      }
      if (Overlaps(o.offset, o.length)) continue;
      if (o.kind == Kind::kWrite || o.kind == Kind::kCompressed) {
        o.value = static_cast<uint8_t>(1 + rng_() % 255);
        o.buf.assign(o.length, std::byte{o.value});
        // Compressible: a quarter is the value, the rest zeros.
        if (o.kind == Kind::kCompressed) {
          std::fill(o.buf.begin() + static_cast<std::ptrdiff_t>(o.length / 4), o.buf.end(),
                    std::byte{0});
        }
      }
      *op = std::move(o);
      return true;
    }
    return false;
  }

  bool Overlaps(uint64_t offset, uint64_t length) const {
    for (const Op& o : in_flight_) {
      if (!o.done && offset < o.offset + o.length && o.offset < offset + length) return true;
    }
    return false;
  }

  // What the sector reads as after `op` completed.
  uint8_t ValueAfter(const Op& op, uint64_t sector) const {
    if (op.kind == Kind::kWrite) return op.value;
    if (op.kind == Kind::kCompressed) {
      return (sector * kSector - op.offset) < op.length / 4 ? op.value : 0;
    }
    return 0;
  }

  void Apply(const Op& op) {
    uint64_t begin = op.offset;
    uint64_t end = op.offset + op.length;
    if (op.kind == Kind::kDiscard) {
      std::tie(begin, end) = testing::DiscardedZeroRange(
          op.offset, op.length, uint64_t{1} << config_.cluster_bits, config_.size_bytes);
    }
    for (uint64_t s = begin / kSector; s < end / kSector; ++s) model_[s] = ValueAfter(op, s);
  }

  std::mt19937_64& rng() { return rng_; }
  const Config& config() const { return config_; }
  uint64_t sectors() const { return sectors_; }
  std::vector<uint8_t>& model() { return model_; }
  std::list<Op>& in_flight() { return in_flight_; }

 private:
  std::mt19937_64 rng_;
  Config config_;
  uint64_t sectors_ = 0;
  std::vector<uint8_t> model_;
  std::list<Op> in_flight_;
};

format::CreateOptions CreateFor(const Config& c) {
  format::CreateOptions o;
  o.size_bytes = c.size_bytes;
  o.version = c.version;
  o.cluster_bits = c.cluster_bits;
  o.extended_l2 = c.extended_l2;
  return o;
}

OpenOptions Options(const Config& c, bool writethrough) {
  OpenOptions o;
  o.l2_cache_bytes = c.l2_cache_bytes;
  o.metadata_writethrough = writethrough;
  return o;
}

struct Verdict {
  int mismatched_sectors = 0;
  int corruptions = 0;
  int open_failures = 0;
  std::string first_problem;
};

// Opens `bytes` as an image after a crash (repairing a dirty one), compares
// every sector not in `skip` with `model`, closes it and checks it.
Verdict VerifyCrashed(std::vector<std::byte> bytes, const std::vector<uint8_t>& model,
                      const std::vector<bool>& skip) {
  Verdict v;
  io::MemFile file(io::MemFile::Mode::kImmediate, std::move(bytes));
  {
    auto opened = testing::OpenSync(&file, OpenOptions{});
    if (!opened.ok()) {
      v.open_failures = 1;
      v.first_problem = absl::StrCat("reopen: ", opened.status().ToString());
      return v;
    }
    std::vector<std::byte> contents(model.size() * kSector);
    if (testing::ReadSync(**opened, 0, contents) != 0) {
      v.open_failures = 1;
      v.first_problem = "read after reopen failed";
      return v;
    }
    for (uint64_t s = 0; s < model.size(); ++s) {
      if (skip[s]) continue;
      for (uint64_t b = 0; b < kSector; ++b) {
        if (static_cast<uint8_t>(contents[s * kSector + b]) != model[s]) {
          if (v.mismatched_sectors == 0) {
            v.first_problem =
                absl::StrCat("sector ", s, " reads ", static_cast<int>(contents[s * kSector + b]),
                             ", a completed request wrote ", static_cast<int>(model[s]));
          }
          ++v.mismatched_sectors;
          break;
        }
      }
    }
    absl::Status closed = io::RunSync(nullptr, (*opened)->Close());
    if (!closed.ok()) {
      v.open_failures = 1;
      v.first_problem = absl::StrCat("close: ", closed.ToString());
    }
  }
  auto check = io::RunSync(nullptr, CheckImage(file));
  if (!check.ok()) {
    ++v.corruptions;
    v.first_problem = absl::StrCat("check: ", check.status().ToString());
  } else if (check->corruptions > 0) {
    v.corruptions += static_cast<int>(check->corruptions);
    if (v.first_problem.empty() && !check->messages.empty()) v.first_problem = check->messages[0];
  }
  return v;
}

bool DirtyBit(const std::vector<std::byte>& bytes) {
  auto h = format::DecodeHeader(bytes, format::DecodeLimits{bytes.size()});
  return h.ok() && (h->incompatible_features & format::kIncompatDirty) != 0;
}

// One kill -9 run: returns the summed verdict over every snapshot.
Verdict KillRun(uint64_t seed, const Config& config, bool writethrough) {
  Verdict total;
  Stream stream(seed, config);
  auto base = testing::MakeImage(CreateFor(config));
  if (base == nullptr) {
    total.open_failures = 1;
    return total;
  }
  auto opened = testing::OpenSync(base.get(), Options(config, writethrough));
  if (!opened.ok()) {
    total.open_failures = 1;
    total.first_problem = opened.status().ToString();
    return total;
  }
  auto* img = dynamic_cast<Qcow2Image*>(opened->get());
  if (img == nullptr) {
    total.open_failures = 1;
    return total;
  }
  base->set_mode(io::MemFile::Mode::kDeferred);
  int issued = 0;
  auto& in_flight = stream.in_flight();
  while (issued < config.ops || !in_flight.empty()) {
    const bool can_issue =
        issued < config.ops && static_cast<int>(in_flight.size()) < config.max_in_flight;
    if (can_issue && (base->pending_count() == 0 || stream.rng()() % 2 == 0)) {
      Op op;
      if (stream.Next(&op)) {
        in_flight.push_back(std::move(op));
        ++issued;
        Spawn(Drive(img, &in_flight.back()));
      } else if (base->pending_count() > 0) {
        base->RunRandomOne(stream.rng());
      }
    } else if (base->pending_count() > 0) {
      base->RunRandomOne(stream.rng());
    } else {
      total.open_failures = 1;
      total.first_problem = "requests in flight but no file operation pending";
      break;
    }
    // Each request that completed: the process could die right now.
    bool completed = false;
    for (auto it = in_flight.begin(); it != in_flight.end();) {
      if (!it->done) {
        ++it;
        continue;
      }
      if (it->result != 0) {
        total.open_failures = 1;
        total.first_problem = absl::StrCat("request failed: ", it->result);
      }
      if (std::getenv("UQ_WT_TRACE")) {
        std::printf("done kind=%d off=%llu len=%llu val=%d\n", static_cast<int>(it->kind),
                    (unsigned long long)it->offset, (unsigned long long)it->length, it->value);
      }
      stream.Apply(*it);
      completed = true;
      it = in_flight.erase(it);
    }
    if (!completed) continue;
    std::vector<bool> skip(stream.sectors(), false);
    for (const Op& o : in_flight) {
      for (uint64_t s = o.offset / kSector; s < (o.offset + o.length) / kSector; ++s)
        skip[s] = true;
    }
    std::vector<std::byte> snapshot = base->data();
    if (writethrough && config.version >= 3 && !DirtyBit(snapshot)) {
      ++total.corruptions;
      total.first_problem = "write-through image is not marked dirty while in use";
    }
    Verdict v = VerifyCrashed(std::move(snapshot), stream.model(), skip);
    if (std::getenv("UQ_WT_TRACE") && v.mismatched_sectors)
      std::printf("MISMATCH %s\n", v.first_problem.c_str());
    if (total.first_problem.empty()) total.first_problem = v.first_problem;
    total.mismatched_sectors += v.mismatched_sectors;
    total.corruptions += v.corruptions;
    total.open_failures += v.open_failures;
  }
  base->set_mode(io::MemFile::Mode::kImmediate);
  base->RunAll();
  absl::Status closed = io::RunSync(nullptr, (*opened)->Close());
  if (!closed.ok()) {
    ++total.open_failures;
    total.first_problem = closed.ToString();
  }
  return total;
}

uint64_t BaseSeed(const char* what) {
  const uint64_t base = testing::EnvU64("UQ_WT_BASE_SEED", std::random_device{}());
  std::printf("%s: base seed %llu (rerun: UQ_WT_BASE_SEED=<seed> UQ_WT_SEEDS=1)\n", what,
              static_cast<unsigned long long>(base));
  return base;
}

TEST(MetadataWritethrough, KillNineLosesNoCompletedRequest) {
  const uint64_t seeds = testing::EnvU64("UQ_WT_SEEDS", 12);
  const uint64_t base = BaseSeed("kill -9");
  for (uint64_t i = 0; i < seeds; ++i) {
    const uint64_t seed = base + i;
    std::mt19937_64 crng(seed);
    const Config config = RandomConfig(crng);
    SCOPED_TRACE(absl::StrCat("seed ", seed, " ", Describe(config)));
    Verdict v = KillRun(seed, config, true);
    EXPECT_EQ(v.open_failures, 0) << v.first_problem;
    EXPECT_EQ(v.corruptions, 0) << v.first_problem;
    EXPECT_EQ(v.mismatched_sectors, 0) << v.first_problem;
    if (HasFailure()) {
      std::printf("kill -9: seed %llu FAILED\n", static_cast<unsigned long long>(seed));
      break;
    }
  }
}

// The control: without the option the same kill loses completed writes (the
// L2 entries stay in the cache), so the snapshots above test something.
TEST(MetadataWritethrough, WithoutItKillNineLosesWrites) {
  const uint64_t seeds = testing::EnvU64("UQ_WT_SEEDS", 12);
  const uint64_t base = BaseSeed("kill -9 control");
  int lost = 0;
  for (uint64_t i = 0; i < seeds; ++i) {
    const uint64_t seed = base + i;
    std::mt19937_64 crng(seed);
    const Config config = RandomConfig(crng);
    Verdict v = KillRun(seed, config, false);
    lost += v.mismatched_sectors;
  }
  std::printf("kill -9 control: %d sectors of completed requests lost without write-through\n",
              lost);
  EXPECT_GT(lost, 0) << "the kill model never lost anything: it would not catch a regression";
}

// Power loss with the option on: crash at a random point; flushed data survives
// and the image is consistent.
TEST(MetadataWritethrough, PowerLossKeepsFlushedDataAndConsistency) {
  const uint64_t seeds = testing::EnvU64("UQ_WT_SEEDS", 12) * 4;
  const uint64_t base = BaseSeed("power loss");
  int dirty_crashes = 0;
  for (uint64_t i = 0; i < seeds; ++i) {
    const uint64_t seed = base + i;
    std::mt19937_64 crng(seed);
    Config config = RandomConfig(crng);
    config.max_in_flight = 1;
    SCOPED_TRACE(absl::StrCat("seed ", seed, " ", Describe(config)));
    Stream stream(seed, config);
    auto mem = testing::MakeImage(CreateFor(config));
    ASSERT_NE(mem, nullptr);
    io::PowerLossFile power(mem.get(), mem->data());
    auto opened = io::RunSync(
        nullptr, OpenImage(std::make_unique<testing::BorrowedFile>(&power), Options(config, true)));
    ASSERT_TRUE(opened.ok()) << opened.status();
    auto* img = dynamic_cast<Qcow2Image*>(opened->get());
    ASSERT_NE(img, nullptr);
    std::vector<uint8_t> durable = stream.model();
    std::vector<bool> uncertain(stream.sectors(), false);
    const int crash_at = static_cast<int>(stream.rng()() % config.ops);
    for (int step = 0; step < crash_at; ++step) {
      if (stream.rng()() % 6 == 0) {
        ASSERT_EQ(io::RunSync(nullptr, img->Flush()), 0);
        durable = stream.model();
        uncertain.assign(stream.sectors(), false);
        continue;
      }
      Op op;
      ASSERT_TRUE(stream.Next(&op));
      stream.in_flight().push_back(std::move(op));
      Op* p = &stream.in_flight().back();
      io::RunSync(nullptr, Drive(img, p));
      ASSERT_TRUE(p->done);
      ASSERT_EQ(p->result, 0);
      stream.Apply(*p);
      for (uint64_t s = p->offset / kSector; s < (p->offset + p->length) / kSector; ++s) {
        uncertain[s] = true;
      }
      stream.in_flight().clear();
    }
    std::vector<std::byte> crashed =
        stream.rng()() % 2 ? power.CrashRandomSubset(stream.rng()) : power.Crash();
    if (DirtyBit(crashed)) ++dirty_crashes;
    ASSERT_TRUE(io::RunSync(nullptr, img->Close()).ok());
    opened->reset();
    Verdict v = VerifyCrashed(std::move(crashed), durable, uncertain);
    EXPECT_EQ(v.open_failures, 0) << v.first_problem;
    EXPECT_EQ(v.corruptions, 0) << v.first_problem;
    EXPECT_EQ(v.mismatched_sectors, 0) << v.first_problem;
    if (HasFailure()) {
      std::printf("power loss: seed %llu FAILED\n", static_cast<unsigned long long>(seed));
      break;
    }
  }
  std::printf("power loss: %d of %llu crashed images were dirty (repaired on open)\n",
              dirty_crashes, static_cast<unsigned long long>(seeds));
}

}  // namespace
}  // namespace uq::engine
