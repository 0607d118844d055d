// Fail-stop (issue 12, point 3). A failed fsync leaves the page cache and the
// file disagreeing about what is durable (Linux may drop the dirty pages it
// could not write, and a later fsync then succeeds over the loss), and a
// failed metadata write leaves the engine's memory and the file disagreeing.
// After either, the image is failed: every later write, zero, discard and
// flush returns -EIO even though the file would now accept it, reads keep
// working, Close reports the failure, and the image left behind is what a
// crash at that moment leaves: it reopens, checks with zero corruptions and
// reads back every write acknowledged before the last successful flush.
//
// For each image kind the workload runs once fault-free on a recording
// FaultFile; then, for every fsync it issued and for every write to the L1
// table, the L2 tables and the refcount blocks, it reruns with exactly that
// operation failing once (a later retry would succeed: the dangerous case).
#include <gtest/gtest.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "format/create.h"
#include "format/endian.h"
#include "format/header.h"
#include "src/engine/check.h"
#include "src/engine/image.h"
#include "src/engine/raw_device.h"
#include "src/io/fault_file.h"
#include "src/io/mem_file.h"
#include "src/io/op_kind.h"
#include "src/io/power_loss_file.h"
#include "src/io/run_sync.h"
#include "tests/engine/test_util.h"

namespace uq::engine {
namespace {

using io::FaultFile;
using io::FaultRule;
using io::OpKind;
using io::OpKindBit;
using testing::BorrowedFile;

constexpr uint64_t kSector = 512;

struct Step {
  enum Kind { kWrite, kZeroes, kFlush } kind;
  uint64_t offset_bytes = 0;
  uint64_t length_bytes = 0;
  uint8_t value = 0;
};

struct Kind {
  const char* name;
  uint32_t cluster_bits;
  uint32_t refcount_order = 4;
  bool lazy_refcounts = false;
  bool writethrough = false;
};

// Allocating writes (new L2 entries, refcount blocks, with 4 KiB clusters new
// L2 tables and refcount-table growth), partial-cluster COW writes, write
// zeroes, and a flush after each round; Close adds its own flushes.
std::vector<Step> Workload(uint64_t c) {
  std::vector<Step> steps;
  for (uint8_t r = 0; r < 6; ++r) {
    const uint64_t base = r * 37 * c;  // spread over several L2 slices
    steps.push_back({Step::kWrite, base, 2 * c, static_cast<uint8_t>(r + 1)});
    steps.push_back({Step::kWrite, base + 3 * c + 1024, 1024, static_cast<uint8_t>(0x80 + r)});
    steps.push_back({Step::kFlush});
    if (r % 2 == 1) steps.push_back({Step::kZeroes, base + c, c});
    steps.push_back({Step::kWrite, base + 5 * c, c, static_cast<uint8_t>(0x40 + r)});
    steps.push_back({Step::kFlush});
  }
  steps.push_back({Step::kWrite, 7 * c, c, 0x77});  // never flushed
  return steps;
}

class FailStop {
 public:
  explicit FailStop(const Kind& kind) : kind_(kind), c_(uint64_t{1} << kind.cluster_bits) {
    format::CreateOptions o;
    o.cluster_bits = kind.cluster_bits;
    o.refcount_order = kind.refcount_order;
    o.lazy_refcounts = kind.lazy_refcounts;
    o.size_bytes = 256 * c_;
    auto img = testing::MakeImage(o);
    pristine_ = img->data();
    steps_ = Workload(c_);
  }

  OpenOptions Options() const {
    OpenOptions o;
    o.metadata_writethrough = kind_.writethrough;
    return o;
  }

