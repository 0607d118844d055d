// Power loss during amend -o compat=0.10 (the downgrade from version 3 to 2):
// engine::ExpandZeroClusters, then the header re-encoded as version 2 and
// written as the whole first cluster in one write, then a Flush. The header
// step mirrors tools/cmd_amend.cc's final write (Amended() for a downgrade:
// version 2, no compatible or autoclear bits, zlib).
//
// For every point in that sequence of file operations, the power goes there
// (that operation and every later one never reach the disk) and the crashed
// image (only what completed flushes made durable, or that plus a random
// subset of the rest) must be version 2 or 3, have zero corruptions and zero
// check errors by CheckImage (leaks allowed), hold no zero cluster if it is
// version 2 (that version has no zero flag), reopen writable, and read back
// the active disk and the snapshot exactly as they were.
//
// The start image holds data, plain zero clusters (zero flag, no host
// cluster), preallocated zero clusters (zero flag on a host cluster that
// still holds old data: the test's sharpest edge, since a table rewritten
// before its zeros are durable shows that data), compressed clusters and one
// internal snapshot that differs from the active disk. The engine writes no
// zero flag without a backing file (an unmapped zero cluster becomes
// unallocated), so the plain zero clusters are planted as QEMU writes them:
// the flag set on unallocated entries.
//
// Environment: UQ_POWER_BASE_SEED (default random, printed) seeds the random
// subsets.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <initializer_list>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "format/create.h"
#include "format/endian.h"
#include "format/header.h"
#include "format/snapshot.h"
#include "format/status_macros.h"
#include "format/tables.h"
#include "src/engine/check.h"
#include "src/engine/expand_zeros.h"
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

constexpr char kSnapshot[] = "snap";

struct Scenario {
  std::string name;
  format::CreateOptions create;
  // Clusters between two of each special kind (zeroes, compressed, ...): a
  // multiple of 8 that keeps the crash points of small clusters few.
  uint64_t stride;
};

void PrintTo(const Scenario& s, std::ostream* os) { *os << s.name; }

// The guest-visible state: the active disk and the snapshot's.
struct State {
  Bytes active;
  Bytes snapshot;
};

format::Header HeaderOf(const Bytes& image) {
  auto h = format::DecodeHeader(image, format::DecodeLimits{image.size()});
  EXPECT_TRUE(h.ok()) << h.status();
  return h.ok() ? *h : format::Header{};
}

std::vector<format::Snapshot> SnapshotsOf(io::BlockFile& file, const format::Header& h) {
  auto table = io::RunSync(nullptr, ReadSnapshotTable(file, h));
  EXPECT_TRUE(table.ok()) << table.status();
  return table.ok() ? *table : std::vector<format::Snapshot>{};
}

L2Census CensusOf(io::MemFile& file) {
  const format::Header h = HeaderOf(file.data());
  auto census = io::RunSync(nullptr, CensusL2(file, h, SnapshotsOf(file, h)));
  EXPECT_TRUE(census.ok()) << census.status();
  return census.ok() ? *census : L2Census{};
}

// Guest cluster `c` of `guest` as `fill` derives it.
void Pattern(Bytes* guest, uint64_t cs, uint64_t c, uint8_t fill) {
  for (uint64_t i = 0; i < cs; ++i) (*guest)[c * cs + i] = std::byte((fill + c * 13 + i) & 0xff);
}

void WriteCluster(Device& d, Bytes* guest, uint64_t cs, uint64_t c, uint8_t fill) {
  Pattern(guest, cs, c, fill);
  ASSERT_EQ(testing::WriteSync(d, c * cs, std::span(guest->data() + c * cs, cs)), 0);
}

void ZeroCluster(Device& d, Bytes* guest, uint64_t cs, uint64_t c, bool may_unmap) {
  std::fill(guest->begin() + c * cs, guest->begin() + (c + 1) * cs, std::byte{0});
  ASSERT_EQ(io::RunSync(nullptr, d.WriteZeroes(c * cs, cs, may_unmap)), 0);
}

