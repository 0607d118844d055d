// Power loss during snapshot create, delete and revert (src/engine/
// snapshot.h): for every point in the operation's sequence of file
// operations, the power goes there (that operation and every later one never
// reach the disk) and the crashed image (only what completed flushes made
// durable, or that plus a random subset of the rest) must have zero
// corruptions by CheckImage (leaks allowed; a dirty image only after the
// reopen that repairs it), reopen writable, and hold either the old state or
// the new one: the active disk's bytes and the snapshot table, with every
// snapshot reading back the bytes it was taken with.
//
// A version 2 image has no dirty bit (see snapshot.h): its operations are
// switched with one header write, and a crash must leave zero corruptions
// without a reopen. So is a revert to a snapshot of another disk size: the
// old state is then the old size with the old contents, the new one the
// snapshot's size with its contents.
// Environment: UQ_POWER_BASE_SEED (default random, printed) seeds the random
// subsets.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <map>
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
#include "src/engine/snapshot.h"
#include "src/io/mem_file.h"
#include "src/io/power_loss_file.h"
#include "src/io/run_sync.h"
#include "tests/engine/power_loss/power_cut.h"
#include "tests/engine/test_util.h"

namespace uq::engine {
namespace {

using Bytes = std::vector<std::byte>;

enum class Op { kCreate, kDelete, kRevert };

struct Scenario {
  std::string name;
  format::CreateOptions create;
  Op op;
  // > 0: the disk grows by this much after snapshot "one", so snapshot "two"
  // and the active disk are larger than "one".
  uint64_t grow_bytes = 0;
  // The snapshot a revert goes to; "two" after the start image has reverted
  // to "one" and been written again (a revert that grows the disk).
  std::string target = "one";
};

void PrintTo(const Scenario& s, std::ostream* os) { *os << s.name; }

// The guest-visible state: the active disk and each snapshot's disk, by name.
struct State {
  Bytes active;
  std::map<std::string, Bytes> snapshots;
};

Qcow2Image& AsQcow2(Device& d) { return dynamic_cast<Qcow2Image&>(d); }

// Writes `fill`-derived bytes every `step` bytes (8 KiB each) and, once per
// 64 clusters, a compressed cluster, into the device and `guest`.
void Scribble(Device& d, Bytes* guest, uint64_t step, uint8_t fill) {
  const uint64_t size = guest->size();
  for (uint64_t off = 0; off + 8192 <= size; off += step) {
    for (uint64_t i = 0; i < 8192; ++i)
      (*guest)[off + i] = std::byte((fill + (off >> 9) + i) & 0xff);
    ASSERT_EQ(testing::WriteSync(d, off, std::span(guest->data() + off, 8192)), 0);
  }
  const uint64_t cs = AsQcow2(d).cluster_bytes();
  for (uint64_t off = cs * 3; off + cs <= size; off += cs * 64) {
    for (uint64_t i = 0; i < cs; ++i) (*guest)[off + i] = std::byte((fill + i / 7) & 0xff);
    ASSERT_EQ(io::RunSync(nullptr, d.WriteCompressed(off, std::span(guest->data() + off, cs))), 0);
  }
}

void Snap(Device& d, const std::string& name, State* st) {
  absl::Status s = io::RunSync(nullptr, CreateSnapshot(AsQcow2(d), {name, 1700000000, 0}));
  ASSERT_TRUE(s.ok()) << s;
  st->snapshots[name] = st->active;
}

// The image before the operation: data, snapshot "one", more data, snapshot
// "two", more data. Fills in the state before and after the operation.
Bytes MakeStart(const Scenario& s, State* before, State* after) {
  std::unique_ptr<io::MemFile> file = testing::MakeImage(s.create);
  EXPECT_NE(file, nullptr);
  OpenOptions o;
  o.format = ImageFormat::kQcow2;
  auto dev = testing::OpenSync(file.get(), o);
  EXPECT_TRUE(dev.ok()) << dev.status();
  before->active.assign(s.create.size_bytes, std::byte{0});
  Scribble(**dev, &before->active, 96 * 1024, 1);
  Snap(**dev, "one", before);
  if (s.grow_bytes > 0) {
    const uint64_t size = before->active.size() + s.grow_bytes;
    absl::Status grown =
        io::RunSync(nullptr, ResizeImage(AsQcow2(**dev), size, GrowPreallocation::kOff));
    EXPECT_TRUE(grown.ok()) << grown;
    before->active.resize(size, std::byte{0});
  }
  Scribble(**dev, &before->active, 160 * 1024, 2);
  Snap(**dev, "two", before);
  Scribble(**dev, &before->active, 224 * 1024, 3);
  if (s.op == Op::kRevert && s.target != "one") {
    absl::Status reverted = io::RunSync(nullptr, RevertSnapshot(AsQcow2(**dev), "one"));
    EXPECT_TRUE(reverted.ok()) << reverted;
    before->active = before->snapshots["one"];
    Scribble(**dev, &before->active, 288 * 1024, 4);
  }
  EXPECT_TRUE(io::RunSync(nullptr, (*dev)->Close()).ok());
  *after = *before;
  switch (s.op) {
    case Op::kCreate:
      after->snapshots["new"] = before->active;
      break;
    case Op::kDelete:
      after->snapshots.erase("one");
      break;
    case Op::kRevert:
      after->active = before->snapshots[s.target];
      break;
  }
  return file->data();
}

absl::Status RunOp(const Scenario& s, Qcow2Image& image) {
  switch (s.op) {
    case Op::kCreate:
      return io::RunSync(nullptr, CreateSnapshot(image, {"new", 1700000001, 5}));
    case Op::kDelete:
      return io::RunSync(nullptr, DeleteSnapshot(image, "one"));
    case Op::kRevert:
      return io::RunSync(nullptr, RevertSnapshot(image, s.target));
  }
  return absl::InternalError("unknown op");
}

// Runs the operation with the power going after `budget` mutations; returns
// the mutations that happened and the crashed image.
uint64_t RunCut(const Scenario& s, const Bytes& start, uint64_t budget, std::mt19937_64* rng,
                Bytes* crashed) {
  io::MemFile base(io::MemFile::Mode::kImmediate, start);
  io::PowerLossFile power(&base, start);
  auto cut = std::make_unique<testing::PowerCut>(&power, budget);
  testing::PowerCut* cut_ptr = cut.get();
  OpenOptions o;
  o.format = ImageFormat::kQcow2;
  auto opened = io::RunSync(nullptr, OpenImage(std::move(cut), o));
  EXPECT_TRUE(opened.ok()) << opened.status();
  if (!opened.ok()) return 0;
  absl::Status st = RunOp(s, AsQcow2(**opened));
  if (st.ok()) st = io::RunSync(nullptr, (*opened)->Close());
  if (budget == UINT64_MAX) {
    EXPECT_TRUE(st.ok()) << st;
  }
  const uint64_t mutations = cut_ptr->mutations();
  opened->reset();
  *crashed = rng == nullptr ? power.Crash() : power.CrashRandomSubset(*rng);
  return mutations;
}

// The state `file` holds (reopened writable first: a dirty image is repaired
// on open).
State ReadState(io::MemFile& file) {
  State st;
  OpenOptions o;
  o.format = ImageFormat::kQcow2;
  auto dev = testing::OpenSync(&file, o);
  EXPECT_TRUE(dev.ok()) << dev.status();
  if (!dev.ok()) return st;
  st.active.resize((*dev)->size_bytes());
  EXPECT_EQ(testing::ReadSync(**dev, 0, st.active), 0);
  const format::Header h = AsQcow2(**dev).header();
  EXPECT_TRUE(io::RunSync(nullptr, (*dev)->Close()).ok());
  auto table = io::RunSync(nullptr, ReadSnapshotTable(file, h));
  EXPECT_TRUE(table.ok()) << table.status();
  if (!table.ok()) return st;
  for (const format::Snapshot& s : *table) {
    OpenOptions so;
    so.format = ImageFormat::kQcow2;
    so.snapshot = s.name;
    auto snap = testing::OpenSync(&file, so);
    EXPECT_TRUE(snap.ok()) << snap.status();
    if (!snap.ok()) continue;
    Bytes bytes((*snap)->size_bytes());
    EXPECT_EQ(testing::ReadSync(**snap, 0, bytes), 0);
    st.snapshots[s.name] = std::move(bytes);
  }
  return st;
}

bool Same(const State& a, const State& b) {
  return a.active == b.active && a.snapshots == b.snapshots;
}

void CheckCrashed(const State& before, const State& after, Bytes crashed, const std::string& what) {
  SCOPED_TRACE(what);
  // Incompatible feature bit 0 (dirty): bit 0 of the header's byte 79.
  // A version 2 header ends at byte 72 and has no dirty bit.
  const bool v2 = crashed.size() > 7 && static_cast<uint8_t>(crashed[7]) == 2;
  const bool dirty = !v2 && crashed.size() > 79 && (static_cast<uint8_t>(crashed[79]) & 1) != 0;
  io::MemFile file(io::MemFile::Mode::kImmediate, std::move(crashed));
  auto check = io::RunSync(nullptr, CheckImage(file));
  ASSERT_TRUE(check.ok()) << check.status();
  if (!dirty) {
    EXPECT_EQ(check->corruptions, 0u) << (check->messages.empty() ? "" : check->messages[0]);
  }
  const State st = ReadState(file);
  if (::testing::Test::HasFailure()) return;
  EXPECT_TRUE(Same(st, before) || Same(st, after)) << "neither the old nor the new state: active "
                                                   << (st.active == before.active  ? "old"
                                                       : st.active == after.active ? "new"
                                                                                   : "other")
                                                   << ", " << st.snapshots.size() << " snapshots";
  auto after_check = io::RunSync(nullptr, CheckImage(file));
  ASSERT_TRUE(after_check.ok()) << after_check.status();
  EXPECT_EQ(after_check->corruptions, 0u)
      << (after_check->messages.empty() ? "" : after_check->messages[0]);
}

std::vector<Scenario> Scenarios() {
  std::vector<Scenario> v;
  format::CreateOptions c;
  c.size_bytes = 4 << 20;
  c.cluster_bits = 16;
  v.push_back({"create_64k", c, Op::kCreate});
  v.push_back({"delete_64k", c, Op::kDelete});
  v.push_back({"revert_64k", c, Op::kRevert});
  c.cluster_bits = 12;
  v.push_back({"create_4k", c, Op::kCreate});
  v.push_back({"delete_4k", c, Op::kDelete});
  c.cluster_bits = 9;
  c.size_bytes = 2 << 20;
  v.push_back({"create_512", c, Op::kCreate});
  c.cluster_bits = 15;
  c.size_bytes = 4 << 20;
  c.extended_l2 = true;
  v.push_back({"revert_extended_l2", c, Op::kRevert});
  v.push_back({"delete_extended_l2", c, Op::kDelete});
  c.extended_l2 = false;
  c.cluster_bits = 16;
  c.version = 2;
  v.push_back({"create_v2", c, Op::kCreate});
  v.push_back({"delete_v2", c, Op::kDelete});
  v.push_back({"revert_v2", c, Op::kRevert});
  c.version = 3;
  c.size_bytes = 3 << 20;
  v.push_back({"revert_shrinks_64k", c, Op::kRevert, 2 << 20});
  v.push_back({"revert_grows_64k", c, Op::kRevert, 2 << 20, "two"});
  c.cluster_bits = 12;
  c.size_bytes = 2 << 20;
  c.lazy_refcounts = true;
  v.push_back({"revert_shrinks_4k_lazy", c, Op::kRevert, 1 << 20});
  return v;
}

class SnapshotPowerLossTest : public ::testing::TestWithParam<Scenario> {};

TEST_P(SnapshotPowerLossTest, EveryCrashPointLeavesOldOrNewImage) {
  const Scenario& s = GetParam();
  State before, after;
  const Bytes start = MakeStart(s, &before, &after);
  ASSERT_FALSE(HasFailure());
  if (s.op == Op::kRevert) {
    ASSERT_NE(before.active, after.active);
  }
  Bytes crashed;
  const uint64_t total = RunCut(s, start, UINT64_MAX, nullptr, &crashed);
  ASSERT_GT(total, 0u);
  {
    // Without a crash the new state, exactly.
    io::MemFile file(io::MemFile::Mode::kImmediate, crashed);
    EXPECT_TRUE(Same(ReadState(file), after)) << "no crash: not the new state";
  }
  CheckCrashed(before, after, crashed, "no crash");
  const uint64_t seed = testing::EnvU64("UQ_POWER_BASE_SEED", std::random_device{}());
  std::printf("snapshot power loss: %s, %llu crash points, UQ_POWER_BASE_SEED=%llu\n",
              s.name.c_str(), static_cast<unsigned long long>(total),
              static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);
  for (uint64_t k = 0; k <= total; ++k) {
    RunCut(s, start, k, nullptr, &crashed);
    CheckCrashed(before, after, crashed, "cut after " + std::to_string(k));
    if (HasFailure()) return;
    RunCut(s, start, k, &rng, &crashed);
    CheckCrashed(before, after, crashed, "random subset, cut after " + std::to_string(k));
    if (HasFailure()) return;
  }
}

INSTANTIATE_TEST_SUITE_P(Scenarios, SnapshotPowerLossTest, ::testing::ValuesIn(Scenarios()),
                         [](const ::testing::TestParamInfo<Scenario>& info) {
                           return info.param.name;
                         });

}  // namespace
}  // namespace uq::engine