  // The fault-free run's operations on the image file.
  std::vector<FaultFile::OpRecord> CleanLog(std::vector<std::byte>* bytes) {
    io::MemFile mem(io::MemFile::Mode::kImmediate, pristine_);
    FaultFile fault(&mem);
    fault.set_recording(true);
    auto dev = io::RunSync(nullptr, OpenImage(std::make_unique<BorrowedFile>(&fault), Options()));
    EXPECT_TRUE(dev.ok()) << dev.status();
    if (!dev.ok()) return {};
    std::vector<std::byte> buf;
    for (const Step& s : steps_) EXPECT_EQ(Apply(**dev, s, &buf), 0);
    EXPECT_TRUE(io::RunSync(nullptr, (*dev)->Close()).ok());
    *bytes = mem.data();
    return fault.log();
  }

  static int Apply(Device& d, const Step& s, std::vector<std::byte>* buf) {
    switch (s.kind) {
      case Step::kWrite:
        buf->assign(s.length_bytes, std::byte{s.value});
        return testing::WriteSync(d, s.offset_bytes, *buf);
      case Step::kZeroes:
        return io::RunSync(nullptr, d.WriteZeroes(s.offset_bytes, s.length_bytes, false));
      case Step::kFlush:
        return io::RunSync(nullptr, d.Flush());
    }
    return -EINVAL;
  }

  // Reruns the workload with `rule` and checks fail-stop; `what` names the run.
  void Run(const FaultRule& rule, const std::string& what) {
    SCOPED_TRACE(what);
    io::MemFile mem(io::MemFile::Mode::kImmediate, pristine_);
    io::PowerLossFile power(&mem, pristine_);
    FaultFile fault(&power);
    const int id = fault.AddRule(rule);
    auto opened =
        io::RunSync(nullptr, OpenImage(std::make_unique<BorrowedFile>(&fault), Options()));
    ASSERT_TRUE(opened.ok()) << opened.status();
    std::unique_ptr<Device> dev = std::move(*opened);

    std::map<uint64_t, uint8_t> live;     // acknowledged values, by sector
    std::map<uint64_t, uint8_t> durable;  // as of the last successful flush
    // Values written (or attempted) since then: each may or may not be on
    // disk (the engine's own fsyncs inside a request can make one durable).
    std::map<uint64_t, std::set<uint8_t>> since;
    std::vector<std::byte> buf;
    int failed_step = -1;
    for (size_t i = 0; i < steps_.size(); ++i) {
      const Step& s = steps_[i];
      const int r = Apply(*dev, s, &buf);
      if (failed_step < 0 && s.kind != Step::kFlush) {
        for (uint64_t o = s.offset_bytes; o < s.offset_bytes + s.length_bytes; o += kSector) {
          since[o / kSector].insert(s.kind == Step::kWrite ? s.value : 0);
        }
      }
      if (failed_step >= 0) {
        // Failed: the file would take this operation now, the image must not.
        EXPECT_EQ(r, -EIO) << "step " << i << " after the failure at step " << failed_step;
        continue;
      }
      if (r < 0) {
        ASSERT_GT(fault.rule_fired(id), 0u) << "step " << i << " failed without the fault";
        EXPECT_EQ(r, -EIO);
        failed_step = static_cast<int>(i);
        continue;
      }
      if (s.kind == Step::kFlush) {
        durable = live;
        since.clear();
      } else {
        for (uint64_t o = s.offset_bytes; o < s.offset_bytes + s.length_bytes; o += kSector) {
          live[o / kSector] = s.kind == Step::kWrite ? s.value : 0;
        }
      }
    }
    // A fault among the steps failed the step it hit (no path here may
    // swallow one: there are no discards).
    EXPECT_EQ(failed_step >= 0, fault.rule_fired(id) > 0);
    if (failed_step >= 0) {
      // Reads keep working and return the acknowledged data (or, where the
      // failed step wrote, its data: a failed request may have landed).
      const Step& f = steps_[failed_step];
      for (const auto& [sector, value] : live) {
        std::vector<std::byte> got(kSector);
        ASSERT_EQ(testing::ReadSync(*dev, sector * kSector, got), 0);
        const uint8_t v = static_cast<uint8_t>(got[0]);
        const bool by_failed = f.kind != Step::kFlush && sector * kSector >= f.offset_bytes &&
                               sector * kSector < f.offset_bytes + f.length_bytes &&
                               v == (f.kind == Step::kWrite ? f.value : 0);
        ASSERT_TRUE(v == value || by_failed) << "live read of sector " << sector << ": " << int(v)
                                             << ", acknowledged " << int(value);
      }
    }
    // Otherwise the fault is one of Close's own flush operations.
    absl::Status closed = io::RunSync(nullptr, dev->Close());
    ASSERT_GT(fault.rule_fired(id), 0u) << "the fault never fired";
    EXPECT_FALSE(closed.ok()) << "close of a failed image reported success";
    dev.reset();

    // What each sector may read: its value at the last successful flush
    // (zero if none), or one written since.
    std::map<uint64_t, std::set<uint8_t>> allowed;
    for (const auto& [sector, values] : since) allowed[sector] = values;
    for (auto& [sector, values] : allowed)
      values.insert(durable.count(sector) ? durable[sector] : 0);
    for (const auto& [sector, value] : durable) allowed[sector].insert(value);
    // A crash now: only what the last successful fsync covered remains.
    ExpectConsistent(power.Crash(), allowed, "crash image");
    // No crash: the image as the failed process left it.
    ExpectConsistent(mem.data(), allowed, "left image");
  }

