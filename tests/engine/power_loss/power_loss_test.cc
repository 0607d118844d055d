// Power loss: the engine on a PowerLossFile over a deferred MemFile runs a
// seeded random stream of overlapping-in-time requests (file operations
// complete in random order); at a random moment the power goes (every file
// write not covered by a completed flush is dropped, or a random subset of
// them survives), and the crashed image must
//   - reopen (a dirty lazy-refcount image is repaired on open),
//   - have zero corruptions by CheckImage (leaks are allowed), before the
//     reopen when the image is not dirty and after the reopen and close,
//   - read back every sector written before the last completed flush (the
//     model: what had completed when that flush was issued) unless a request
//     touching it was still in flight then or issued since.
// For a sample of seeds the crashed image also goes through the real
// `qemu-img check`: exit 0 or 3 (leaks), never 2 (corruption).
// Images: fresh ones from the layout builder over the option space (cluster
// size, refcount width, extended L2, lazy refcounts, compat), and for about a
// third of the seeds QEMU-made ones (internal snapshots, zstd-compressed
// clusters, a dirty lazy-refcount image left by `qemu-io -c abort`).
//
// Environment: UQ_POWER_SEEDS (default 1000; 10,000 with UQ_LONG=1, the long
// mode), UQ_POWER_BASE_SEED (default
// random, printed), UQ_POWER_SEED=<n> runs only seed n, UQ_POWER_TRACE=1
// logs guest and file operations, UQ_POWER_DUMP=<path> writes the crashed
// image, UQ_POWER_MUTANT=drop-flush checks that the harness catches a flush
// that does nothing (the run must fail).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
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

namespace uq::engine {
namespace {

constexpr uint64_t kSector = 512;

// Where the image comes from: the layout builder, or QEMU (made once per run
// with qemu-img / qemu-io, so the crash hits COW of snapshot-shared clusters,
// compressed clusters, and a dirty lazy-refcount image repaired on open).
enum class Start { kFresh, kQemuSnapshots, kQemuCompressed, kQemuLazyDirty };

const char* StartName(Start s) {
  switch (s) {
    case Start::kFresh:
      return "fresh";
    case Start::kQemuSnapshots:
      return "qemu-snapshots";
    case Start::kQemuCompressed:
      return "qemu-compressed";
    case Start::kQemuLazyDirty:
      return "qemu-lazy-dirty";
  }
  return "?";
}

struct Config {
  Start start = Start::kFresh;
  format::CreateOptions create;
  uint64_t l2_cache_bytes = 0;
  int max_in_flight = 1;
  int steps_before_crash = 0;
  bool random_subset = false;
};

std::string Describe(const Config& c) {
  return absl::StrCat("start=", StartName(c.start), " cluster_bits=", c.create.cluster_bits,
                      " refcount_order=", c.create.refcount_order,
                      " extended_l2=", c.create.extended_l2,
                      " lazy_refcounts=", c.create.lazy_refcounts, " version=", c.create.version,
                      " size=", c.create.size_bytes, " l2_cache=", c.l2_cache_bytes,
                      " depth=", c.max_in_flight, " steps=", c.steps_before_crash,
                      " crash=", c.random_subset ? "random-subset" : "drop-unflushed");
}

Config RandomConfig(std::mt19937_64& rng) {
  auto pick = [&](uint64_t n) { return rng() % n; };
  Config c;
  static constexpr uint32_t kClusterBits[] = {9, 12, 14, 16};
  c.create.cluster_bits = kClusterBits[pick(4)];
  c.create.version = pick(6) == 0 ? 2 : 3;
  if (c.create.version == 3) {
    c.create.lazy_refcounts = pick(2) == 0;
    c.create.extended_l2 = c.create.cluster_bits >= 14 && pick(3) == 0;
    c.create.refcount_order = static_cast<uint32_t>(pick(7));
  }
  c.create.size_bytes = (1 + pick(4)) << 20;  // 1..4 MiB
  static constexpr uint64_t kL2Cache[] = {0, 1, 16384};
  c.l2_cache_bytes = kL2Cache[pick(3)];
  c.max_in_flight = 1 + static_cast<int>(pick(8));
  c.steps_before_crash = 1 + static_cast<int>(pick(400));
  c.random_subset = pick(2) == 0;
  // About a third of the seeds start from a QEMU-made image (2 MiB, 4 KiB
  // clusters; the image decides lazy refcounts).
  uint64_t start = pick(9);
  if (start < 3) {
    c.start = static_cast<Start>(start + 1);
    c.create = format::CreateOptions{};
    c.create.cluster_bits = 12;
    c.create.size_bytes = 2 << 20;
    c.create.lazy_refcounts = c.start == Start::kQemuLazyDirty;
  }
  return c;
}

// A QEMU-made start image and its contents, one byte per sector.
struct QemuStart {
  std::vector<std::byte> image;
  std::vector<uint8_t> sectors;
};

std::string ReadFileBytes(const std::string& path, std::vector<std::byte>* out) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return absl::StrCat("cannot open ", path);
  std::vector<std::byte> data;
  std::byte buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) data.insert(data.end(), buf, buf + n);
  std::fclose(f);
  *out = std::move(data);
  return "";
}