// Sets the zero flag on the unallocated entries of guest clusters `c` with
// c % stride in `residues`, in every L2 table of the active disk and the
// snapshot (guest contents unchanged: both read as zeros without a backing
// file). QEMU writes such entries for any unmapping write-zeroes.
void PlantPlainZeros(Bytes* image, uint64_t stride, std::initializer_list<uint64_t> residues) {
  io::MemFile file(io::MemFile::Mode::kImmediate, *image);
  const format::Header h = HeaderOf(*image);
  const uint64_t cs = h.cluster_size();
  const uint64_t per_table = cs / 8;
  const uint64_t disk_clusters = h.size_bytes / cs;
  std::vector<std::pair<uint64_t, uint32_t>> l1s = {{h.l1_table_offset, h.l1_size}};
  for (const format::Snapshot& s : SnapshotsOf(file, h))
    l1s.emplace_back(s.l1_table_offset, s.l1_size);
  for (const auto& [l1_offset, l1_size] : l1s) {
    for (uint64_t l1_index = 0; l1_index < l1_size; ++l1_index) {
      const uint64_t l2 =
          format::LoadBE64(image->data() + l1_offset + l1_index * 8) & format::kOffsetMask;
      if (l2 == 0) continue;
      for (uint64_t i = 0; i < per_table; ++i) {
        const uint64_t c = l1_index * per_table + i;
        bool planted = false;
        for (uint64_t r : residues) planted |= c % stride == r;
        if (!planted || c >= disk_clusters) continue;
        std::byte* entry = image->data() + l2 + i * 8;
        const uint64_t e = format::LoadBE64(entry);
        if (e == 0 || e == format::kOflagZero) {
          format::StoreBE64(entry, format::kOflagZero);
        } else {
          ADD_FAILURE() << "guest cluster " << c << " is allocated: " << e;
        }
      }
    }
  }
}

// The image before the downgrade, and its state. Before the snapshot: data,
// compressed clusters, preallocated and unmapped zeroes; the snapshot; then
// data over part of it, preallocated zeroes over fresh clusters, zeroes over
// shared ones, data over preallocated zero clusters the snapshot shares.
Bytes MakeStart(const Scenario& s, State* st) {
  std::unique_ptr<io::MemFile> file = testing::MakeImage(s.create);
  EXPECT_NE(file, nullptr);
  if (file == nullptr) return {};
  OpenOptions o;
  o.format = ImageFormat::kQcow2;
  auto dev = testing::OpenSync(file.get(), o);
  EXPECT_TRUE(dev.ok()) << dev.status();
  if (!dev.ok()) return {};
  Device& d = **dev;
  const uint64_t cs = uint64_t{1} << s.create.cluster_bits;
  const uint64_t n = s.create.size_bytes / cs;
  const uint64_t k = s.stride;
  Bytes& g = st->active;
  g.assign(s.create.size_bytes, std::byte{0});
  for (uint64_t c = 0; c < n; ++c) {
    if (c % 4 != 3) WriteCluster(d, &g, cs, c, 1);
  }
  for (uint64_t c = 0; c < n; ++c) {
    if (c % (4 * k) == 5) {
      for (uint64_t i = 0; i < cs; ++i) g[c * cs + i] = std::byte((c + i / 7) & 0xff);
      EXPECT_EQ(io::RunSync(nullptr, d.WriteCompressed(c * cs, std::span(g.data() + c * cs, cs))),
                0);
    }
    if (c % k == 1) ZeroCluster(d, &g, cs, c, false);               // preallocated
    if (c % k == 2 || c % k == 3) ZeroCluster(d, &g, cs, c, true);  // unmapped
  }
  absl::Status snap = io::RunSync(
      nullptr, CreateSnapshot(dynamic_cast<Qcow2Image&>(d), {kSnapshot, 1700000000, 0}));
  EXPECT_TRUE(snap.ok()) << snap;
  st->snapshot = g;
  for (uint64_t c = 0; c < n; ++c) {
    if (c % 8 == 4) WriteCluster(d, &g, cs, c, 2);
  }
  for (uint64_t c = 0; c < n; ++c) {
    if (c % k == 4) ZeroCluster(d, &g, cs, c, false);       // preallocated, fresh cluster
    if (c % k == 8) ZeroCluster(d, &g, cs, c, false);       // shared: becomes unallocated
    if (c % (2 * k) == 6) ZeroCluster(d, &g, cs, c, true);  // shared, unmapped
    if (c % (2 * k) == 1) WriteCluster(d, &g, cs, c, 3);    // over a shared preallocated one
  }
  EXPECT_TRUE(io::RunSync(nullptr, d.Close()).ok());
  dev->reset();
  Bytes image = file->data();
  PlantPlainZeros(&image, k, {2, 3});
  return image;
}

