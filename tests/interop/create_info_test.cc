// qemu-img as the oracle for `qcow2-img create` and `qcow2-img info`:
//  - images made by qemu-img across the option matrix are described by
//    `qcow2-img info` exactly as by `qemu-img info` (JSON documents compared
//    whole, human text compared byte for byte);
//  - images made by qcow2-img across the same matrix pass `qemu-img check`,
//    convert to an all-zero raw file of the right size, and `qemu-img info`
//    reports the requested options.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "tests/interop/interop_util.h"

namespace uq::interop {
namespace {

std::string Qcow2Img() {
  const char* env = std::getenv("UQ_QCOW2_IMG");
  return env && *env ? env : QCOW2_IMG_PATH;
}

struct Case {
  std::string name;
  std::string options;  // -o value, may be empty
  // Backing file to create first ("" = none) and its format.
  std::string backing;
  std::string backing_format;
  std::string size = "64M";  // "" = take the backing file's size
  // Shell commands run after creating, with IMG replaced by the image name.
  std::string post;
};

Case Make(std::string name, std::string options, std::string backing = "",
          std::string backing_format = "", std::string size = "64M", std::string post = "") {
  return Case{std::move(name),           std::move(options), std::move(backing),
              std::move(backing_format), std::move(size),    std::move(post)};
}

std::vector<Case> Matrix() {
  return {
      Make("defaults", ""),
      Make("cluster_512", "cluster_size=512"),
      Make("cluster_4k", "cluster_size=4k"),
      Make("cluster_2M", "cluster_size=2M"),
      Make("compat_0_10", "compat=0.10"),
      Make("compat_v2_cluster_4k", "compat=v2,cluster_size=4096"),
      Make("compat_1_1", "compat=1.1"),
      Make("refcount_1", "refcount_bits=1"),
      Make("refcount_2", "refcount_bits=2"),
      Make("refcount_4", "refcount_bits=4"),
      Make("refcount_8", "refcount_bits=8"),
      Make("refcount_32", "refcount_bits=32"),
      Make("refcount_64", "refcount_bits=64"),
      Make("extended_l2", "extended_l2=on"),
      Make("extended_l2_16k", "extended_l2=on,cluster_size=16k"),
      Make("zstd", "compression_type=zstd"),
      Make("lazy_refcounts", "lazy_refcounts=on"),
      Make("prealloc_metadata", "preallocation=metadata"),
      // qemu-img is slow with 512-byte clusters: a smaller image.
      Make("prealloc_metadata_512_refcount_1",
           "preallocation=metadata,cluster_size=512,refcount_bits=1", "", "", "8M"),
      Make("prealloc_metadata_extended_l2", "preallocation=metadata,extended_l2=on"),
      Make("data_file", "data_file=data.raw"),
      Make("data_file_raw", "data_file=data.raw,data_file_raw=on"),
      Make("backing_qcow2", "", "base.qcow2", "qcow2"),
      Make("backing_qcow2_no_size", "cluster_size=4k", "base.qcow2", "qcow2", ""),
      Make("backing_raw", "", "base.raw", "raw"),
      Make("bitmaps", "", "", "", "64M",
           "qemu-img bitmap --add -g 128k IMG b0 && qemu-img bitmap --add --disable IMG b1"),
      Make("snapshots", "cluster_size=4k", "", "", "64M",
           "qemu-img snapshot -c first IMG && qemu-img snapshot -c second IMG"),
      Make(
          "everything_v3",
          "cluster_size=32k,refcount_bits=8,extended_l2=on,compression_type=zstd,lazy_refcounts=on",
          "base.qcow2", "qcow2"),
  };
}

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class InteropTest : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    if (!HaveTool("qemu-img")) GTEST_SKIP() << "qemu-img not installed";
  }

  // Creates the backing file (with qemu-img) in the test directory.
  void MakeBacking(const Case& c) {
    if (c.backing.empty()) return;
    const RunResult r = RunCommand("cd " + Quote(dir_.path()) + " && qemu-img create -q -f " +
                                   c.backing_format + " " + c.backing + " 96M");
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }

  // "create -f qcow2 [-o ...] [-b ... -F ...] image [size]", run in the test
  // directory so relative names resolve the same way for both tools.
  std::string CreateArgs(const Case& c, const std::string& image) const {
    std::string args = "create -q -f qcow2";
    if (!c.options.empty()) args += " -o " + Quote(c.options);
    if (!c.backing.empty()) args += " -b " + c.backing + " -F " + c.backing_format;
    args += " " + image;
    if (!c.size.empty()) args += " " + c.size;
    return args;
  }

  void Post(const Case& c, const std::string& image) {
    if (c.post.empty()) return;
    std::string command = c.post;
    for (size_t at = command.find("IMG"); at != std::string::npos; at = command.find("IMG", at)) {
      command.replace(at, 3, image);
    }
    const RunResult r = InDir(command);
    ASSERT_EQ(r.exit_code, 0) << command << ": " << r.err;
  }

  RunResult InDir(const std::string& command) const {
    return RunCommand("cd " + Quote(dir_.path()) + " && " + command);
  }

  TempDir dir_;
};