// Builds (once) the QEMU-made image for `start`; empty error string on success.
// Every write is sector aligned with one pattern byte, so the contents stay
// one value per sector.
std::string GetQemuStart(Start start, const QemuStart** out) {
  static std::map<Start, QemuStart> cache;
  if (auto it = cache.find(start); it != cache.end()) {
    *out = &it->second;
    return "";
  }
  char dir_template[] = "/tmp/uq-power-start-XXXXXX";
  if (mkdtemp(dir_template) == nullptr) return "mkdtemp failed";
  std::string dir = dir_template;
  std::string script;
  switch (start) {
    case Start::kQemuSnapshots:
      script =
          "qemu-img create -q -f qcow2 -o cluster_size=4k img.qcow2 2M && "
          "qemu-io -c 'write -P 0x11 0 512k' -c 'write -P 0x12 1M 256k' img.qcow2 && "
          "qemu-img snapshot -c a img.qcow2 && "
          "qemu-io -c 'write -P 0x13 64k 64k' -c 'write -z 1088k 32k' img.qcow2 && "
          "qemu-img snapshot -c b img.qcow2 && qemu-io -c 'write -P 0x14 200k 8k' img.qcow2";
      break;
    case Start::kQemuCompressed:
      script =
          "qemu-img create -q -f raw src.raw 2M && "
          "qemu-io -f raw -c 'write -P 0x31 0 700k' -c 'write -P 0x32 1M 512k' "
          "-c 'write -P 0x33 1700k 12k' src.raw && "
          "qemu-img convert -c -O qcow2 -o cluster_size=4k,compression_type=zstd src.raw "
          "img.qcow2";
      break;
    case Start::kQemuLazyDirty:
      script =
          "qemu-img create -q -f qcow2 -o cluster_size=4k,lazy_refcounts=on img.qcow2 2M && "
          "{ qemu-io -c 'write -P 0x41 0 300k' -c flush -c 'write -P 0x42 1M 100k' -c abort "
          "img.qcow2 || true; }";
      break;
    case Start::kFresh:
      return "not a QEMU start";
  }
  std::string cmd = absl::StrCat("cd ", dir, " && { ", script,
                                 " ; } >/dev/null 2>&1 && qemu-img convert -U -O raw img.qcow2 "
                                 "contents.raw");
  int rc = std::system(cmd.c_str());
  QemuStart made;
  std::vector<std::byte> raw;
  std::string err = rc == 0 ? ReadFileBytes(dir + "/img.qcow2", &made.image)
                            : absl::StrCat("making the image failed: ", cmd);
  if (err.empty()) err = ReadFileBytes(dir + "/contents.raw", &raw);
  std::system(absl::StrCat("rm -rf ", dir).c_str());
  if (!err.empty()) return err;
  if (raw.size() != (2u << 20)) return absl::StrCat("contents are ", raw.size(), " bytes");
  for (size_t s = 0; s < raw.size() / kSector; ++s) {
    std::byte v = raw[s * kSector];
    for (size_t b = 1; b < kSector; ++b) {
      if (raw[s * kSector + b] != v) return absl::StrCat("sector ", s, " is not uniform");
    }
    made.sectors.push_back(static_cast<uint8_t>(v));
  }
  *out = &cache.emplace(start, std::move(made)).first->second;
  return "";
}

