// qcow2-img amend against qemu-img 7.2: on QEMU-made images of several kinds,
// holding seeded random data written by qemu-io, the same sequence of amends
// by each tool on its own copy gives `qemu-img compare` exit 0 (for images
// with snapshots: after `snapshot -a` of each too), a clean `qemu-img check`
// of ours and the same `qemu-img info --output=json` apart from file name,
// allocation and dates. Bad input is one line, exit 1, and leaves the image
// byte-identical.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/interop/image_kinds.h"
#include "tests/interop/interop_util.h"
#include "tests/interop/qcow2_img_under_test.h"

namespace uq::interop {
namespace {

int Lines(const std::string& text) {
  return static_cast<int>(std::count(text.begin(), text.end(), '\n'));
}

std::string Kind(const std::string& name) { return ImageKindSetup(name); }

uint64_t Seed() {
  const char* env = std::getenv("UQ_AMEND_SEED");
  return env && *env ? std::strtoull(env, nullptr, 10) : std::random_device{}();
}

// qemu-io writes of random patterns (and, with `zeros`, zero writes) at
// random cluster-aligned places of the first `size_mib` MiB of img.qcow2.
std::string RandomWrites(uint64_t seed, int size_mib, bool zeros) {
  std::mt19937_64 rng(seed);
  std::string cmd = "qemu-io";
  for (int i = 0; i < 12; ++i) {
    const uint64_t offset = rng() % (static_cast<uint64_t>(size_mib) * 16) * 64 * 1024;
    const uint64_t len = (1 + rng() % 4) * 16 * 1024;
    if (zeros && rng() % 3 == 0) {
      absl::StrAppend(&cmd, " -c 'write -z ", offset, " ", len, "'");
    } else {
      absl::StrAppend(&cmd, " -c 'write -P ", 1 + rng() % 250, " ", offset, " ", len, "'");
    }
  }
  return cmd + " img.qcow2 >/dev/null";
}

struct AmendCase {
  std::string name;
  std::string setup;  // leaves img.qcow2 (and its backing files)
  int size_mib = 0;   // where the random writes go; 0: none
  bool zeros = false;
  std::vector<std::string> amends;     // applied in turn to both copies
  std::vector<std::string> snapshots;  // compared after `snapshot -a` of each
};

void PrintTo(const AmendCase& c, std::ostream* os) { *os << c.name; }

std::vector<AmendCase> Cases() {
  const std::string create = "qemu-img create -q -f qcow2 ";
  const std::vector<std::string> round_trip = {
      "lazy_refcounts=on",  "compat=0.10", "compat=1.1,lazy_refcounts=on",
      "lazy_refcounts=off", "compat=v2",   "compat=v3"};
  return {
      {"plain_64k", Kind("plain_64k"), 32, true, round_trip, {}},
      {"cluster_4k", Kind("cluster_4k"), 16, true, round_trip, {}},
      {"cluster_512", Kind("cluster_512"), 8, true, {"compat=0.10", "compat=1.1"}, {}},
      {"compat_0_10",
       Kind("compat_0_10"),
       32,
       false,
       {"compat=1.1", "lazy_refcounts=on", "compat=0.10", "compat=1.1,refcount_bits=8",
        "refcount_bits=16,compat=0.10"},
       {}},
      {"refcount_widths",
       Kind("cluster_4k"),
       16,
       true,
       {"refcount_bits=1", "refcount_bits=64", "refcount_bits=2", "refcount_bits=32",
        "refcount_bits=4", "refcount_bits=8", "refcount_bits=16"},
       {}},
      {"refcount_bits_1",
       Kind("refcount_bits_1"),
       32,
       true,
       {"refcount_bits=16,compat=0.10", "compat=1.1,refcount_bits=64"},
       {}},
      {"prealloc_metadata", Kind("prealloc_metadata"), 32, true, {"compat=0.10"}, {}},
      {"compressed_zstd_no_compressed",
       create + "-o compression_type=zstd img.qcow2 16M",
       16,
       true,
       {"compat=0.10", "compat=1.1"},
       {}},
      {"compressed_zlib", Kind("compressed_zlib"), 0, false, {"compat=0.10", "compat=1.1"}, {}},
      {"lazy_dirty_off", Kind("lazy_refcounts_dirty"), 0, false, {"lazy_refcounts=off"}, {}},
      {"lazy_dirty_downgrade", Kind("lazy_refcounts_dirty"), 0, false, {"compat=0.10"}, {}},
      {"lazy_dirty_refcount_bits", Kind("lazy_refcounts_dirty"), 0, false, {"refcount_bits=4"}, {}},
      {"data_file",
       Kind("data_file"),
       0,
       false,
       {"data_file=img.data", "data_file_raw=off", "lazy_refcounts=on"},
       {}},
      {"data_file_raw",
       Kind("data_file_raw"),
       0,
       false,
       {"data_file_raw=on", "data_file_raw=off"},
       {}},
      {"snapshots",
       Kind("snapshots"),
       32,
       true,
       {"compat=0.10", "compat=1.1", "lazy_refcounts=on", "refcount_bits=2", "refcount_bits=32"},
       {"one", "two"}},
      {"snapshots_v2",
       create + "-o compat=0.10 img.qcow2 16M && qemu-io -c 'write -P 3 0 2M' img.qcow2 " +
           ">/dev/null && qemu-img snapshot -c one img.qcow2",
       16,
       false,
       {"compat=1.1", "compat=0.10"},
       {"one"}},
      // Preallocated zero clusters over a backing file keep hiding it.
      {"backing_qcow2",
       Kind("backing_qcow2"),
       0,
       false,
       {"backing_file=base.qcow2,backing_fmt=qcow2", "compat=0.10", "compat=1.1"},
       {}},
      // size=: grow (the L1 table moves) and shrink, without --shrink.
      {"size_64k", Kind("plain_64k"), 32, true, {"size=1G", "size=16M", "size=48M"}, {}},
      {"size_4k", Kind("cluster_4k"), 16, true, {"size=2G", "size=8M"}, {}},
      {"size_snapshots", Kind("snapshots"), 32, true, {"size=8M", "size=256M"}, {"one", "two"}},
      {"size_and_lazy_refcounts",
       Kind("plain_64k"),
       16,
       false,
       {"size=96M,lazy_refcounts=on", "lazy_refcounts=off,size=40M"},
       {}},
      {"backing_chain_3",
       Kind("backing_chain_3"),
       32,
       false,
       {"compat=0.10", "backing_fmt=qcow2,backing_file=mid.qcow2"},
       {}},
  };
}

class AmendKindsTest : public ::testing::TestWithParam<AmendCase> {};

TEST_P(AmendKindsTest, SameResultAsQemuImg) {
  const AmendCase& c = GetParam();
  if (!HaveTool("qemu-img") || !HaveTool("qemu-io"))
    GTEST_SKIP() << "qemu-img or qemu-io not found";
  TempDir dir;
  const uint64_t seed = Seed();
  std::printf("seed %llu (UQ_AMEND_SEED)\n", static_cast<unsigned long long>(seed));
  std::string setup = c.setup;
  if (c.size_mib > 0) setup += " && " + RandomWrites(seed, c.size_mib, c.zeros);
  ASSERT_EQ(In(dir.path(), setup).exit_code, 0) << setup;
  ASSERT_EQ(In(dir.path(), "cp img.qcow2 ours.img && cp img.qcow2 theirs.img").exit_code, 0);
  for (const std::string& o : c.amends) {
    SCOPED_TRACE("amend -o " + o + ", seed " + std::to_string(seed));
    const RunResult ours = In(dir.path(), Ours() + " amend -o " + Quote(o) + " ours.img");
    const RunResult theirs = In(dir.path(), "qemu-img amend -o " + Quote(o) + " theirs.img");
    ASSERT_EQ(theirs.exit_code, 0) << theirs.err;
    ASSERT_EQ(ours.exit_code, 0) << ours.err;
    EXPECT_EQ(ours.out + ours.err, "");
    const RunResult compare = In(dir.path(), "qemu-img compare ours.img theirs.img");
    EXPECT_EQ(compare.exit_code, 0) << compare.out << compare.err;
    const RunResult check = In(dir.path(), "qemu-img check ours.img");
    EXPECT_EQ(check.exit_code, 0) << check.out << check.err;
    const RunResult a = In(dir.path(), "qemu-img info --output=json ours.img");
    const RunResult b = In(dir.path(), "qemu-img info --output=json theirs.img");
    ASSERT_EQ(a.exit_code, 0) << a.err;
    EXPECT_EQ(InfoWithoutVaryingFields(a.out), InfoWithoutVaryingFields(b.out));
  }
  for (const std::string& s : c.snapshots) {
    SCOPED_TRACE("snapshot -a " + s);
    ASSERT_EQ(In(dir.path(), "qemu-img snapshot -a " + s + " ours.img && qemu-img snapshot -a " +
                                 s + " theirs.img")
                  .exit_code,
              0);
    EXPECT_EQ(In(dir.path(), "qemu-img compare ours.img theirs.img").exit_code, 0);
    EXPECT_EQ(In(dir.path(), "qemu-img check ours.img").exit_code, 0);
  }
}

INSTANTIATE_TEST_SUITE_P(Kinds, AmendKindsTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<AmendCase>& info) {
                           return info.param.name;
                         });

// data_file=NAME renames an image's data file: both tools write the same
// header, and the image reads the same through the file under its new name.
TEST(AmendTest, DataFileRename) {
  if (!HaveTool("qemu-img") || !HaveTool("qemu-io"))
    GTEST_SKIP() << "qemu-img or qemu-io not found";
  TempDir dir;
  ASSERT_EQ(
      In(dir.path(), Kind("data_file") + " && cp img.qcow2 ours.img && cp img.qcow2 theirs.img && "
                                         "cp img.data moved.data")
          .exit_code,
      0);
  const RunResult ours = In(dir.path(), Ours() + " amend -o data_file=moved.data ours.img");
  ASSERT_EQ(ours.exit_code, 0) << ours.err;
  ASSERT_EQ(In(dir.path(), "qemu-img amend -o data_file=moved.data theirs.img").exit_code, 0);
  EXPECT_TRUE(ReadFile(dir.File("ours.img")) == ReadFile(dir.File("theirs.img")));
  EXPECT_NE(In(dir.path(), "qemu-img info ours.img").out.find("data file: moved.data"),
            std::string::npos);
  EXPECT_EQ(In(dir.path(), "qemu-img compare ours.img img.qcow2").exit_code, 0);
  EXPECT_EQ(In(dir.path(), "qemu-img check ours.img").exit_code, 0);
}

// Refusals: one line naming the problem, exit 1, the image byte-identical;
// the words are qemu-img's where it has them. `qemu` says whether qemu-img
// refuses too.
TEST(AmendTest, BadInputLeavesTheImageUnchanged) {
  if (!HaveTool("qemu-img") || !HaveTool("qemu-io"))
    GTEST_SKIP() << "qemu-img or qemu-io not found";
  TempDir dir;
  const std::string create = "qemu-img create -q -f qcow2 ";
  const std::string setup =
      "mkdir k && cd k && for kind in plain ext zstd rc1 data bitmaps; do mkdir $kind; done && "
      "(cd plain && " +
      Kind("plain_64k") + ") && (cd ext && " + Kind("extended_l2") + ") && (cd zstd && " +
      Kind("compressed_zstd") + ") && (cd rc1 && " + Kind("refcount_bits_1") + ") && (cd data && " +
      Kind("data_file") + ") && (cd bitmaps && " + Kind("bitmaps") + ") && cd .. && " + create +
      "-o compat=0.10 v2.qcow2 1M && " + create + "base.qcow2 4M && " + create +
      "-b base.qcow2 -F qcow2 over.qcow2 && qemu-io -c 'write -z 0 64k' over.qcow2 >/dev/null && " +
      create +
      "snap.qcow2 4M && qemu-img snapshot -c s snap.qcow2 && qemu-img resize -q "
      "snap.qcow2 8M && " +
      create + "snap1.qcow2 1M && qemu-io -c 'write 0 64k' snap1.qcow2 " +
      ">/dev/null && qemu-img snapshot -c s snap1.qcow2 && qemu-img create -q -f raw r.img 1M";
  ASSERT_EQ(In(dir.path(), setup).exit_code, 0) << setup;
  struct Bad {
    std::string args;
    std::string file;
    std::string message;
    bool qemu;
  };
  const Bad cases[] = {
      {"-o foo=1 k/plain/img.qcow2", "k/plain/img.qcow2", "Invalid parameter 'foo'", true},
      {"-o cluster_size=4k k/plain/img.qcow2", "k/plain/img.qcow2",
       "Invalid parameter 'cluster_size'", true},
      {"-o compat=9 k/plain/img.qcow2", "k/plain/img.qcow2", "Unknown compatibility level 9", true},
      {"-o lazy_refcounts=maybe k/plain/img.qcow2", "k/plain/img.qcow2",
       "Parameter 'lazy_refcounts' expects 'on' or 'off'", true},
      {"-o compat=0.10,lazy_refcounts=on k/plain/img.qcow2", "k/plain/img.qcow2",
       "Lazy refcounts only supported with compatibility level 1.1", true},
      {"-o lazy_refcounts=on v2.qcow2", "v2.qcow2",
       "Lazy refcounts only supported with compatibility level 1.1", true},
      {"-o backing_file=x.img k/plain/img.qcow2", "k/plain/img.qcow2",
       "Cannot amend the backing file", true},
      {"-o backing_fmt=raw over.qcow2", "over.qcow2", "Cannot amend the backing file", true},
      {"-o compat=0.10 k/ext/img.qcow2", "k/ext/img.qcow2",
       "Cannot downgrade an image with incompatible features 0x10 set", true},
      {"-o compat=0.10 k/zstd/img.qcow2", "k/zstd/img.qcow2",
       "Cannot downgrade an image with zstd compression type and existing compressed clusters",
       true},
      {"-o compat=0.10 k/rc1/img.qcow2", "k/rc1/img.qcow2", "compat=0.10 requires refcount_bits=16",
       true},
      {"-o compat=0.10 k/data/img.qcow2", "k/data/img.qcow2",
       "Cannot downgrade an image with a data file", true},
      {"-o compat=0.10 snap.qcow2", "snap.qcow2", "Internal snapshots prevent downgrade of image",
       true},
      {"-f raw -o compat=1.1 r.img", "r.img",
       "Format driver 'raw' does not support option amendment", true},
      {"k/plain/img.qcow2", "k/plain/img.qcow2", "Must specify options (-o)", true},
      // Supported by qemu-img, not (yet) by qcow2-img: refused, never ignored.
      {"-o refcount_bits=3 k/plain/img.qcow2", "k/plain/img.qcow2",
       "Refcount width must be a power of two and may not exceed 64 bits", true},
      {"-o refcount_bits=8 v2.qcow2", "v2.qcow2",
       "Refcount widths other than 16 bits require compatibility level 1.1", true},
      {"-o refcount_bits=1 snap1.qcow2", "snap1.qcow2",
       "Cannot decrease refcount entry width to 1 bits", true},
      {"-o size=100000 k/plain/img.qcow2", "k/plain/img.qcow2",
       "The new size must be a multiple of 512", true},
      {"-o size=lots k/plain/img.qcow2", "k/plain/img.qcow2",
       "Parameter 'size' expects a non-negative number below 2^64", true},
      {"-o size=64M,compat=0.10 k/plain/img.qcow2", "k/plain/img.qcow2",
       "amending size together with compat or refcount_bits is not supported", false},
      {"-o refcount_bits=8,size=64M k/plain/img.qcow2", "k/plain/img.qcow2",
       "amending size together with compat or refcount_bits is not supported", false},
      {"-o size=64M k/bitmaps/img.qcow2", "k/bitmaps/img.qcow2",
       "resizing an image with persistent bitmaps", false},
      {"-o encrypt.format=luks k/plain/img.qcow2", "k/plain/img.qcow2",
       "amending 'encrypt.format' is not supported", false},
      {"-o data_file_raw=on k/data/img.qcow2", "k/data/img.qcow2",
       "data-file-raw cannot be set on existing images", true},
      {"-o data_file=a.data k/plain/img.qcow2", "k/plain/img.qcow2",
       "data-file can only be set for images that use an external data file", true},
      {"-o data_file_raw=maybe k/data/img.qcow2", "k/data/img.qcow2",
       "Parameter 'data_file_raw' expects 'on' or 'off'", true},
      {"-o compat=0.10 k/bitmaps/img.qcow2", "k/bitmaps/img.qcow2", "persistent bitmaps", false},
      {"-o compat=0.10 over.qcow2", "over.qcow2", "a backing file and zero clusters", false},
  };
  for (const Bad& b : cases) {
    SCOPED_TRACE(b.args);
    const std::string before = ReadFile(dir.File(b.file));
    ASSERT_FALSE(before.empty());
    const RunResult r = In(dir.path(), Ours() + " amend " + b.args);
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(r.out, "");
    EXPECT_EQ(Lines(r.err), 1) << r.err;
    EXPECT_NE(r.err.find(b.message), std::string::npos) << r.err;
    EXPECT_TRUE(ReadFile(dir.File(b.file)) == before) << "image changed";
    if (b.qemu) {
      EXPECT_EQ(In(dir.path(), "qemu-img amend " + b.args + " >/dev/null 2>&1").exit_code, 1);
      EXPECT_TRUE(ReadFile(dir.File(b.file)) == before);
    }
  }
  // The writer's lock: refused (one line, image untouched) while qemu-io
  // has the image open.
  const std::string before = ReadFile(dir.File("v2.qcow2"));
  const RunResult locked =
      In(dir.path(), "{ qemu-io -c 'sleep 800' v2.qcow2 >/dev/null 2>&1 & sleep 0.3; " + Ours() +
                         " amend -o compat=1.1 v2.qcow2; r=$?; wait; exit $r; }");
  EXPECT_EQ(locked.exit_code, 1);
  EXPECT_EQ(Lines(locked.err), 1) << locked.err;
  EXPECT_NE(locked.err.find("Failed to get \"write\" lock"), std::string::npos) << locked.err;
  EXPECT_TRUE(ReadFile(dir.File("v2.qcow2")) == before);
  // -o help lists the supported options and changes nothing.
  const RunResult help = In(dir.path(), Ours() + " amend -o help");
  EXPECT_EQ(help.exit_code, 0);
  for (const char* o : {"compat=", "lazy_refcounts=", "refcount_bits=", "data_file=",
                        "data_file_raw=", "backing_file=", "backing_fmt=", "size="}) {
    EXPECT_NE(help.out.find(o), std::string::npos) << help.out;
  }
}

}  // namespace
}  // namespace uq::interop
