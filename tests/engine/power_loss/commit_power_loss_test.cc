// Power loss during a commit (qcow2-img commit, tools/cmd_commit.cc): the
// sequence it runs on the engine, with one power budget over both files.
// Every cluster the overlay allocates is written into its backing file (data
// as the overlay reads it, zeros with WriteZeroes), the backing file is
// closed (flushed), then the overlay is emptied (Device::MakeEmpty) and
// closed. For every point in that sequence the power goes there (that
// mutation and every later one, in either file, never reach the disk), and
// the crashed files (only what completed flushes made durable, or that plus
// a random subset of the rest) must have zero corruptions each by CheckImage
// (a dirty image is judged after the reopen that repairs it), and:
//   - the overlay reads exactly as before the commit (what qemu-img commit
//     promises the overlay's user at every moment);
//   - each cluster of the backing file holds its old bytes or the committed
//     ones, and all of them are the committed ones once anything of the
//     emptying reached the overlay's file;
//   - without a crash, the overlay allocates nothing (it reads as its
//     backing file everywhere, zero clusters included) and neither file leaks.
// Environment: UQ_POWER_BASE_SEED (default random, printed) seeds the random
// subsets.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <ostream>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "format/create.h"
#include "src/engine/check.h"
#include "src/engine/image.h"
#include "src/engine/qcow2_image.h"
#include "src/engine/snapshot.h"
#include "src/io/mem_file.h"
#include "src/io/power_loss_file.h"
#include "src/io/run_sync.h"
#include "tests/engine/power_loss/power_cut.h"
#include "tests/engine/test_util.h"