// Logs file operations (UQ_POWER_TRACE) between the engine and the file.
class TracingFile final : public io::BlockFile {
 public:
  explicit TracingFile(io::BlockFile* f) : f_(f) {}
  Task<int64_t> ReadV(uint64_t o, std::span<const iovec> v) override { return f_->ReadV(o, v); }
  Task<int64_t> WriteV(uint64_t o, std::span<const iovec> v) override {
    uint64_t n = 0;
    for (const iovec& i : v) n += i.iov_len;
    int id = ++next_;
    std::printf("  file write %d issue %#llx+%#llx\n", id, (unsigned long long)o,
                (unsigned long long)n);
    int64_t r = co_await f_->WriteV(o, v);
    std::printf("  file write %d done %lld\n", id, (long long)r);
    co_return r;
  }
  Task<int> Flush() override {
    int id = ++next_;
    std::printf("  file flush %d issue\n", id);
    int r = co_await f_->Flush();
    std::printf("  file flush %d done %d\n", id, r);
    co_return r;
  }
  Task<int> Discard(uint64_t o, uint64_t n) override {
    std::printf("  file discard %#llx+%#llx\n", (unsigned long long)o, (unsigned long long)n);
    return f_->Discard(o, n);
  }
  Task<int> WriteZeroes(uint64_t o, uint64_t n) override {
    std::printf("  file zeroes %#llx+%#llx\n", (unsigned long long)o, (unsigned long long)n);
    return f_->WriteZeroes(o, n);
  }
  Task<int> Truncate(uint64_t n) override { return f_->Truncate(n); }
  uint64_t size_bytes() const override { return f_->size_bytes(); }
  bool read_only() const override { return f_->read_only(); }

 private:
  io::BlockFile* f_;
  int next_ = 0;
};

// What the seeds covered (printed at the end, so a weak run is visible).
struct Coverage {
  uint64_t seeds = 0;
  uint64_t dirty_at_crash = 0;
  uint64_t with_completed_flush = 0;
  uint64_t sectors_verified = 0;
  uint64_t requests = 0;
  uint64_t qemu_checks = 0;
  uint64_t qemu_starts = 0;
};
Coverage coverage;

// Harness self-check (UQ_POWER_MUTANT=drop-flush): a file whose Flush
// claims success without flushing. Runs with it must fail (lost data after
// the crash), showing the assertions can see a broken flush.
class DropFlushFile final : public io::BlockFile {
 public:
  explicit DropFlushFile(io::BlockFile* f) : f_(f) {}
  Task<int64_t> ReadV(uint64_t o, std::span<const iovec> v) override { return f_->ReadV(o, v); }
  Task<int64_t> WriteV(uint64_t o, std::span<const iovec> v) override { return f_->WriteV(o, v); }
  Task<int> Flush() override { co_return 0; }
  Task<int> Discard(uint64_t o, uint64_t n) override { return f_->Discard(o, n); }
  Task<int> WriteZeroes(uint64_t o, uint64_t n) override { return f_->WriteZeroes(o, n); }
  Task<int> Truncate(uint64_t n) override { return f_->Truncate(n); }
  uint64_t size_bytes() const override { return f_->size_bytes(); }
  bool read_only() const override { return f_->read_only(); }

 private:
  io::BlockFile* f_;
};

