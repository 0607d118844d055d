// Issue 12 point 4 through qcow2-img io, on images with an internal snapshot
// made by qemu-img, with qemu-img / qemu-io as the oracle:
//  - an L2 entry aimed at the snapshot table, at the snapshot's (inactive)
//    L1 table, at the refcount table or at the active L1 table: the write
//    fails, qemu-img info reports the image corrupt, and the bytes there are
//    unchanged;
//  - an ordinary workload on such an image (writes that copy shared L2
//    tables and clusters, discards, rewrites) never trips the check: qemu-img
//    check finds nothing, and both the active layer and the snapshot read
//    back what was written.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <string>

#include "tests/interop/interop_util.h"

namespace uq::interop {
namespace {

constexpr uint64_t kCluster = 4096;
constexpr uint64_t kOffsetMask = 0x00fffffffffffe00ull;

std::string Qcow2Img() {
  const char* env = std::getenv("UQ_QCOW2_IMG");
  return env && *env ? env : QCOW2_IMG_PATH;
}

std::string Img(const std::string& args) { return "timeout 60 " + Quote(Qcow2Img()) + " " + args; }

uint64_t Be64(const std::string& b, uint64_t at) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = v << 8 | static_cast<uint8_t>(b.at(at + i));
  return v;
}

void SetBe64(std::string& b, uint64_t at, uint64_t v) {
  for (int i = 7; i >= 0; --i, v >>= 8) b.at(at + i) = static_cast<char>(v & 0xff);
}

class OverlapCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HaveTool("qemu-img") || !HaveTool("qemu-io")) GTEST_SKIP() << "QEMU tools not installed";
    image_ = dir_.File("s.qcow2");
    Sh("qemu-img create -q -f qcow2 -o cluster_size=4k " + Quote(image_) + " 1M");
    Sh("qemu-io -c 'write -q -P 0x11 0 16k' " + Quote(image_));
    Sh("qemu-img snapshot -c s1 " + Quote(image_));
    const std::string b = ReadFile(image_);
    l1_ = Be64(b, 40);
    reftable_ = Be64(b, 48);
    snapshots_ = Be64(b, 64);
    snapshot_l1_ = Be64(b, snapshots_);
    l2_ = Be64(b, l1_) & kOffsetMask;
    ASSERT_NE(l2_, 0u);
    ASSERT_NE(snapshot_l1_, l1_);
  }
  void Sh(const std::string& command) {
    const RunResult r = RunCommand(command);
    ASSERT_EQ(r.exit_code, 0) << command << "\n" << r.err;
  }
  bool Corrupt() {
    const RunResult r = RunCommand("qemu-img info --output=json " + Quote(image_));
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return r.out.find("\"corrupt\": true") != std::string::npos;
  }
  // Aims guest cluster 1's L2 entry at `target` (the L2 table is shared with
  // the snapshot, so COPIED is clear), writes it through qcow2-img, and
  // expects the write refused naming `kind`, the image corrupt and the
  // target cluster's bytes from `stable_from` on unchanged (the active L1
  // table's entries change legitimately: the write copied the shared L2
  // table first), with no byte of the guest's pattern anywhere in it.
  void ExpectRefused(uint64_t target, const std::string& kind, uint64_t stable_from = 0) {
    std::string b = ReadFile(image_);
    SetBe64(b, l2_ + 8, target);
    WriteFile(image_, b);
    const std::string before = b.substr(target, kCluster);  // may end at the file's end
    const RunResult r = RunCommand(Img("io -c 'write -P 0x5a 4k 4k' " + Quote(image_)));
    EXPECT_EQ(r.exit_code, 1) << r.out;
    EXPECT_NE(r.err.find("it overlaps the " + kind), std::string::npos) << r.err;
    const std::string after = ReadFile(image_).substr(target, before.size());
    EXPECT_TRUE(after.substr(stable_from) == before.substr(stable_from)) << kind << " changed";
    EXPECT_EQ(after.find(std::string(8, '\x5a')), std::string::npos) << kind << " overwritten";
    EXPECT_TRUE(Corrupt());
  }

  TempDir dir_;
  std::string image_;
  uint64_t l1_ = 0, reftable_ = 0, snapshots_ = 0, snapshot_l1_ = 0, l2_ = 0;
};

TEST_F(OverlapCliTest, SnapshotTable) { ExpectRefused(snapshots_, "snapshot table"); }
TEST_F(OverlapCliTest, InactiveL1Table) { ExpectRefused(snapshot_l1_, "inactive L1 table"); }
TEST_F(OverlapCliTest, RefcountTable) { ExpectRefused(reftable_, "refcount table"); }
TEST_F(OverlapCliTest, ActiveL1Table) { ExpectRefused(l1_, "active L1 table", 8); }

TEST_F(OverlapCliTest, OrdinaryWorkloadNeverTrips) {
  const RunResult w =
      RunCommand(Img("io -c 'write -P 0x22 4k 8k' -c 'write -P 0x33 64k 512k' -c 'flush' "
                     "-c 'discard 128k 64k' -c 'write -P 0x44 0 4k' -c 'write -z 256k 64k' "
                     "-c 'write -P 0x55 512k 512k' -c 'flush' -c 'write -P 0x66 600k 4k' " +
                     Quote(image_)));
  ASSERT_EQ(w.exit_code, 0) << w.err;
  EXPECT_EQ(w.err.find("corrupt"), std::string::npos) << w.err;
  EXPECT_FALSE(Corrupt());
  const RunResult c = RunCommand("qemu-img check " + Quote(image_));
  EXPECT_EQ(c.exit_code, 0) << c.out << c.err;
  const RunResult active = RunCommand(
      "qemu-io -r -c 'read -P 0x44 0 4k' -c 'read -P 0x22 4k 8k' -c 'read -P 0x11 12k 4k' "
      "-c 'read -P 0x33 64k 64k' -c 'read -P 0 128k 64k' -c 'read -P 0 256k 64k' "
      "-c 'read -P 0x55 512k 88k' -c 'read -P 0x66 600k 4k' " +
      Quote(image_));
  EXPECT_EQ(active.exit_code, 0) << active.err;
  EXPECT_EQ(active.out.find("Pattern verification failed"), std::string::npos) << active.out;
  // The snapshot still reads what it captured.
  Sh("qemu-img snapshot -a s1 " + Quote(image_));
  const RunResult snap =
      RunCommand("qemu-io -r -c 'read -P 0x11 0 16k' -c 'read -P 0 16k 1008k' " + Quote(image_));
  EXPECT_EQ(snap.exit_code, 0) << snap.err;
  EXPECT_EQ(snap.out.find("Pattern verification failed"), std::string::npos) << snap.out;
}

}  // namespace
}  // namespace uq::interop