// What cmd_amend.cc's Amended() makes of a version 3 header for compat=0.10.
format::Header Downgraded(format::Header h) {
  h.compatible_features = 0;
  h.autoclear_features = 0;
  h.incompatible_features &= ~format::kIncompatCompression;
  h.compression_type = format::CompressionType::kZlib;
  h.version = 2;
  return h;
}

// amend -o compat=0.10 on a clean image without bitmaps: zero clusters
// expanded, then the first cluster re-encoded, written once and flushed.
Task<absl::Status> Downgrade(io::BlockFile& file, const format::Header& h,
                             const std::vector<format::Snapshot>& snapshots) {
  UQ_CO_RETURN_IF_ERROR(co_await ExpandZeroClusters(file, h, snapshots));
  Bytes cluster(h.cluster_size());
  UQ_CO_RETURN_IF_ERROR(format::EncodeHeader(Downgraded(h), cluster));
  const int64_t written = co_await file.Write(0, cluster);
  if (written < 0) co_return absl::DataLossError("header write failed");
  const int flushed = co_await file.Flush();
  if (flushed < 0) co_return absl::DataLossError("header flush failed");
  co_return absl::OkStatus();
}

// Runs the downgrade with the power going after `budget` mutations; returns
// the mutations that happened and the crashed image.
uint64_t RunCut(const Bytes& start, uint64_t budget, std::mt19937_64* rng, Bytes* crashed) {
  io::MemFile base(io::MemFile::Mode::kImmediate, start);
  io::PowerLossFile power(&base, start);
  testing::PowerCut cut(&power, budget);
  const format::Header h = HeaderOf(start);
  const std::vector<format::Snapshot> snapshots = SnapshotsOf(cut, h);
  const absl::Status st = io::RunSync(nullptr, Downgrade(cut, h, snapshots));
  if (budget == UINT64_MAX) {
    EXPECT_TRUE(st.ok()) << st;
  }
  *crashed = rng == nullptr ? power.Crash() : power.CrashRandomSubset(*rng);
  return cut.mutations();
}

Bytes ReadAll(io::MemFile& file, const OpenOptions& o) {
  auto dev = testing::OpenSync(&file, o);
  EXPECT_TRUE(dev.ok()) << dev.status();
  if (!dev.ok()) return {};
  Bytes bytes((*dev)->size_bytes());
  EXPECT_EQ(testing::ReadSync(**dev, 0, bytes), 0);
  EXPECT_TRUE(io::RunSync(nullptr, (*dev)->Close()).ok());
  return bytes;
}

// The active disk (opened writable) and the snapshot (read-only).
State ReadState(io::MemFile& file) {
  State st;
  OpenOptions o;
  o.format = ImageFormat::kQcow2;
  st.active = ReadAll(file, o);
  o.read_only = true;
  o.snapshot = kSnapshot;
  st.snapshot = ReadAll(file, o);
  return st;
}