// One guest request of the stream.
struct Op {
  enum Kind { kWrite, kZeroes, kDiscard, kRead, kFlush } kind;
  uint64_t first_sector = 0;
  uint64_t sectors = 0;
  uint8_t value = 0;  // kWrite: the pattern byte
  bool may_unmap = false;
  std::vector<std::byte> buf;
  bool done = false;
  int result = 0;
  int id = 0;
};

class PowerLossRun {
 public:
  PowerLossRun(uint64_t seed, Config config)
      : seed_(seed), rng_(seed ^ 0x9e3779b97f4a7c15ull), config_(std::move(config)) {}

  // Runs the scenario; failures are reported through gtest.
  void Run(bool qemu_check);

 private:
  uint64_t Uniform(uint64_t lo, uint64_t hi) {
    return std::uniform_int_distribution<uint64_t>(lo, hi)(rng_);
  }
  bool Overlaps(uint64_t first, uint64_t count) const;
  void Issue();
  void Complete(Op* op, int result);
  Task<void> Drive(Op* op);
  bool Drain();
  void CheckCrashedImage(std::vector<std::byte> crashed, bool qemu_check);

  uint64_t seed_;
  std::mt19937_64 rng_;
  Config config_;
  uint64_t sectors_ = 0;

  std::unique_ptr<io::MemFile> base_;
  std::unique_ptr<io::PowerLossFile> power_;
  std::unique_ptr<Device> device_;

  std::list<Op> ops_;  // stable addresses; finished ones are erased
  int in_flight_ = 0;
  bool flush_in_flight_ = false;

  // Model, one byte per sector (every request writes whole sectors with one
  // value). current_: as of the completed requests. durable_/uncertain_: as
  // of the last completed flush. flush_*: for the flush in flight.
  std::vector<uint8_t> current_;
  std::vector<uint8_t> durable_;
  std::vector<bool> uncertain_;
  std::vector<uint8_t> flush_snapshot_;
  std::vector<bool> flush_uncertain_;
  int failures_ = 0;
  bool crashed_ = false;
  bool flush_completed_ = false;
  bool trace_ = std::getenv("UQ_POWER_TRACE") != nullptr;
  int next_id_ = 0;
};

bool PowerLossRun::Overlaps(uint64_t first, uint64_t count) const {
  for (const Op& op : ops_) {
    if (op.done || op.kind == Op::kFlush) continue;
    if (first < op.first_sector + op.sectors && op.first_sector < first + count) return true;
  }
  return false;
}

