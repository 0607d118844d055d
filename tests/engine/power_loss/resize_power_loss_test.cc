// Power loss during a resize (src/engine/resize.h): for every point in the
// resize's sequence of file operations, the power goes there (that operation
// and every later one never reach the disk) and the crashed image (only what
// completed flushes made durable, or that plus a random subset of the rest)
// must have zero corruptions by CheckImage (leaks allowed), reopen writable,
// be at the old or the new size, and read back the guest bytes below the
// smaller of the two sizes as they were before the resize.
//
// Scenarios: growing a 512-byte-cluster image so its L1 table moves,
// shrinking through data (v3, and v2 without a dirty bit), a shrink that
// drops whole L2 tables, and preallocated grows (metadata, and full into an
// extended-L2 image); a grown range must read as zeros. And a preallocated
// grow whose zeros cannot be written gives its clusters back.
// Environment: UQ_POWER_BASE_SEED (default random, printed) seeds the
// random subsets.
#include <gtest/gtest.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "format/create.h"
#include "src/engine/check.h"
#include "src/engine/image.h"
#include "src/engine/qcow2_image.h"
#include "src/engine/resize.h"
#include "src/io/fault_file.h"
#include "src/io/file_wrapper.h"
#include "src/io/mem_file.h"
#include "src/io/power_loss_file.h"
#include "src/io/run_sync.h"
#include "tests/engine/power_loss/power_cut.h"
#include "tests/engine/test_util.h"

