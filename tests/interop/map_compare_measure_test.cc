// qemu-img as the oracle for `qcow2-img map`, `compare` and `measure`: on
// every image kind (tests/interop/image_kinds.h) each command runs with the
// same arguments through both tools, which must exit alike and print the
// same bytes on stdout (both write JSON in qemu-img's exact layout, so the
// documents are compared as text).
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "tests/interop/image_kinds.h"
#include "tests/interop/interop_util.h"

namespace uq::interop {
namespace {

std::string Qcow2Img() {
  const char* env = std::getenv("UQ_QCOW2_IMG");
  return env && *env ? env : QCOW2_IMG_PATH;
}

class MapCompareMeasureTest : public ::testing::TestWithParam<ImageKind> {
 protected:
  void SetUp() override {
    if (!HaveTool("qemu-img") || !HaveTool("qemu-io")) GTEST_SKIP() << "QEMU tools not installed";
    ASSERT_EQ(RunCommand("mkdir " + Quote(dir())).exit_code, 0);
    const RunResult r = In(GetParam().setup);
    ASSERT_EQ(r.exit_code, 0) << GetParam().setup << "\n" << r.err;
  }

  // The image lives in a subdirectory, so relative backing and data file
  // names and the paths map prints are exercised from outside it too.
  std::string dir() const { return root_.File("k"); }

  RunResult In(const std::string& command) const {
    return RunCommand("cd " + Quote(dir()) + " && " + command);
  }

  // Runs "<tool> <args>" for both tools in `where`; same exit status, same
  // stdout, and an error message from ours wherever qemu-img has one.
  void ExpectSame(const std::string& args, const std::string& where = "") {
    SCOPED_TRACE(args);
    const std::string cd = "cd " + Quote(where.empty() ? dir() : where) + " && ";
    const RunResult theirs = RunCommand(cd + "qemu-img " + args);
    const RunResult ours = RunCommand(cd + Quote(Qcow2Img()) + " " + args);
    EXPECT_EQ(ours.exit_code, theirs.exit_code)
        << "qemu-img: " << theirs.err << "\nqcow2-img: " << ours.err;
    EXPECT_EQ(ours.out, theirs.out);
    EXPECT_EQ(ours.err.empty(), theirs.err.empty())
        << "qemu-img: " << theirs.err << "\nqcow2-img: " << ours.err;
    ++compared_;
  }