Task<void> PowerLossRun::Drive(Op* op) {
  iovec v{op->buf.data(), op->buf.size()};
  std::span<const iovec> iov(&v, 1);
  uint64_t offset = op->first_sector * kSector;
  uint64_t length = op->sectors * kSector;
  int r = 0;
  switch (op->kind) {
    case Op::kWrite:
      r = co_await device_->Write(offset, iov, /*fua=*/false);
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
}

void PowerLossRun::Issue() {
  uint64_t kind = Uniform(0, 99);
  Op op;
  if (kind < 8 && !flush_in_flight_) {
    op.kind = Op::kFlush;
  } else {
    // A sector range not overlapping any request in flight, so the model's
    // completion order is the only order that matters.
    uint64_t cluster_sectors = (uint64_t{1} << config_.create.cluster_bits) / kSector;
    uint64_t max_sectors =
        std::min<uint64_t>(sectors_, std::max<uint64_t>(4 * cluster_sectors, 64));
    uint64_t count = Uniform(1, max_sectors);
    uint64_t first = Uniform(0, sectors_ - count);
    if (Uniform(0, 2) == 0) first = first / cluster_sectors * cluster_sectors;
    count = std::min(count, sectors_ - first);
    if (Overlaps(first, count)) return;
    op.first_sector = first;
    op.sectors = count;
    if (kind < 50) {
      op.kind = Op::kWrite;
      op.value = static_cast<uint8_t>(Uniform(1, 255));
      op.buf.assign(count * kSector, std::byte{op.value});
    } else if (kind < 65) {
      op.kind = Op::kZeroes;
      op.may_unmap = Uniform(0, 1) == 1;
    } else if (kind < 78) {
      op.kind = Op::kDiscard;
    } else {
      op.kind = Op::kRead;
      op.buf.assign(count * kSector, std::byte{0xee});
    }
  }
  ops_.push_back(std::move(op));
  Op* p = &ops_.back();
  ++in_flight_;
  if (p->kind == Op::kFlush) {
    flush_in_flight_ = true;
    flush_snapshot_ = current_;
    flush_uncertain_.assign(sectors_, false);
    for (const Op& o : ops_) {
      if (o.done || o.kind == Op::kFlush || o.kind == Op::kRead) continue;
      for (uint64_t s = o.first_sector; s < o.first_sector + o.sectors; ++s) {
        flush_uncertain_[s] = true;
      }
    }
  } else if (p->kind != Op::kRead) {
    // Not covered by any flush yet: uncertain after a crash.
    for (uint64_t s = p->first_sector; s < p->first_sector + p->sectors; ++s) {
      uncertain_[s] = true;
      if (flush_in_flight_) flush_uncertain_[s] = true;
    }
  }
  p->id = ++next_id_;
  if (trace_) {
    std::printf("issue #%d kind=%d sectors %llu+%llu value=%d unmap=%d\n", p->id, p->kind,
                (unsigned long long)p->first_sector, (unsigned long long)p->sectors, p->value,
                p->may_unmap);
  }
  Spawn(Drive(p));
}

void PowerLossRun::Complete(Op* op, int result) {
  if (trace_) {
    std::printf("done  #%d result=%d\n", op->id, result);
    if (const char* probe = std::getenv("UQ_POWER_PROBE")) {
      uint64_t at = std::strtoull(probe, nullptr, 0);
      std::printf("   probe live %d durable %d unflushed %zu\n",
                  at < base_->data().size() ? int(base_->data()[at]) : -1,
                  at < power_->durable().size() ? int(power_->durable()[at]) : -1,
                  power_->unflushed_count());
    }
  }
  op->done = true;
  op->result = result;
  --in_flight_;
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
        uint8_t want = current_[op->first_sector + s];
        for (uint64_t b = 0; b < kSector; ++b) {
          uint8_t got = static_cast<uint8_t>(op->buf[s * kSector + b]);
          if (got != want) {
            ADD_FAILURE() << "live read: sector " << op->first_sector + s << " byte " << b << " is "
                          << int(got) << ", model says " << int(want);
            ++failures_;
            break;
          }
        }
      }
      break;
    case Op::kFlush:
      flush_in_flight_ = false;
      // A flush that completes after the power cut (while draining the live
      // engine) covers nothing in the crashed image.
      if (result == 0 && !crashed_) {
        flush_completed_ = true;
        durable_ = std::move(flush_snapshot_);
        uncertain_ = std::move(flush_uncertain_);
      }
      break;
  }
}

// Completes every queued file operation (and whatever they queue).
bool PowerLossRun::Drain() {
  for (int rounds = 0; rounds < 1000000; ++rounds) {
    if (base_->pending_count() == 0) return in_flight_ == 0;
    base_->RunAll();
  }
  return false;
}