  // Opens `bytes` writable (repairing what a dirty bit asks for), checks it
  // and reads back every sector the workload touched: each must hold a value
  // it may hold.
  void ExpectConsistent(std::vector<std::byte> bytes,
                        const std::map<uint64_t, std::set<uint8_t>>& allowed, const char* what) {
    SCOPED_TRACE(what);
    io::MemFile mem(io::MemFile::Mode::kImmediate, std::move(bytes));
    {
      auto dev = testing::OpenSync(&mem, OpenOptions{});
      ASSERT_TRUE(dev.ok()) << dev.status();
      for (const auto& [sector, values] : allowed) {
        std::vector<std::byte> got(kSector);
        ASSERT_EQ(testing::ReadSync(**dev, sector * kSector, got), 0);
        const uint8_t v = static_cast<uint8_t>(got[0]);
        ASSERT_TRUE(values.count(v)) << "sector " << sector << " reads " << int(v)
                                     << ", not a value it may hold (flushed or written since)";
      }
      ASSERT_TRUE(io::RunSync(nullptr, (*dev)->Close()).ok());
    }
    auto checked = io::RunSync(nullptr, CheckImage(mem));
    ASSERT_TRUE(checked.ok()) << checked.status();
    EXPECT_EQ(checked->corruptions, 0u);
    EXPECT_EQ(checked->check_errors, 0u);
  }

  // The byte ranges of the metadata the engine rewrites in place: the L1
  // table, the L2 tables and the refcount blocks of the final image.
  std::vector<std::pair<uint64_t, uint64_t>> MetadataRanges(const std::vector<std::byte>& bytes) {
    std::vector<std::pair<uint64_t, uint64_t>> out;
    auto h = format::DecodeHeader(bytes, format::DecodeLimits{bytes.size()});
    EXPECT_TRUE(h.ok()) << h.status();
    if (!h.ok()) return out;
    out.push_back({h->l1_table_offset, uint64_t{h->l1_size} * 8});
    for (uint32_t i = 0; i < h->l1_size; ++i) {
      const uint64_t e = format::LoadBE64(&bytes[h->l1_table_offset + i * 8]) & 0x00fffffffffffe00;
      if (e != 0) out.push_back({e, c_});
    }
    const uint64_t table_bytes = uint64_t{h->refcount_table_clusters} * c_;
    for (uint64_t i = 0; i < table_bytes / 8; ++i) {
      const uint64_t b = format::LoadBE64(&bytes[h->refcount_table_offset + i * 8]);
      if (b != 0) out.push_back({b, c_});
    }
    return out;
  }