namespace uq::engine {
namespace {

struct Scenario {
  std::string name;
  format::CreateOptions create;
  uint64_t new_size_bytes;
  GrowPreallocation prealloc = GrowPreallocation::kOff;
};

void PrintTo(const Scenario& s, std::ostream* os) { *os << s.name; }

// The image before the resize: `create` with a pattern written over most of
// the disk (so a shrink frees data clusters and L2 tables).
std::vector<std::byte> MakeStart(const Scenario& s, std::vector<std::byte>* guest) {
  std::unique_ptr<io::MemFile> file = testing::MakeImage(s.create);
  EXPECT_NE(file, nullptr);
  OpenOptions o;
  o.format = ImageFormat::kQcow2;
  auto dev = testing::OpenSync(file.get(), o);
  EXPECT_TRUE(dev.ok()) << dev.status();
  guest->assign(s.create.size_bytes, std::byte{0});
  const uint64_t step = 96 * 1024;
  for (uint64_t off = 0; off + 8192 <= s.create.size_bytes; off += step) {
    for (uint64_t i = 0; i < 8192; ++i) (*guest)[off + i] = std::byte(((off >> 9) + i) & 0xff);
    EXPECT_EQ(testing::WriteSync(**dev, off, std::span(guest->data() + off, 8192)), 0);
  }
  EXPECT_TRUE(io::RunSync(nullptr, (*dev)->Close()).ok());
  return file->data();
}

// Runs the resize with the power going after `budget` mutations; returns the
// mutations that happened and the crashed image.
uint64_t RunCut(const Scenario& s, const std::vector<std::byte>& start, uint64_t budget,
                std::mt19937_64* rng, std::vector<std::byte>* crashed) {
  io::MemFile base(io::MemFile::Mode::kImmediate, start);
  io::PowerLossFile power(&base, start);
  auto cut = std::make_unique<testing::PowerCut>(&power, budget);
  testing::PowerCut* cut_ptr = cut.get();
  OpenOptions o;
  o.format = ImageFormat::kQcow2;
  auto opened = io::RunSync(nullptr, OpenImage(std::move(cut), o));
  EXPECT_TRUE(opened.ok()) << opened.status();
  if (!opened.ok()) return 0;
  auto* image = dynamic_cast<Qcow2Image*>(opened->get());
  absl::Status st = io::RunSync(nullptr, ResizeImage(*image, s.new_size_bytes, s.prealloc));
  if (st.ok()) st = io::RunSync(nullptr, image->Close());
  const uint64_t mutations = cut_ptr->mutations();
  opened->reset();
  *crashed = rng == nullptr ? power.Crash() : power.CrashRandomSubset(*rng);
  return mutations;
}

void CheckCrashed(const Scenario& s, const std::vector<std::byte>& guest,
                  std::vector<std::byte> crashed, const std::string& what) {
  SCOPED_TRACE(what);
  // Incompatible feature bit 0 (dirty): bit 0 of the header's byte 79.
  const bool dirty = crashed.size() > 79 && (static_cast<uint8_t>(crashed[79]) & 1) != 0;
  io::MemFile file(io::MemFile::Mode::kImmediate, std::move(crashed));
  auto check = io::RunSync(nullptr, CheckImage(file));
  ASSERT_TRUE(check.ok()) << check.status();
  // A dirty image's refcounts are rebuilt on open: judge it after that.
  OpenOptions o;
  o.format = ImageFormat::kQcow2;
  auto dev = testing::OpenSync(&file, o);
  ASSERT_TRUE(dev.ok()) << dev.status();
  const uint64_t size = (*dev)->size_bytes();
  EXPECT_TRUE(size == s.create.size_bytes || size == s.new_size_bytes) << size;
  const uint64_t keep = std::min(size, std::min(s.create.size_bytes, s.new_size_bytes));
  std::vector<std::byte> buf(keep);
  ASSERT_EQ(testing::ReadSync(**dev, 0, buf), 0);
  EXPECT_TRUE(std::equal(buf.begin(), buf.end(), guest.begin())) << "guest data changed";
  // A grown disk reads zeros past its old end, preallocated or not.
  if (size > keep && s.new_size_bytes > s.create.size_bytes) {
    std::vector<std::byte> added(size - keep, std::byte{1});
    ASSERT_EQ(testing::ReadSync(**dev, keep, added), 0);
    EXPECT_TRUE(std::all_of(added.begin(), added.end(), [](std::byte b) {
      return b == std::byte{0};
    })) << "the grown range does not read as zeros";
  }
  ASSERT_TRUE(io::RunSync(nullptr, (*dev)->Close()).ok());
  auto after = io::RunSync(nullptr, CheckImage(file));
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->corruptions, 0u);
  // Before the reopen only a dirty image (refcounts rebuilt on open) may
  // look corrupt.
  if (!dirty) {
    EXPECT_EQ(check->corruptions, 0u);
  }
}

std::vector<Scenario> Scenarios() {
  std::vector<Scenario> v;
  format::CreateOptions c;
  c.cluster_bits = 9;
  c.size_bytes = 4 << 20;
  v.push_back({"grow_moves_l1_512", c, 40 << 20});
  v.push_back({"shrink_512", c, (1 << 20) + 512});
  c.cluster_bits = 12;
  c.size_bytes = 8 << 20;
  v.push_back({"shrink_drops_tables_4k", c, 1 << 20});
  // Preallocated grows from a size inside a cluster: runs of new clusters,
  // the first cluster's entry, a new L2 table.
  c.size_bytes = (8 << 20) - 1536;
  v.push_back({"grow_metadata_4k", c, 10 << 20, GrowPreallocation::kMetadata});
  c.extended_l2 = true;
  c.cluster_bits = 15;
  v.push_back({"grow_full_extended_32k", c, 12 << 20, GrowPreallocation::kFull});
  c.extended_l2 = false;
  c.version = 2;
  c.cluster_bits = 16;
  v.push_back({"shrink_v2_64k", c, 3 << 20});
  return v;
}

class ResizePowerLossTest : public ::testing::TestWithParam<Scenario> {};

TEST_P(ResizePowerLossTest, EveryCrashPointLeavesOldOrNewImage) {
  const Scenario& s = GetParam();
  std::vector<std::byte> guest;
  const std::vector<std::byte> start = MakeStart(s, &guest);
  std::vector<std::byte> crashed;
  const uint64_t total = RunCut(s, start, UINT64_MAX, nullptr, &crashed);
  ASSERT_GT(total, 0u);
  CheckCrashed(s, guest, crashed, "no crash");
  const uint64_t seed = testing::EnvU64("UQ_POWER_BASE_SEED", std::random_device{}());
  std::printf("resize power loss: %s, %llu crash points, UQ_POWER_BASE_SEED=%llu\n", s.name.c_str(),
              static_cast<unsigned long long>(total), static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);
  for (uint64_t k = 0; k <= total; ++k) {
    RunCut(s, start, k, nullptr, &crashed);
    CheckCrashed(s, guest, crashed, "cut after " + std::to_string(k));
    if (HasFatalFailure()) return;
    RunCut(s, start, k, &rng, &crashed);
    CheckCrashed(s, guest, crashed, "random subset, cut after " + std::to_string(k));
    if (HasFatalFailure()) return;
  }
}

INSTANTIATE_TEST_SUITE_P(Scenarios, ResizePowerLossTest, ::testing::ValuesIn(Scenarios()),
                         [](const ::testing::TestParamInfo<Scenario>& info) {
                           return info.param.name;
                         });

// A preallocated grow whose zeros cannot be written fails as a whole: the
// clusters it took are given back (no leak), the disk keeps its old size
// and bytes, and the image is clean.
TEST(ResizePreallocationTest, FailedFillGivesItsClustersBack) {
  Scenario s;
  s.create.cluster_bits = 16;
  s.create.size_bytes = 4 << 20;
  std::vector<std::byte> guest;
  const std::vector<std::byte> start = MakeStart(s, &guest);
  io::MemFile base(io::MemFile::Mode::kImmediate, start);
  auto fault = std::make_unique<io::FaultFile>(&base);
  // Every write past the old end of the file: the new clusters' zeros.
  fault->AddRule({.kinds = io::OpKindBit(io::OpKind::kWrite),
                  .offset_bytes = start.size(),
                  .length_bytes = uint64_t{1} << 40,
                  .error = ENOSPC,
                  .once = false});
  OpenOptions o;
  o.format = ImageFormat::kQcow2;
  auto opened = io::RunSync(nullptr, OpenImage(std::move(fault), o));
  ASSERT_TRUE(opened.ok()) << opened.status();
  auto* image = dynamic_cast<Qcow2Image*>(opened->get());
  const absl::Status st =
      io::RunSync(nullptr, ResizeImage(*image, 6 << 20, GrowPreallocation::kFull));
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("Failed to preallocate"), std::string::npos) << st;
  EXPECT_EQ(image->size_bytes(), s.create.size_bytes);
  EXPECT_TRUE(io::RunSync(nullptr, image->Close()).ok());
  opened->reset();
  testing::ExpectClean(base);
  auto dev = testing::OpenSync(&base, o);
  ASSERT_TRUE(dev.ok()) << dev.status();
  EXPECT_EQ((*dev)->size_bytes(), s.create.size_bytes);
  std::vector<std::byte> buf(s.create.size_bytes);
  ASSERT_EQ(testing::ReadSync(**dev, 0, buf), 0);
  EXPECT_TRUE(buf == guest);
  ASSERT_TRUE(io::RunSync(nullptr, (*dev)->Close()).ok());
}

}  // namespace
}  // namespace uq::engine