void PowerLossRun::Run(bool qemu_check) {
  sectors_ = config_.create.size_bytes / kSector;
  current_.assign(sectors_, 0);
  uncertain_.assign(sectors_, false);
  if (config_.start == Start::kFresh) {
    base_ = testing::MakeImage(config_.create);
  } else {
    const QemuStart* start = nullptr;
    std::string err = GetQemuStart(config_.start, &start);
    ASSERT_TRUE(err.empty()) << StartName(config_.start) << ": " << err;
    ASSERT_EQ(start->sectors.size(), sectors_);
    current_ = start->sectors;
    base_ = std::make_unique<io::MemFile>(io::MemFile::Mode::kImmediate, start->image);
  }
  ASSERT_NE(base_, nullptr);
  durable_ = current_;
  power_ = std::make_unique<io::PowerLossFile>(base_.get(), base_->data());

  OpenOptions options;
  options.l2_cache_bytes = config_.l2_cache_bytes;
  options.opener = [](const std::string& path,
                      bool) -> absl::StatusOr<std::unique_ptr<io::BlockFile>> {
    return absl::NotFoundError(path);
  };
  std::unique_ptr<io::BlockFile> engine_file;
  const char* mutant = std::getenv("UQ_POWER_MUTANT");
  if (mutant != nullptr && std::string(mutant) == "drop-flush") {
    engine_file = std::make_unique<DropFlushFile>(power_.get());
  } else if (trace_) {
    engine_file = std::make_unique<TracingFile>(power_.get());
  } else {
    engine_file = std::make_unique<testing::BorrowedFile>(power_.get());
  }
  auto opened = io::RunSync(nullptr, OpenImage(std::move(engine_file), options));
  ASSERT_TRUE(opened.ok()) << opened.status();
  device_ = std::move(*opened);
  base_->set_mode(io::MemFile::Mode::kDeferred);

  // The stream up to the power cut.
  for (int step = 0; step < config_.steps_before_crash && failures_ == 0; ++step) {
    bool can_issue = in_flight_ < config_.max_in_flight;
    if (can_issue && (base_->pending_count() == 0 || Uniform(0, 2) != 0)) {
      Issue();
    } else if (base_->pending_count() > 0) {
      base_->RunRandomOne(rng_);
    }
    // Finished requests leave the list.
    ops_.remove_if([](const Op& o) { return o.done; });
  }
  std::vector<std::byte> crashed =
      config_.random_subset ? power_->CrashRandomSubset(rng_) : power_->Crash();
  crashed_ = true;
  if (const char* probe = std::getenv("UQ_POWER_PROBE")) {
    uint64_t at = std::strtoull(probe, nullptr, 0);
    std::printf("probe %#llx: live %d durable %d crashed %d unflushed=%zu\n",
                (unsigned long long)at, at < base_->data().size() ? int(base_->data()[at]) : -1,
                at < power_->durable().size() ? int(power_->durable()[at]) : -1,
                at < crashed.size() ? int(crashed[at]) : -1, power_->unflushed_count());
  }

  // Let the live engine finish and close so nothing dangles.
  base_->set_mode(io::MemFile::Mode::kImmediate);
  EXPECT_TRUE(Drain()) << "requests still in flight after draining the file";
  ops_.clear();
  absl::Status closed = io::RunSync(nullptr, device_->Close());
  EXPECT_TRUE(closed.ok()) << closed;
  device_.reset();
  power_.reset();
  base_.reset();

  CheckCrashedImage(std::move(crashed), qemu_check);
}

// `qemu-img check` on `bytes`: returns its exit status (or -1 if it could not run).
int QemuImgCheck(const std::vector<std::byte>& bytes, std::string* output) {
  char path[] = "/tmp/uq-power-loss-XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0) return -1;
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = write(fd, bytes.data() + done, bytes.size() - done);
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  close(fd);
  std::string cmd = absl::StrCat("qemu-img check -f qcow2 ", path, " 2>&1");
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) {
    unlink(path);
    return -1;
  }
  char buf[512];
  while (fgets(buf, sizeof(buf), p) != nullptr) {
    if (output->size() < 4000) output->append(buf);
  }
  int status = pclose(p);
  unlink(path);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

bool QemuImgAvailable() {
  static const bool available = std::system("command -v qemu-img >/dev/null 2>&1") == 0;
  return available;
}