void CheckCrashed(const State& before, Bytes crashed, const std::string& what, bool finished) {
  SCOPED_TRACE(what);
  const format::Header h = HeaderOf(crashed);
  if (finished) {
    EXPECT_EQ(h.version, 2u);
  } else {
    EXPECT_TRUE(h.version == 2 || h.version == 3) << h.version;
  }
  io::MemFile file(io::MemFile::Mode::kImmediate, std::move(crashed));
  auto check = io::RunSync(nullptr, CheckImage(file));
  ASSERT_TRUE(check.ok()) << check.status();
  EXPECT_EQ(check->corruptions, 0u) << (check->messages.empty() ? "" : check->messages[0]);
  EXPECT_EQ(check->check_errors, 0u);
  if (finished) {
    EXPECT_EQ(check->leaks, 0u);
  }
  if (h.version == 2) {
    // Version 2 has no zero flag: the header goes only after every table.
    const L2Census census = CensusOf(file);
    EXPECT_FALSE(census.zero_plain || census.zero_alloc) << "zero clusters in a version 2 image";
  }
  const State st = ReadState(file);
  EXPECT_TRUE(st.active == before.active) << "active disk changed";
  EXPECT_TRUE(st.snapshot == before.snapshot) << "snapshot changed";
}

std::vector<Scenario> Scenarios() {
  std::vector<Scenario> v;
  format::CreateOptions c;
  c.cluster_bits = 16;
  c.size_bytes = 8 << 20;
  v.push_back({"clusters_64k", c, 16});
  c.cluster_bits = 12;
  c.size_bytes = 4 << 20;
  v.push_back({"clusters_4k", c, 64});
  c.cluster_bits = 9;
  c.size_bytes = 2 << 20;
  v.push_back({"clusters_512", c, 256});
  return v;
}

class DowngradePowerLossTest : public ::testing::TestWithParam<Scenario> {};

TEST_P(DowngradePowerLossTest, EveryCrashPointKeepsGuestBytes) {
  const Scenario& s = GetParam();
  const auto t0 = std::chrono::steady_clock::now();
  State before;
  const Bytes start = MakeStart(s, &before);
  ASSERT_FALSE(HasFailure());
  ASSERT_EQ(HeaderOf(start).version, 3u);
  ASSERT_NE(before.active, before.snapshot);
  {
    // The start image is clean, reads back as built and holds every kind of
    // cluster the downgrade touches (else the test is hollow).
    io::MemFile file(io::MemFile::Mode::kImmediate, start);
    testing::ExpectClean(file);
    const L2Census census = CensusOf(file);
    ASSERT_TRUE(census.zero_plain);
    ASSERT_TRUE(census.zero_alloc);
    ASSERT_TRUE(census.compressed_clusters);
    const State st = ReadState(file);
    ASSERT_TRUE(st.active == before.active);
    ASSERT_TRUE(st.snapshot == before.snapshot);
  }
  Bytes crashed;
  const uint64_t total = RunCut(start, UINT64_MAX, nullptr, &crashed);
  ASSERT_GT(total, 0u);
  {
    io::MemFile file(io::MemFile::Mode::kImmediate, crashed);
    const L2Census census = CensusOf(file);
    EXPECT_FALSE(census.zero_plain);
    EXPECT_FALSE(census.zero_alloc);
  }
  CheckCrashed(before, crashed, "no crash", true);
  const uint64_t seed = testing::EnvU64("UQ_POWER_BASE_SEED", std::random_device{}());
  std::printf("downgrade power loss: %s, %llu crash points, UQ_POWER_BASE_SEED=%llu\n",
              s.name.c_str(), static_cast<unsigned long long>(total),
              static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);
  for (uint64_t k = 0; k <= total; ++k) {
    RunCut(start, k, nullptr, &crashed);
    CheckCrashed(before, crashed, "cut after " + std::to_string(k), k == total);
    if (HasFailure()) return;
    // Few writes are ever unflushed at once: several subsets per point.
    for (int trial = 0; trial < 8; ++trial) {
      RunCut(start, k, &rng, &crashed);
      CheckCrashed(before, crashed, "random subset, cut after " + std::to_string(k), k == total);
      if (HasFailure()) return;
    }
  }
  std::printf("downgrade power loss: %s done in %.1f s\n", s.name.c_str(),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
}

INSTANTIATE_TEST_SUITE_P(Scenarios, DowngradePowerLossTest, ::testing::ValuesIn(Scenarios()),
                         [](const ::testing::TestParamInfo<Scenario>& info) {
                           return info.param.name;
                         });

}  // namespace
}  // namespace uq::engine