namespace uq::engine {
namespace {

using Bytes = std::vector<std::byte>;

struct Scenario {
  std::string name;
  format::CreateOptions base;     // the backing file
  format::CreateOptions overlay;  // backing_file "base" is set by the test
  bool snapshot = false;          // the overlay holds an internal snapshot
};

void PrintTo(const Scenario& s, std::ostream* os) { *os << s.name; }

// The two files before the commit, and what each reads as.
struct Start {
  Bytes base_file, overlay_file;
  Bytes base_before;             // the backing file's disk
  Bytes base_after;              // the backing file's disk after the commit
  Bytes overlay_view;            // the overlay's disk (unchanged by the commit)
  std::set<uint64_t> allocated;  // guest offsets of the clusters the overlay allocates
  uint64_t cluster_bytes = 0;
};

// An opener that serves `file` as the backing file "base", read-only.
FileOpener BaseOpener(io::BlockFile* file) {
  return [file](const std::string& path,
                bool /*writable*/) -> absl::StatusOr<std::unique_ptr<io::BlockFile>> {
    if (path != "base") return absl::NotFoundError(path);
    return std::make_unique<testing::BorrowedFile>(file, true);
  };
}

OpenOptions OverlayOptions(io::BlockFile* base) {
  OpenOptions o;
  o.format = ImageFormat::kQcow2;
  o.opener = BaseOpener(base);
  return o;
}

OpenOptions BaseOptions() {
  OpenOptions o;
  o.format = ImageFormat::kQcow2;
  return o;
}

Bytes ReadAll(Device& d) {
  Bytes b(d.size_bytes());
  EXPECT_EQ(testing::ReadSync(d, 0, b), 0);
  return b;
}

// Writes into the overlay, recording the clusters it allocates: data every
// `step` bytes (8 KiB, most of them across a cluster boundary), zeros both
// ways, a compressed cluster every 16 clusters.
void Scribble(Device& d, uint64_t step, uint8_t fill, std::set<uint64_t>* allocated) {
  const uint64_t size = d.size_bytes();
  const uint64_t cs = dynamic_cast<Qcow2Image&>(d).cluster_bytes();
  auto touch = [&](uint64_t off, uint64_t n) {
    for (uint64_t c = off / cs * cs; c < off + n; c += cs) allocated->insert(c);
  };
  Bytes buf(8192);
  for (uint64_t off = cs / 2; off + buf.size() <= size; off += step) {
    for (size_t i = 0; i < buf.size(); ++i) buf[i] = std::byte((fill + (off >> 9) + i) & 0xff);
    ASSERT_EQ(testing::WriteSync(d, off, buf), 0);
    touch(off, buf.size());
  }
  for (uint64_t off = 2 * cs; off + 2 * cs <= size; off += 11 * cs) {
    const bool unmap = (off / cs) % 2 == 0;
    ASSERT_EQ(io::RunSync(nullptr, d.WriteZeroes(off, 2 * cs, unmap)), 0);
    touch(off, 2 * cs);
  }
  Bytes cluster(cs);
  for (uint64_t off = 5 * cs; off + cs <= size; off += 16 * cs) {
    for (uint64_t i = 0; i < cs; ++i) cluster[i] = std::byte((fill + i / 9) & 0xff);
    ASSERT_EQ(io::RunSync(nullptr, d.WriteCompressed(off, cluster)), 0);
    touch(off, cs);
  }
}

Start MakeStart(const Scenario& s) {
  Start st;
  std::unique_ptr<io::MemFile> base = testing::MakeImage(s.base);
  EXPECT_NE(base, nullptr);
  {
    auto dev = testing::OpenSync(base.get(), BaseOptions());
    EXPECT_TRUE(dev.ok()) << dev.status();
    if (!dev.ok()) return st;
    // The whole backing disk holds bytes the overlay's zeros must hide.
    Bytes chunk(256 * 1024);
    for (uint64_t off = 0; off < s.base.size_bytes; off += chunk.size()) {
      for (size_t i = 0; i < chunk.size(); ++i) chunk[i] = std::byte(0x80 | ((off >> 12) + i) % 97);
      EXPECT_EQ(testing::WriteSync(**dev, off, chunk), 0);
    }
    st.base_before = ReadAll(**dev);
    EXPECT_TRUE(io::RunSync(nullptr, (*dev)->Close()).ok());
  }
  format::CreateOptions oc = s.overlay;
  oc.backing_file = "base";
  oc.backing_format = "qcow2";
  std::unique_ptr<io::MemFile> overlay = testing::MakeImage(oc);
  EXPECT_NE(overlay, nullptr);
  {
    auto dev = testing::OpenSync(overlay.get(), OverlayOptions(base.get()));
    EXPECT_TRUE(dev.ok()) << dev.status();
    if (!dev.ok()) return st;
    Qcow2Image& q = dynamic_cast<Qcow2Image&>(**dev);
    st.cluster_bytes = q.cluster_bytes();
    Scribble(**dev, 96 * 1024, 1, &st.allocated);
    if (s.snapshot) {
      absl::Status snap = io::RunSync(nullptr, CreateSnapshot(q, {"one", 1700000000, 0}));
      EXPECT_TRUE(snap.ok()) << snap;
    }
    Scribble(**dev, 160 * 1024, 2, &st.allocated);
    st.overlay_view = ReadAll(**dev);
    EXPECT_TRUE(io::RunSync(nullptr, (*dev)->Close()).ok());
  }
  st.base_after = st.base_before;
  for (uint64_t c : st.allocated) {
    const uint64_t n = std::min<uint64_t>(st.cluster_bytes, s.base.size_bytes - c);
    std::copy_n(st.overlay_view.begin() + c, n, st.base_after.begin() + c);
  }
  st.base_file = base->data();
  st.overlay_file = overlay->data();
  return st;
}

// The commit as tools/cmd_commit.cc runs it, cluster by cluster.
absl::Status Commit(const Start& st, Device& overlay, Device& base) {
  Bytes buf(st.cluster_bytes);
  for (uint64_t c : st.allocated) {
    const uint64_t n = std::min<uint64_t>(st.cluster_bytes, overlay.size_bytes() - c);
    std::span<std::byte> piece(buf.data(), n);
    if (testing::ReadSync(overlay, c, piece) < 0) return absl::DataLossError("read");
    const bool zero =
        std::all_of(piece.begin(), piece.end(), [](std::byte b) { return b == std::byte{0}; });
    int r = 0;
    if (zero) {
      r = io::RunSync(nullptr, base.WriteZeroes(c, n, true));
    } else {
      r = testing::WriteSync(base, c, piece);
    }
    if (r < 0) return absl::DataLossError("write");
  }
  absl::Status closed = io::RunSync(nullptr, base.Close());
  if (!closed.ok()) return closed;
  if (io::RunSync(nullptr, overlay.MakeEmpty()) < 0) return absl::DataLossError("empty");
  return io::RunSync(nullptr, overlay.Close());
}

struct Crashed {
  Bytes base, overlay;
};

// Runs the commit with the power going after `budget` mutations of either
// file; returns the mutations that happened.
uint64_t RunCut(const Start& st, uint64_t budget, std::mt19937_64* rng, Crashed* out) {
  io::MemFile base_mem(io::MemFile::Mode::kImmediate, st.base_file);
  io::MemFile overlay_mem(io::MemFile::Mode::kImmediate, st.overlay_file);
  io::PowerLossFile base_power(&base_mem, st.base_file);
  io::PowerLossFile overlay_power(&overlay_mem, st.overlay_file);
  testing::PowerBudget power(budget);
  auto base_cut = std::make_unique<testing::PowerCut>(&base_power, &power);
  auto overlay_cut = std::make_unique<testing::PowerCut>(&overlay_power, &power);
  io::BlockFile* base_reads = base_cut.get();
  auto base = io::RunSync(nullptr, OpenImage(std::move(base_cut), BaseOptions()));
  EXPECT_TRUE(base.ok()) << base.status();
  if (!base.ok()) return 0;
  auto overlay =
      io::RunSync(nullptr, OpenImage(std::move(overlay_cut), OverlayOptions(base_reads)));
  EXPECT_TRUE(overlay.ok()) << overlay.status();
  if (!overlay.ok()) return 0;
  const absl::Status s = Commit(st, **overlay, **base);
  if (budget == UINT64_MAX) {
    EXPECT_TRUE(s.ok()) << s;
  }
  overlay->reset();
  base->reset();
  if (rng == nullptr) {
    out->base = base_power.Crash();
    out->overlay = overlay_power.Crash();
  } else {
    out->base = base_power.CrashRandomSubset(*rng);
    out->overlay = overlay_power.CrashRandomSubset(*rng);
  }
  return power.mutations;
}

bool Dirty(const Bytes& image) {
  // Incompatible feature bit 0 (dirty): bit 0 of byte 79; v2 has none.
  return image.size() > 79 && static_cast<uint8_t>(image[7]) >= 3 &&
         (static_cast<uint8_t>(image[79]) & 1) != 0;
}

void ExpectNoCorruptions(io::MemFile& file, const char* which, bool may_be_dirty) {
  if (may_be_dirty) return;
  auto check = io::RunSync(nullptr, CheckImage(file));
  ASSERT_TRUE(check.ok()) << which << ": " << check.status();
  EXPECT_EQ(check->corruptions, 0u)
      << which << ": " << (check->messages.empty() ? "" : check->messages[0]);
}

void CheckCrashed(const Start& st, Crashed c, const std::string& what, bool finished) {
  SCOPED_TRACE(what);
  const bool overlay_touched = c.overlay != st.overlay_file;
  io::MemFile base(io::MemFile::Mode::kImmediate, c.base);
  io::MemFile overlay(io::MemFile::Mode::kImmediate, c.overlay);
  ExpectNoCorruptions(base, "backing file", Dirty(c.base));
  ExpectNoCorruptions(overlay, "overlay", Dirty(c.overlay));
  Bytes base_view;
  {
    auto dev = testing::OpenSync(&base, BaseOptions());
    ASSERT_TRUE(dev.ok()) << dev.status();
    base_view = ReadAll(**dev);
    ASSERT_TRUE(io::RunSync(nullptr, (*dev)->Close()).ok());
  }
  const uint64_t cs = st.cluster_bytes;
  for (uint64_t off = 0; off < base_view.size(); off += cs) {
    const uint64_t n = std::min<uint64_t>(cs, base_view.size() - off);
    const bool old_bytes = std::equal(base_view.begin() + off, base_view.begin() + off + n,
                                      st.base_before.begin() + off);
    const bool new_bytes = std::equal(base_view.begin() + off, base_view.begin() + off + n,
                                      st.base_after.begin() + off);
    ASSERT_TRUE(new_bytes || (old_bytes && !overlay_touched))
        << "backing file cluster at " << off << ": "
        << (old_bytes ? "old bytes after the emptying began" : "neither old nor committed bytes");
  }
  {
    auto dev = testing::OpenSync(&overlay, OverlayOptions(&base));
    ASSERT_TRUE(dev.ok()) << dev.status();
    EXPECT_TRUE(ReadAll(**dev) == st.overlay_view) << "the overlay reads differently";
    ASSERT_TRUE(io::RunSync(nullptr, (*dev)->Close()).ok());
  }
  for (io::MemFile* f : {&base, &overlay}) {
    auto check = io::RunSync(nullptr, CheckImage(*f));
    ASSERT_TRUE(check.ok()) << check.status();
    EXPECT_EQ(check->corruptions, 0u) << (check->messages.empty() ? "" : check->messages[0]);
    if (finished) {
      EXPECT_EQ(check->leaks, 0u);
    }
  }
  if (finished) {
    // Emptied: over a backing disk of 0xee bytes the overlay reads 0xee
    // everywhere (a zero cluster left behind would read zeros).
    format::CreateOptions fo;
    fo.size_bytes = base_view.size();
    fo.cluster_bits = 16;
    std::unique_ptr<io::MemFile> fake = testing::MakeImage(fo);
    ASSERT_NE(fake, nullptr);
    const Bytes ee(base_view.size(), std::byte{0xee});
    {
      auto dev = testing::OpenSync(fake.get(), BaseOptions());
      ASSERT_TRUE(dev.ok()) << dev.status();
      ASSERT_EQ(testing::WriteSync(**dev, 0, ee), 0);
      ASSERT_TRUE(io::RunSync(nullptr, (*dev)->Close()).ok());
    }
    auto dev = testing::OpenSync(&overlay, OverlayOptions(fake.get()));
    ASSERT_TRUE(dev.ok()) << dev.status();
    EXPECT_TRUE(ReadAll(**dev) == ee) << "the overlay still allocates clusters";
    ASSERT_TRUE(io::RunSync(nullptr, (*dev)->Close()).ok());
  }
}

std::vector<Scenario> Scenarios() {
  std::vector<Scenario> v;
  format::CreateOptions c;
  c.size_bytes = 4 << 20;
  c.cluster_bits = 16;
  v.push_back({"c64k", c, c});
  v.push_back({"c64k_with_snapshot", c, c, true});
  format::CreateOptions lazy = c;
  lazy.lazy_refcounts = true;
  v.push_back({"lazy_refcounts", c, lazy});
  format::CreateOptions small = c;
  small.cluster_bits = 12;
  small.size_bytes = 2 << 20;
  v.push_back({"c4k", small, small});
  format::CreateOptions ext = c;
  ext.cluster_bits = 15;
  ext.extended_l2 = true;
  v.push_back({"extended_l2", c, ext});
  format::CreateOptions v2 = c;
  v2.version = 2;
  v.push_back({"v2", v2, v2});
  return v;
}

class CommitPowerLossTest : public ::testing::TestWithParam<Scenario> {};

TEST_P(CommitPowerLossTest, EveryCrashPointKeepsTheOverlaysContents) {
  const Scenario& s = GetParam();
  const Start st = MakeStart(s);
  ASSERT_FALSE(HasFailure());
  ASSERT_FALSE(st.allocated.empty());
  ASSERT_NE(st.base_before, st.base_after);
  Crashed crashed;
  const uint64_t total = RunCut(st, UINT64_MAX, nullptr, &crashed);
  ASSERT_GT(total, 0u);
  CheckCrashed(st, crashed, "no crash", true);
  const uint64_t seed = testing::EnvU64("UQ_POWER_BASE_SEED", std::random_device{}());
  std::printf("commit power loss: %s, %llu crash points, UQ_POWER_BASE_SEED=%llu\n", s.name.c_str(),
              static_cast<unsigned long long>(total), static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);
  for (uint64_t k = 0; k <= total; ++k) {
    RunCut(st, k, nullptr, &crashed);
    CheckCrashed(st, crashed, "cut after " + std::to_string(k), false);
    if (HasFailure()) return;
    RunCut(st, k, &rng, &crashed);
    CheckCrashed(st, crashed, "random subset, cut after " + std::to_string(k), false);
    if (HasFailure()) return;
  }
}

INSTANTIATE_TEST_SUITE_P(Scenarios, CommitPowerLossTest, ::testing::ValuesIn(Scenarios()),
                         [](const ::testing::TestParamInfo<Scenario>& info) {
                           return info.param.name;
                         });

}  // namespace
}  // namespace uq::engine