void PowerLossRun::CheckCrashedImage(std::vector<std::byte> crashed, bool qemu_check) {
  auto header = format::DecodeHeader(crashed, format::DecodeLimits{crashed.size()});
  ASSERT_TRUE(header.ok()) << "crashed image header: " << header.status();
  bool dirty = (header->incompatible_features & format::kIncompatDirty) != 0;
  ++coverage.seeds;
  if (config_.start != Start::kFresh) ++coverage.qemu_starts;
  if (dirty) ++coverage.dirty_at_crash;
  if (flush_completed_) ++coverage.with_completed_flush;
  coverage.requests += static_cast<uint64_t>(next_id_);
  // A dirty lazy-refcount image has stale refcounts by design; it is checked
  // after the engine repaired it on open.
  bool check_as_is = !dirty;

  if (const char* dump = std::getenv("UQ_POWER_DUMP")) {
    FILE* f = std::fopen(dump, "wb");
    if (f != nullptr) {
      std::fwrite(crashed.data(), 1, crashed.size(), f);
      std::fclose(f);
    }
  }
  io::MemFile file(io::MemFile::Mode::kImmediate, std::move(crashed));
  if (check_as_is) {
    auto result = io::RunSync(nullptr, CheckImage(file));
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->corruptions, 0u)
        << "crashed image: " << (result->messages.empty() ? "" : result->messages[0]);
    if (qemu_check && QemuImgAvailable()) {
      std::string out;
      int code = QemuImgCheck(file.data(), &out);
      ++coverage.qemu_checks;
      EXPECT_TRUE(code == 0 || code == 3)
          << "qemu-img check on the crashed image exit " << code << "\n"
          << out;
    }
  }

  // Reboot: reopen writable (repairs a dirty image), read everything back.
  OpenOptions options;
  options.opener = [](const std::string& path,
                      bool) -> absl::StatusOr<std::unique_ptr<io::BlockFile>> {
    return absl::NotFoundError(path);
  };
  auto reopened =
      io::RunSync(nullptr, OpenImage(std::make_unique<testing::BorrowedFile>(&file), options));
  ASSERT_TRUE(reopened.ok()) << "reopen after crash: " << reopened.status();
  Device& device = **reopened;
  std::vector<std::byte> contents(sectors_ * kSector);
  ASSERT_EQ(testing::ReadSync(device, 0, contents), 0);
  int mismatches = 0;
  for (uint64_t s = 0; s < sectors_ && mismatches < 3; ++s) {
    if (uncertain_[s]) continue;
    ++coverage.sectors_verified;
    for (uint64_t b = 0; b < kSector; ++b) {
      uint8_t got = static_cast<uint8_t>(contents[s * kSector + b]);
      if (got != durable_[s]) {
        ADD_FAILURE() << "after crash: sector " << s << " byte " << b << " is " << int(got)
                      << ", flushed data says " << int(durable_[s]);
        ++mismatches;
        break;
      }
    }
  }
  absl::Status closed = io::RunSync(nullptr, device.Close());
  EXPECT_TRUE(closed.ok()) << closed;
  reopened->reset();

  auto after = io::RunSync(nullptr, CheckImage(file));
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->corruptions, 0u)
      << "after reopen and close: " << (after->messages.empty() ? "" : after->messages[0]);
  if (qemu_check && QemuImgAvailable()) {
    std::string out;
    int code = QemuImgCheck(file.data(), &out);
    ++coverage.qemu_checks;
    EXPECT_TRUE(code == 0 || code == 3) << "qemu-img check after reopen exit " << code << "\n"
                                        << out;
  }
}

