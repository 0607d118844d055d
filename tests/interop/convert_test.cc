// qcow2-img convert against qemu-img 7.2 on every interop image kind:
//  - which chunks convert skips as zeros (tools::ZeroChunks, from the
//    source's metadata) is exactly what `qemu-img map --output=json` reports
//    as zero for those chunks: nothing with data is skipped, and every chunk
//    QEMU calls zero is skipped;
//  - the output of -O raw and -O qcow2 compares equal to the source
//    (`qemu-img compare`), and the qcow2 output is clean;
//  - the destination cache modes (unsafe, the default; writeback; none)
//    write the same image; an unknown mode is one line, exit 1.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "tests/interop/image_kinds.h"
#include "tests/interop/interop_util.h"
#include "tools/zero_chunks.h"

namespace uq::interop {
namespace {

std::string Ours() {
  const char* env = std::getenv("UQ_QCOW2_IMG");
  return Quote(env && *env ? env : QCOW2_IMG_PATH);
}

RunResult In(const std::string& dir, const std::string& command) {
  return RunCommand("cd " + Quote(dir) + " && " + command);
}

// The chunks of `chunk_bytes` that QEMU's map says read as zeros throughout.
std::vector<bool> QemuZeroChunks(const std::string& dir, const std::string& fmt,
                                 uint64_t chunk_bytes, uint64_t* size_bytes) {
  const RunResult info = In(dir, "qemu-img info -U --output=json -f " + fmt + " img.qcow2");
  EXPECT_EQ(info.exit_code, 0) << info.err;
  *size_bytes = static_cast<uint64_t>(ParseOrDie(info.out).Find("virtual-size")->AsInt());
  const uint64_t chunks = (*size_bytes + chunk_bytes - 1) / chunk_bytes;
  std::vector<bool> zero(chunks, true);
  const RunResult map = In(dir, "qemu-img map -U --output=json -f " + fmt + " img.qcow2");
  EXPECT_EQ(map.exit_code, 0) << map.err;
  const common::Json entries = ParseOrDie(map.out);
  for (const common::Json& e : entries.items()) {
    const uint64_t start = static_cast<uint64_t>(e.Find("start")->AsInt());
    const uint64_t length = static_cast<uint64_t>(e.Find("length")->AsInt());
    if (e.Find("zero")->AsBool() || length == 0) continue;
    for (uint64_t i = start / chunk_bytes; i <= (start + length - 1) / chunk_bytes; ++i) {
      zero[i] = false;
    }
  }
  return zero;
}

class ConvertKinds : public ::testing::TestWithParam<ImageKind> {
 protected:
  void SetUp() override {
    if (!HaveTool("qemu-img") || !HaveTool("qemu-io")) GTEST_SKIP() << "QEMU tools not installed";
    const RunResult r = In(dir_.path(), GetParam().setup);
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  std::string fmt() const { return GetParam().raw ? "raw" : "qcow2"; }
  TempDir dir_;
};

TEST_P(ConvertKinds, SkipsExactlyWhatQemuCallsZero) {
  // Working directory = the image's: relative data file names then mean the
  // same to QEMU and to us (see ImageKind::relative_data_file).
  const std::string cwd = dir_.path();
  for (uint64_t chunk_bytes : {uint64_t{256} << 10, uint64_t{1} << 20}) {
    SCOPED_TRACE(chunk_bytes);
    uint64_t size_bytes = 0;
    const std::vector<bool> theirs = QemuZeroChunks(cwd, fmt(), chunk_bytes, &size_bytes);
    auto ours = tools::ZeroChunks(dir_.File("img.qcow2"), fmt(), "", size_bytes, chunk_bytes);
    ASSERT_TRUE(ours.ok()) << ours.status();
    ASSERT_EQ(ours->size(), theirs.size());
    int skipped = 0;
    for (size_t i = 0; i < theirs.size(); ++i) {
      EXPECT_EQ((*ours)[i], theirs[i]) << "chunk " << i;
      skipped += (*ours)[i];
    }
    std::printf("%s: %zu chunks of %llu, %d skipped\n", GetParam().name.c_str(), theirs.size(),
                static_cast<unsigned long long>(chunk_bytes), skipped);
  }
}

TEST_P(ConvertKinds, OutputComparesEqual) {
  const std::string f = " -f " + fmt() + " ";
  ASSERT_EQ(In(dir_.path(), Ours() + " convert" + f + "-O raw img.qcow2 out.raw").exit_code, 0);
  EXPECT_EQ(In(dir_.path(), "qemu-img compare" + f + "-F raw img.qcow2 out.raw").exit_code, 0);
  ASSERT_EQ(In(dir_.path(), Ours() + " convert" + f + "-O qcow2 img.qcow2 out.qcow2").exit_code, 0);
  EXPECT_EQ(In(dir_.path(), "qemu-img compare" + f + "-F qcow2 img.qcow2 out.qcow2").exit_code, 0);
  EXPECT_EQ(In(dir_.path(), "qemu-img check out.qcow2").exit_code, 0);
}

INSTANTIATE_TEST_SUITE_P(Kinds, ConvertKinds, ::testing::ValuesIn(ImageKinds()),
                         [](const ::testing::TestParamInfo<ImageKind>& info) {
                           return info.param.name;
                         });

TEST(ConvertCache, EveryModeWritesTheSameImage) {
  if (!HaveTool("qemu-img") || !HaveTool("qemu-io")) GTEST_SKIP() << "QEMU tools not installed";
  TempDir dir;
  ASSERT_EQ(In(dir.path(),
               "qemu-img create -q -f qcow2 src.qcow2 8M && "
               "qemu-io -c 'write -P 7 1M 300k' -c 'write -z 2M 64k' -c 'write -P 9 6M 1M' "
               "src.qcow2 >/dev/null")
                .exit_code,
            0);
  for (const char* out : {"qcow2", "raw"}) {
    for (const char* mode : {"", "-t unsafe", "-t writeback", "-t none", "-t none -T none"}) {
      SCOPED_TRACE(std::string(out) + " " + mode);
      const std::string dst = std::string("dst.") + out;
      const RunResult r =
          In(dir.path(), Ours() + " convert " + mode + " -O " + out + " src.qcow2 " + dst);
      ASSERT_EQ(r.exit_code, 0) << r.err;
      EXPECT_EQ(
          In(dir.path(), "qemu-img compare -F " + std::string(out) + " src.qcow2 " + dst).exit_code,
          0);
    }
  }
  for (const char* bad : {"-t directsync", "-t bogus", "-T bogus"}) {
    const RunResult r = In(dir.path(), Ours() + " convert " + bad + " -O raw src.qcow2 x.raw");
    EXPECT_EQ(r.exit_code, 1) << bad;
    EXPECT_NE(r.err.find("unsupported cache mode"), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
}

}  // namespace
}  // namespace uq::interop