  TempDir root_;
  int compared_ = 0;
};

TEST_P(MapCompareMeasureTest, MapMatchesQemuImg) {
  for (const char* args :
       {"map --output=json img.qcow2", "map img.qcow2",
        "map --output=json --start-offset=100000 --max-length=5M img.qcow2",
        "map --start-offset=1M img.qcow2", "map --output=json --max-length=0 img.qcow2",
        "map --output=json --start-offset=4G img.qcow2", "map -U --output=json img.qcow2"}) {
    ExpectSame(args);
  }
  // From the parent directory: the human format's File column.
  if (GetParam().relative_data_file) return;  // see ImageKind
  ExpectSame("map k/img.qcow2", root_.path());
  ExpectSame("map --output=json k/img.qcow2", root_.path());
  EXPECT_EQ(compared_, 9);
}

TEST_P(MapCompareMeasureTest, CompareMatchesQemuImg) {
  // Copies that are identical, differ in one sector, or are longer with a
  // zero or a non-zero tail.
  const RunResult r = In(
      "qemu-img convert -O qcow2 img.qcow2 same.qcow2 && qemu-img convert -O raw img.qcow2 "
      "same.raw && cp same.qcow2 changed.qcow2 && qemu-io -c 'write -P 0x99 3000k 1k' "
      "changed.qcow2 >/dev/null && cp same.qcow2 longer.qcow2 && qemu-img resize -q "
      "longer.qcow2 +3M && cp longer.qcow2 tail.qcow2 && qemu-io -c \"write -P 1 "
      "$(($(qemu-img info --output=json same.qcow2 | grep virtual-size | tr -dc 0-9) + 1048576)) "
      "4k\" tail.qcow2 >/dev/null");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const char* other :
       {"img.qcow2", "same.qcow2", "same.raw", "changed.qcow2", "longer.qcow2", "tail.qcow2"}) {
    for (const char* strict : {"", "-s "}) {
      ExpectSame(std::string("compare ") + strict + "img.qcow2 " + other);
      ExpectSame(std::string("compare ") + strict + other + " img.qcow2");
    }
  }
  ExpectSame("compare -q img.qcow2 changed.qcow2");
  ExpectSame("compare -U -f qcow2 -F raw same.qcow2 same.raw");
  ExpectSame("compare img.qcow2 missing.qcow2");
  EXPECT_EQ(compared_, 27);
}

TEST_P(MapCompareMeasureTest, MeasureMatchesQemuImg) {
  for (const char* args :
       {"measure img.qcow2", "measure -O qcow2 img.qcow2",
        "measure -O qcow2 --output=json img.qcow2", "measure -O qcow2 -o cluster_size=4k img.qcow2",
        "measure -O qcow2 -o cluster_size=2M,refcount_bits=1 img.qcow2",
        "measure -O qcow2 -o extended_l2=on,cluster_size=16k img.qcow2",
        "measure -O qcow2 -o compat=0.10 img.qcow2",
        "measure -O qcow2 -o preallocation=metadata img.qcow2",
        "measure -O qcow2 -o preallocation=full img.qcow2",
        "measure -O qcow2 -o backing_file=other.qcow2 img.qcow2",
        "measure -O raw --output=json -U img.qcow2"}) {
    ExpectSame(args);
  }
  EXPECT_EQ(compared_, 11);
}

INSTANTIATE_TEST_SUITE_P(Kinds, MapCompareMeasureTest, ::testing::ValuesIn(ImageKinds()),
                         [](const ::testing::TestParamInfo<ImageKind>& info) {
                           return info.param.name;
                         });

// Measuring sizes and snapshots, without an image or through -l.
TEST(MeasureTest, SizesSnapshotsAndErrorsMatchQemuImg) {
  if (!HaveTool("qemu-img")) GTEST_SKIP() << "qemu-img not installed";
  TempDir dir;
  const std::string q = Quote(Qcow2Img());
  ASSERT_EQ(RunCommand("cd " + Quote(dir.path()) +
                       " && qemu-img create -q -f qcow2 s.qcow2 32M && "
                       "qemu-io -c 'write 0 1M' s.qcow2 >/dev/null && qemu-img snapshot -c one "
                       "s.qcow2 && qemu-io -c 'write 4M 3M' s.qcow2 >/dev/null")
                .exit_code,
            0);
  for (const char* args :
       {"--size 1G", "--size 1000", "-O qcow2 --size 1000", "-O qcow2 --size 1G --output=json",
        "-O qcow2 -o extended_l2=on --size 7G",
        "-O qcow2 -o cluster_size=512,refcount_bits=64 --size 3G",
        "-O qcow2 -o preallocation=falloc --size 5M", "-O qcow2 -o size=1G --size 2G",
        "-O qcow2 -l one s.qcow2", "-O qcow2 -l 1 s.qcow2", "-O qcow2 -l nosuch s.qcow2",
        "-O qcow2 --size 100T -o cluster_size=512", "-O qcow2 -o compat=v2 --size 1G",
        "-O qcow2 -o compat=0.10,refcount_bits=8 --size 1G", "-O qcow2 -o bogus=1 --size 1G",
        "--size 1G s.qcow2", "", "-O qcow2 s.qcow2 s.qcow2"}) {
    SCOPED_TRACE(args);
    const std::string cd = "cd " + Quote(dir.path()) + " && ";
    const RunResult theirs = RunCommand(cd + "qemu-img measure " + args);
    const RunResult ours = RunCommand(cd + q + " measure " + args);
    EXPECT_EQ(ours.exit_code, theirs.exit_code) << theirs.err << "\n" << ours.err;
    EXPECT_EQ(ours.out, theirs.out);
  }
}

}  // namespace
}  // namespace uq::interop