TEST(PowerLoss, RandomStreamsSurviveCrash) {
  const uint64_t seeds =
      testing::EnvU64("UQ_POWER_SEEDS", testing::EnvU64("UQ_LONG", 0) != 0 ? 10000 : 1000);
  uint64_t base = testing::EnvU64("UQ_POWER_BASE_SEED", std::random_device{}());
  std::optional<uint64_t> only;
  if (std::getenv("UQ_POWER_SEED") != nullptr) only = testing::EnvU64("UQ_POWER_SEED", 0);
  std::printf("power loss: base seed %llu, %llu seeds (rerun one: UQ_POWER_SEED=<seed>)\n",
              static_cast<unsigned long long>(base), static_cast<unsigned long long>(seeds));
  const uint64_t qemu_every = std::max<uint64_t>(1, seeds / 20);
  int failed_seeds = 0;
  for (uint64_t i = 0; i < (only ? 1 : seeds); ++i) {
    const uint64_t seed = only ? *only : base + i;
    std::mt19937_64 config_rng(seed);
    Config config = RandomConfig(config_rng);
    if (!QemuImgAvailable()) config.start = Start::kFresh;
    SCOPED_TRACE(absl::StrCat("UQ_POWER_SEED=", seed, " ", Describe(config)));
    const ::testing::TestResult* result =
        ::testing::UnitTest::GetInstance()->current_test_info()->result();
    const int parts_before = result->total_part_count();
    PowerLossRun run(seed, config);
    run.Run(/*qemu_check=*/only.has_value() || i % qemu_every == 0);
    if (result->total_part_count() != parts_before) {
      std::printf("power loss: seed %llu FAILED (%s)\n", static_cast<unsigned long long>(seed),
                  Describe(config).c_str());
      if (++failed_seeds >= 3) break;  // enough to debug; keep the log short
    }
  }
  std::printf(
      "power loss: %llu seeds, %llu requests, %llu crashed dirty (lazy refcounts), %llu with a "
      "completed flush, %llu sectors verified, %llu qemu-img checks, %llu QEMU-made start images\n",
      (unsigned long long)coverage.seeds, (unsigned long long)coverage.requests,
      (unsigned long long)coverage.dirty_at_crash,
      (unsigned long long)coverage.with_completed_flush,
      (unsigned long long)coverage.sectors_verified, (unsigned long long)coverage.qemu_checks,
      (unsigned long long)coverage.qemu_starts);
}

}  // namespace
}  // namespace uq::engine

namespace uq::engine {
namespace {

// The simplest durability promise: an in-place overwrite of an allocated
// cluster, then a completed flush, survives a power cut.
TEST(PowerLoss, OverwriteThenFlushSurvives) {
  for (uint32_t version : {2u, 3u}) {
    SCOPED_TRACE(absl::StrCat("version ", version));
    format::CreateOptions create;
    create.size_bytes = 1 << 20;
    create.version = version;
    auto base = testing::MakeImage(create);
    ASSERT_NE(base, nullptr);
    io::PowerLossFile power(base.get(), base->data());
    OpenOptions options;
    auto opened =
        io::RunSync(nullptr, OpenImage(std::make_unique<testing::BorrowedFile>(&power), options));
    ASSERT_TRUE(opened.ok()) << opened.status();
    Device& device = **opened;
    std::vector<std::byte> first(65536, std::byte{1}), second(4096, std::byte{2});
    ASSERT_EQ(testing::WriteSync(device, 0, first), 0);
    ASSERT_EQ(io::RunSync(nullptr, device.Flush()), 0);
    ASSERT_EQ(testing::WriteSync(device, 4096, second), 0);
    ASSERT_EQ(io::RunSync(nullptr, device.Flush()), 0);
    std::vector<std::byte> crashed = power.Crash();
    ASSERT_TRUE(io::RunSync(nullptr, device.Close()).ok());
    opened->reset();

    io::MemFile file(io::MemFile::Mode::kImmediate, std::move(crashed));
    auto again =
        io::RunSync(nullptr, OpenImage(std::make_unique<testing::BorrowedFile>(&file), options));
    ASSERT_TRUE(again.ok()) << again.status();
    std::vector<std::byte> got(8192);
    ASSERT_EQ(testing::ReadSync(**again, 0, got), 0);
    EXPECT_EQ(got[0], std::byte{1});
    EXPECT_EQ(got[4096], std::byte{2}) << "the flushed overwrite was lost";
    ASSERT_TRUE(io::RunSync(nullptr, (*again)->Close()).ok());
  }
}

}  // namespace
}  // namespace uq::engine
