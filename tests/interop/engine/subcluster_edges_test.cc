// Requests that begin or end inside a (sub)cluster, one named case each, with
// qemu-io as the referee: write-zeroes, discard, copy-on-write of a partly
// written subcluster, and allocation of a cluster whose other subclusters are
// zero or unallocated, with and without a backing file.
//
// Each case makes an image with qemu-img, prepares it with qemu-io, copies it,
// then runs the same commands through qemu-io on one copy and `qcow2-img io`
// on the other. `qemu-img compare` of the two exits 0, `qemu-img check` of ours
// exits 0, and the case's expectations (`read -P`, run by qemu-io on our
// result) hold.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "tests/interop/interop_util.h"

namespace uq::interop {
namespace {

const std::string kOurs = UQ_QCOW2_IMG;

struct EdgeCase {
  std::string name;
  std::string create;               // qemu-img create -o value for img.qcow2
  std::string backing_format = "";  // "", "raw" or "qcow2": base.img of the same size
  std::vector<std::string> base_setup = {};
  std::vector<std::string> setup = {};   // qemu-io, on img.qcow2
  std::string setup_shell = "";          // then this, in the image's directory
  std::vector<std::string> ops = {};     // the commands under test, both tools
  std::vector<std::string> expect = {};  // qemu-io reads on our result
};

void PrintTo(const EdgeCase& c, std::ostream* os) { *os << c.name; }

constexpr uint64_t kSize = 1 << 20;
// 128 KiB clusters, 4 KiB subclusters: cluster 3 starts at 393216 and its
// subcluster 14 spans [450560, 454656).
const char kExt128k[] = "extended_l2=on,cluster_size=128k";
const char kExt64k[] = "extended_l2=on,cluster_size=64k";

std::string IoArgs(const std::vector<std::string>& commands) {
  std::string out;
  for (const std::string& c : commands) absl::StrAppend(&out, " -c ", Quote(c));
  return out;
}

class SubclusterEdges : public ::testing::TestWithParam<EdgeCase> {
 protected:
  void SetUp() override {
    if (!HaveTool("qemu-img") || !HaveTool("qemu-io")) {
      GTEST_SKIP() << "qemu-img / qemu-io not installed";
    }
  }