  void RunAll() {
    std::vector<std::byte> clean_bytes;
    const std::vector<FaultFile::OpRecord> log = CleanLog(&clean_bytes);
    ASSERT_FALSE(log.empty());
    // Every fsync, failing once.
    uint64_t flushes = 0;
    for (const auto& op : log) flushes += op.kind == OpKind::kFlush;
    ASSERT_GT(flushes, 0u);
    for (uint64_t n = 0; n < flushes; ++n) {
      FaultRule rule;
      rule.kinds = OpKindBit(OpKind::kFlush);
      rule.skip = n;
      Run(rule, absl::StrCat(kind_.name, ": fsync ", n + 1, " of ", flushes, " fails once"));
      if (HasFatalFailure()) return;
    }
    // Every write into in-place metadata, failing once.
    uint64_t metadata_writes = 0;
    for (const auto& [offset, length] : MetadataRanges(clean_bytes)) {
      uint64_t matching = 0;
      for (const auto& op : log) {
        matching += op.kind == OpKind::kWrite && op.offset_bytes < offset + length &&
                    offset < op.offset_bytes + op.length_bytes;
      }
      // A table the run created (past the pristine file's end): its first
      // write fills space nothing points at yet, so its failure only fails
      // the request (the cluster is given back), as in QEMU.
      const uint64_t first = offset >= pristine_.size() ? 1 : 0;
      for (uint64_t n = first; n < matching; ++n) {
        FaultRule rule;
        rule.kinds = OpKindBit(OpKind::kWrite);
        rule.offset_bytes = offset;
        rule.length_bytes = length;
        rule.skip = n;
        Run(rule, absl::StrCat(kind_.name, ": write ", n + 1, " of ", matching, " to metadata at ",
                               offset, " fails once"));
        if (HasFatalFailure()) return;
        ++metadata_writes;
      }
    }
    std::printf("[%s] %llu fsync points and %llu metadata write points, each failing once\n",
                kind_.name, static_cast<unsigned long long>(flushes),
                static_cast<unsigned long long>(metadata_writes));
    EXPECT_GT(metadata_writes, 0u);
  }

  static bool HasFatalFailure() { return ::testing::Test::HasFatalFailure(); }

 private:
  Kind kind_;
  uint64_t c_;
  std::vector<std::byte> pristine_;
  std::vector<Step> steps_;
};

TEST(FailStop, c64k) { FailStop({"c64k", 16}).RunAll(); }
TEST(FailStop, c4k_refbits1) { FailStop({"c4k_refbits1", 12, 0}).RunAll(); }
TEST(FailStop, c4k_lazy) { FailStop({"c4k_lazy", 12, 4, true}).RunAll(); }
TEST(FailStop, c64k_writethrough) { FailStop({"c64k_writethrough", 16, 4, false, true}).RunAll(); }

// A raw image: a failed fsync is sticky the same way.
TEST(FailStop, RawFlushFailureIsSticky) {
  io::MemFile mem(io::MemFile::Mode::kImmediate, std::vector<std::byte>(1 << 20));
  FaultFile fault(&mem);
  RawDevice dev(std::make_unique<BorrowedFile>(&fault), 1 << 20);
  std::vector<std::byte> buf(4096, std::byte{0x5a});
  ASSERT_EQ(testing::WriteSync(dev, 0, buf), 0);
  fault.FailNthOf(OpKind::kFlush, 1);
  EXPECT_EQ(io::RunSync(nullptr, dev.Flush()), -EIO);
  // The file would take these now; the device must not.
  EXPECT_EQ(io::RunSync(nullptr, dev.Flush()), -EIO);
  EXPECT_EQ(testing::WriteSync(dev, 4096, buf), -EIO);
  EXPECT_EQ(io::RunSync(nullptr, dev.WriteZeroes(0, 4096, false)), -EIO);
  EXPECT_EQ(io::RunSync(nullptr, dev.Discard(0, 4096)), -EIO);
  std::vector<std::byte> got(4096);
  ASSERT_EQ(testing::ReadSync(dev, 0, got), 0);
  EXPECT_EQ(got, buf);
  EXPECT_FALSE(io::RunSync(nullptr, dev.Close()).ok());
}

}  // namespace
}  // namespace uq::engine
