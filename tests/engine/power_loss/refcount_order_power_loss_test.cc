// Power loss during amend -o refcount_bits (engine::ChangeRefcountOrder):
// for every point in its sequence of file operations, the power goes there
// (that operation and every later one never reach the disk) and the crashed
// image (only what completed flushes made durable, or that plus a random
// subset of the rest) must have zero corruptions by CheckImage (leaks
// allowed), have the old or the new refcount width, reopen writable and read
// back the guest bytes as they were.
//
// Scenarios: narrowing (16 -> 1, 512-byte clusters: many refcount blocks),
// widening (16 -> 64, 4 KiB clusters) and 1 -> 8 at 64 KiB clusters.
// Environment: UQ_POWER_BASE_SEED (default random, printed) seeds the random
// subsets.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "format/create.h"
#include "format/header.h"
#include "src/engine/check.h"
#include "src/engine/image.h"
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
  uint32_t new_order;
};

void PrintTo(const Scenario& s, std::ostream* os) { *os << s.name; }

// The image before the amend: a pattern written over part of the disk.
std::vector<std::byte> MakeStart(const Scenario& s, std::vector<std::byte>* guest) {
  std::unique_ptr<io::MemFile> file = testing::MakeImage(s.create);
  EXPECT_NE(file, nullptr);
  OpenOptions o;
  o.format = ImageFormat::kQcow2;
  auto dev = testing::OpenSync(file.get(), o);
  EXPECT_TRUE(dev.ok()) << dev.status();
  guest->assign(s.create.size_bytes, std::byte{0});
  for (uint64_t off = 0; off + 4096 <= s.create.size_bytes; off += 40 * 1024) {
    for (uint64_t i = 0; i < 4096; ++i) (*guest)[off + i] = std::byte(((off >> 9) + i) & 0xff);
    EXPECT_EQ(testing::WriteSync(**dev, off, std::span(guest->data() + off, 4096)), 0);
  }
  EXPECT_TRUE(io::RunSync(nullptr, (*dev)->Close()).ok());
  return file->data();
}

format::Header HeaderOf(const std::vector<std::byte>& image) {
  auto h = format::DecodeHeader(image, format::DecodeLimits{image.size()});
  EXPECT_TRUE(h.ok()) << h.status();
  return h.ok() ? *h : format::Header{};
}

// Runs the change with the power going after `budget` mutations; returns
// the mutations that happened and the crashed image.
uint64_t RunCut(const Scenario& s, const std::vector<std::byte>& start, uint64_t budget,
                std::mt19937_64* rng, std::vector<std::byte>* crashed) {
  io::MemFile base(io::MemFile::Mode::kImmediate, start);
  io::PowerLossFile power(&base, start);
  testing::PowerCut cut(&power, budget);
  format::Header h = HeaderOf(start);
  const absl::Status st = io::RunSync(nullptr, ChangeRefcountOrder(cut, h, s.new_order));
  if (budget == UINT64_MAX) {
    EXPECT_TRUE(st.ok()) << st;
  }
  *crashed = rng == nullptr ? power.Crash() : power.CrashRandomSubset(*rng);
  return cut.mutations();
}

void CheckCrashed(const Scenario& s, const std::vector<std::byte>& guest,
                  std::vector<std::byte> crashed, const std::string& what, bool finished) {
  SCOPED_TRACE(what);
  const format::Header h = HeaderOf(crashed);
  if (finished) {
    EXPECT_EQ(h.refcount_order, s.new_order);
  } else {
    EXPECT_TRUE(h.refcount_order == s.create.refcount_order || h.refcount_order == s.new_order)
        << h.refcount_order;
  }
  io::MemFile file(io::MemFile::Mode::kImmediate, std::move(crashed));
  auto check = io::RunSync(nullptr, CheckImage(file));
  ASSERT_TRUE(check.ok()) << check.status();
  EXPECT_EQ(check->corruptions, 0u);
  EXPECT_EQ(check->check_errors, 0u);
  if (finished) {
    EXPECT_EQ(check->leaks, 0u);
  }
  OpenOptions o;
  o.format = ImageFormat::kQcow2;
  auto dev = testing::OpenSync(&file, o);
  ASSERT_TRUE(dev.ok()) << dev.status();
  std::vector<std::byte> buf(guest.size());
  ASSERT_EQ(testing::ReadSync(**dev, 0, buf), 0);
  EXPECT_TRUE(buf == guest) << "guest data changed";
  ASSERT_TRUE(io::RunSync(nullptr, (*dev)->Close()).ok());
}

std::vector<Scenario> Scenarios() {
  std::vector<Scenario> v;
  format::CreateOptions c;
  c.cluster_bits = 9;
  c.size_bytes = 2 << 20;
  v.push_back({"narrow_16_to_1_512", c, 0});
  c.cluster_bits = 12;
  c.size_bytes = 8 << 20;
  v.push_back({"widen_16_to_64_4k", c, 6});
  c.cluster_bits = 16;
  c.size_bytes = 8 << 20;
  c.refcount_order = 0;
  v.push_back({"widen_1_to_8_64k", c, 3});
  return v;
}

class RefcountOrderPowerLossTest : public ::testing::TestWithParam<Scenario> {};

TEST_P(RefcountOrderPowerLossTest, EveryCrashPointLeavesOldOrNewWidth) {
  const Scenario& s = GetParam();
  std::vector<std::byte> guest;
  const std::vector<std::byte> start = MakeStart(s, &guest);
  ASSERT_EQ(HeaderOf(start).refcount_order, s.create.refcount_order);
  std::vector<std::byte> crashed;
  const uint64_t total = RunCut(s, start, UINT64_MAX, nullptr, &crashed);
  ASSERT_GT(total, 0u);
  CheckCrashed(s, guest, crashed, "no crash", true);
  const uint64_t seed = testing::EnvU64("UQ_POWER_BASE_SEED", std::random_device{}());
  std::printf("refcount_bits power loss: %s, %llu crash points, UQ_POWER_BASE_SEED=%llu\n",
              s.name.c_str(), static_cast<unsigned long long>(total),
              static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);
  for (uint64_t k = 0; k <= total; ++k) {
    RunCut(s, start, k, nullptr, &crashed);
    CheckCrashed(s, guest, crashed, "cut after " + std::to_string(k), false);
    if (HasFatalFailure()) return;
    // Few writes are ever unflushed at once: several subsets per point.
    for (int trial = 0; trial < 8; ++trial) {
      RunCut(s, start, k, &rng, &crashed);
      CheckCrashed(s, guest, crashed, "random subset, cut after " + std::to_string(k), false);
      if (HasFatalFailure()) return;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Scenarios, RefcountOrderPowerLossTest, ::testing::ValuesIn(Scenarios()),
                         [](const ::testing::TestParamInfo<Scenario>& info) {
                           return info.param.name;
                         });

}  // namespace
}  // namespace uq::engine