  // Runs `command` in `dir`; expects exit 0.
  void Run(const std::string& dir, const std::string& command) {
    RunResult r = RunCommand(absl::StrCat("cd ", Quote(dir), " && ", command));
    EXPECT_EQ(r.exit_code, 0) << "$ " << command << "\n" << r.out << r.err;
  }
};

TEST_P(SubclusterEdges, SameAsQemu) {
  const EdgeCase& c = GetParam();
  TempDir tmp;
  const std::string start = tmp.File("start");
  Run(tmp.path(), "mkdir start ours theirs");
  std::string create = absl::StrCat("qemu-img create -q -f qcow2 -o ", c.create);
  if (!c.backing_format.empty()) {
    Run(start, absl::StrCat("qemu-img create -q -f ", c.backing_format, " base.img ", kSize));
    if (!c.base_setup.empty()) {
      Run(start, absl::StrCat("qemu-io -f ", c.backing_format, IoArgs(c.base_setup), " base.img"));
    }
    absl::StrAppend(&create, " -b base.img -F ", c.backing_format);
  }
  Run(start, absl::StrCat(create, " img.qcow2 ", kSize));
  if (!c.setup.empty()) Run(start, absl::StrCat("qemu-io -f qcow2", IoArgs(c.setup), " img.qcow2"));
  if (!c.setup_shell.empty()) Run(start, c.setup_shell);
  Run(tmp.path(), "cp -a start/. ours/ && cp -a start/. theirs/");
  ASSERT_FALSE(HasFailure());

  Run(tmp.File("theirs"), absl::StrCat("qemu-io -f qcow2", IoArgs(c.ops), " img.qcow2"));
  Run(tmp.File("ours"), absl::StrCat(kOurs, " io", IoArgs(c.ops), " img.qcow2"));
  Run(tmp.path(), "qemu-img compare ours/img.qcow2 theirs/img.qcow2");
  Run(tmp.File("ours"), "qemu-img check img.qcow2");
  if (!c.expect.empty()) {
    Run(tmp.File("ours"), absl::StrCat("qemu-io -r -f qcow2", IoArgs(c.expect), " img.qcow2"));
  }
}

std::vector<EdgeCase> Cases() {
  return {
      // Write-zeroes from an unallocated subcluster into part of an allocated
      // one (the reported corruption), and its 64 KiB-cluster variant.
      {.name = "ZeroesIntoAllocatedSubcluster128k",
       .create = kExt128k,
       .setup = {"write -P 0x82 450560 4096"},
       .ops = {"write -z 449536 4096"},
       .expect = {"read -P 0 449536 4096", "read -P 0x82 453632 1024"}},
      {.name = "ZeroesIntoAllocatedSubcluster64k",
       .create = kExt64k,
       .setup = {"write -P 0x82 450560 4096"},
       .ops = {"write -z 450048 2048"},
       .expect = {"read -P 0 450048 2048", "read -P 0x82 452096 2560"}},
      // The mirror image: from part of an allocated subcluster into an
      // unallocated one.
      {.name = "ZeroesOutOfAllocatedSubcluster",
       .create = kExt128k,
       .setup = {"write -P 0x82 450560 4096"},
       .ops = {"write -z 453632 2048"},
       .expect = {"read -P 0x82 450560 3072", "read -P 0 453632 2048"}},
      {.name = "ZeroesInsideAllocatedSubcluster",
       .create = kExt128k,
       .setup = {"write -P 0x82 450560 4096"},
       .ops = {"write -z 451584 1024"},
       .expect = {"read -P 0x82 450560 1024", "read -P 0 451584 1024", "read -P 0x82 452608 2048"}},
      // Over a backing file: partial subclusters must get real zeros.
      {.name = "ZeroesAcrossSubclustersOverBacking",
       .create = kExt128k,
       .backing_format = "raw",
       .base_setup = {"write -P 0x11 0 1M"},
       .ops = {"write -z 449536 4096"},
       .expect = {"read -P 0x11 393216 56320", "read -P 0 449536 4096",
                  "read -P 0x11 453632 70656"}},
      {.name = "ZeroesWholeAndPartialSubclustersOverBacking",
       .create = kExt128k,
       .backing_format = "qcow2",
       .base_setup = {"write -P 0x11 0 1M"},
       .setup = {"write -P 0x22 401408 8192"},
       .ops = {"write -z 400896 20480", "write -z -u 434176 9728"},
       .expect = {"read -P 0 400896 20480", "read -P 0 434176 9728", "read -P 0x11 421376 12800"}},
      // A compressed cluster partly zeroed: inside one subcluster, and across
      // whole subclusters.
      {.name = "ZeroesInCompressedCluster",
       .create = kExt128k,
       .setup = {"write -c -P 0x33 393216 131072"},
       .ops = {"write -z 394240 1024", "write -z 409088 13312"},
       .expect = {"read -P 0x33 393216 1024", "read -P 0 394240 1024", "read -P 0 409088 13312",
                  "read -P 0x33 422400 101888"}},
      {.name = "ZeroesInCompressedClusterStandardL2",
       .create = "cluster_size=64k",
       .setup = {"write -c -P 0x33 131072 65536"},
       .ops = {"write -z 132096 1024"},
       .expect = {"read -P 0x33 131072 1024", "read -P 0 132096 1024"}},
      // Discard: partial clusters keep their data, whole ones read zero, the
      // disk's last cluster is whole when the range reaches the end.
      {.name = "DiscardPartialClusterKeepsData",
       .create = kExt128k,
       .setup = {"write -P 0x44 393216 131072"},
       .ops = {"discard 394240 65536"},
       .expect = {"read -P 0x44 393216 131072"}},
      {.name = "DiscardWholeClustersOverBacking",
       .create = kExt64k,
       .backing_format = "raw",
       .base_setup = {"write -P 0x11 0 1M"},
       .setup = {"write -P 0x44 65536 131072"},
       .ops = {"discard 60416 208896"},
       .expect = {"read -P 0x11 0 65536", "read -P 0 65536 196608", "read -P 0x11 262144 7168"}},
      {.name = "DiscardStandardL2OverBacking",
       .create = "cluster_size=64k",
       .backing_format = "qcow2",
       .base_setup = {"write -P 0x11 0 1M"},
       .setup = {"write -P 0x44 65536 131072"},
       .ops = {"discard 65536 65536", "discard 132096 64512"},
       .expect = {"read -P 0 65536 65536", "read -P 0x44 131072 65536"}},
      {.name = "DiscardV2WithBackingIsIgnored",
       .create = "compat=0.10,cluster_size=64k",
       .backing_format = "raw",
       .base_setup = {"write -P 0x11 0 1M"},
       .setup = {"write -P 0x44 65536 131072"},
       .ops = {"discard 65536 131072"},
       .expect = {"read -P 0x44 65536 131072"}},
      {.name = "DiscardCompressedCluster",
       .create = kExt64k,
       .setup = {"write -c -P 0x33 131072 65536", "write -c -P 0x34 196608 65536"},
       .ops = {"discard 131072 65536", "discard 197120 65024"},
       .expect = {"read -P 0 131072 65536", "read -P 0x34 196608 65536"}},
      // Copy-on-write of a partly written subcluster.
      {.name = "PartialSubclusterOverBacking",
       .create = kExt128k,
       .backing_format = "raw",
       .base_setup = {"write -P 0x11 0 1M"},
       .ops = {"write -P 0x55 451584 512"},
       .expect = {"read -P 0x11 393216 58368", "read -P 0x55 451584 512",
                  "read -P 0x11 452096 72192"}},
      {.name = "PartialSubclusterOfAllocatedClusterOverBacking",
       .create = kExt128k,
       .backing_format = "qcow2",
       .base_setup = {"write -P 0x11 0 1M"},
       .setup = {"write -P 0x22 413696 4096"},
       .ops = {"write -P 0x55 451584 512"},
       .expect = {"read -P 0x11 393216 20480", "read -P 0x22 413696 4096",
                  "read -P 0x11 417792 33792", "read -P 0x55 451584 512",
                  "read -P 0x11 452096 72192"}},
      {.name = "PartialSubclusterOfZeroSubclusterOverBacking",
       .create = kExt128k,
       .backing_format = "raw",
       .base_setup = {"write -P 0x11 0 1M"},
       .setup = {"write -z 446464 12288"},
       .ops = {"write -P 0x55 451584 512"},
       .expect = {"read -P 0 446464 5120", "read -P 0x55 451584 512", "read -P 0 452096 6656",
                  "read -P 0x11 458752 4096"}},
      {.name = "PartialClusterStandardL2OverBacking",
       .create = "cluster_size=64k",
       .backing_format = "raw",
       .base_setup = {"write -P 0x11 0 1M"},
       .ops = {"write -P 0x55 132096 1024"},
       .expect = {"read -P 0x11 131072 1024", "read -P 0x55 132096 1024",
                  "read -P 0x11 133120 63488"}},
      // A cluster shared with an internal snapshot: the partial write copies
      // the old cluster, subclusters included.
      {.name = "PartialWriteIntoSnapshotSharedCluster",
       .create = kExt64k,
       .setup = {"write -P 0x66 65536 20480"},
       .setup_shell = "qemu-img snapshot -c s1 img.qcow2",
       .ops = {"write -P 0x77 66048 512", "write -z 70656 1024"},
       .expect = {"read -P 0x66 65536 512", "read -P 0x77 66048 512", "read -P 0 70656 1024",
                  "read -P 0 86016 45056"}},
      // Allocation of a cluster whose other subclusters are zero or
      // unallocated.
      {.name = "AllocateClusterWithZeroAndUnallocatedSubclusters",
       .create = kExt128k,
       .backing_format = "raw",
       .base_setup = {"write -P 0x11 0 1M"},
       .setup = {"write -z 393216 65536"},
       .ops = {"write -P 0x55 475136 4096", "write -P 0x56 401920 1024"},
       .expect = {"read -P 0 393216 8704", "read -P 0x56 401920 1024", "read -P 0 402944 55808",
                  "read -P 0x11 458752 16384", "read -P 0x55 475136 4096",
                  "read -P 0x11 479232 45056"}},
      {.name = "AllocateIntoReusedClusterShowsNoStaleData",
       .create = kExt64k,
       .setup = {"write -P 0x77 65536 65536"},
       .ops = {"discard 65536 65536", "flush", "write -P 0x55 327680 512",
               "write -P 0x56 393728 512"},
       .expect = {"read -P 0 65536 65536", "read -P 0x55 327680 512", "read -P 0 328192 65536",
                  "read -P 0x56 393728 512", "read -P 0 394240 64000"}},
  };
}

INSTANTIATE_TEST_SUITE_P(Cases, SubclusterEdges, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<EdgeCase>& info) {
                           return info.param.name;
                         });

}  // namespace
}  // namespace uq::interop