TEST_P(InteropTest, InfoMatchesQemuImgOnQemuImages) {
  const Case& c = GetParam();
  MakeBacking(c);
  RunResult r = InDir("qemu-img " + CreateArgs(c, "img.qcow2"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  Post(c, "img.qcow2");

  for (const std::string& chain : {std::string(""), std::string(" --backing-chain")}) {
    SCOPED_TRACE(chain.empty() ? "single image" : "backing chain");
    const RunResult ours = InDir(Quote(Qcow2Img()) + " info --output=json" + chain + " img.qcow2");
    const RunResult theirs = InDir("qemu-img info --output=json" + chain + " img.qcow2");
    ASSERT_EQ(ours.exit_code, 0) << ours.err;
    ASSERT_EQ(theirs.exit_code, 0) << theirs.err;
    const common::Json a = ParseOrDie(ours.out);
    const common::Json b = ParseOrDie(theirs.out);
    EXPECT_EQ(JsonDiff(a, b), "") << "qcow2-img:\n" << ours.out << "\nqemu-img:\n" << theirs.out;

    // The fields the issue names, checked one by one so a regression in the
    // document comparison itself cannot hide them.
    const common::Json* top = a.kind() == common::Json::Kind::kArray ? &a.items()[0] : &a;
    const common::Json* ref = b.kind() == common::Json::Kind::kArray ? &b.items()[0] : &b;
    for (const char* key : {"virtual-size", "cluster-size", "backing-filename",
                            "backing-filename-format", "format", "dirty-flag"}) {
      const common::Json* x = top->Find(key);
      const common::Json* y = ref->Find(key);
      ASSERT_EQ(x == nullptr, y == nullptr) << key;
      if (x) {
        EXPECT_EQ(JsonDiff(*x, *y), "") << key;
      }
    }
    const common::Json* data = top->Find("format-specific")->Find("data");
    const common::Json* ref_data = ref->Find("format-specific")->Find("data");
    for (const char* key : {"compat", "refcount-bits", "compression-type", "extended-l2",
                            "lazy-refcounts", "corrupt", "data-file", "data-file-raw"}) {
      const common::Json* x = data->Find(key);
      const common::Json* y = ref_data->Find(key);
      ASSERT_EQ(x == nullptr, y == nullptr) << key;
      if (x) {
        EXPECT_EQ(JsonDiff(*x, *y), "") << key;
      }
    }

    // Human output is the same text.
    const RunResult ours_h = InDir(Quote(Qcow2Img()) + " info" + chain + " img.qcow2");
    const RunResult theirs_h = InDir("qemu-img info" + chain + " img.qcow2");
    ASSERT_EQ(ours_h.exit_code, 0) << ours_h.err;
    EXPECT_EQ(ours_h.out, theirs_h.out);
  }
}

TEST_P(InteropTest, QemuImgAcceptsOurImages) {
  const Case& c = GetParam();
  MakeBacking(c);
  RunResult r = InDir(Quote(Qcow2Img()) + " " + CreateArgs(c, "ours.qcow2"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_TRUE(r.err.empty()) << r.err;
  r = InDir("qemu-img " + CreateArgs(c, "ref.qcow2"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  Post(c, "ours.qcow2");
  Post(c, "ref.qcow2");

  r = InDir("qemu-img check ours.qcow2");
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;

  // Same options as qemu-img's own image, as qemu-img itself reports them.
  const common::Json ours = ParseOrDie(InDir("qemu-img info --output=json ours.qcow2").out);
  const common::Json ref = ParseOrDie(InDir("qemu-img info --output=json ref.qcow2").out);
  for (const char* key : {"virtual-size", "cluster-size", "backing-filename",
                          "backing-filename-format", "dirty-flag"}) {
    const common::Json* x = ours.Find(key);
    const common::Json* y = ref.Find(key);
    ASSERT_EQ(x == nullptr, y == nullptr) << key;
    if (x) {
      EXPECT_EQ(JsonDiff(*x, *y), "") << key;
    }
  }
  EXPECT_EQ(JsonDiff(*ours.Find("format-specific"), *ref.Find("format-specific")), "");

  // Reads as zeros, at the full virtual size (through the backing file,
  // which is zero too).
  r = InDir("qemu-img convert -O raw ours.qcow2 out.raw");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string raw = ReadFile(dir_.File("out.raw"));
  EXPECT_EQ(static_cast<int64_t>(raw.size()), ours.Find("virtual-size")->AsInt());
  EXPECT_EQ(raw.find_first_not_of('\0'), std::string::npos) << "non-zero byte in the image";

  // Writes through qemu-io land and read back (the image is usable, not just
  // consistent), and check stays clean afterwards.
  r = InDir("qemu-io -f qcow2 -c 'write -P 0x5a 1M 64k' -c 'read -P 0x5a 1M 64k' ours.qcow2");
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(r.out.find("Pattern verification failed"), std::string::npos) << r.out;
  r = InDir("qemu-img check ours.qcow2");
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
}

INSTANTIATE_TEST_SUITE_P(Options, InteropTest, ::testing::ValuesIn(Matrix()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return info.param.name;
                         });

}  // namespace
}  // namespace uq::interop

namespace uq::interop {
namespace {

TEST(RawCreateTest, QemuImgSeesARawImageOfTheSize) {
  if (!HaveTool("qemu-img")) GTEST_SKIP() << "qemu-img not installed";
  TempDir dir;
  const std::string path = dir.File("disk.raw");
  RunResult r = RunCommand(Quote(Qcow2Img()) + " create -q -f raw " + Quote(path) + " 1536k");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = RunCommand("qemu-img info --output=json " + Quote(path));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const common::Json info = ParseOrDie(r.out);
  EXPECT_EQ(info.Find("format")->AsString(), "raw");
  EXPECT_EQ(info.Find("virtual-size")->AsInt(), 1536 * 1024);
  // And our info agrees with qemu-img's on the whole document.
  const RunResult ours = RunCommand(Quote(Qcow2Img()) + " info --output=json " + Quote(path));
  ASSERT_EQ(ours.exit_code, 0) << ours.err;
  EXPECT_EQ(JsonDiff(ParseOrDie(ours.out), info), "");
}

}  // namespace
}  // namespace uq::interop
