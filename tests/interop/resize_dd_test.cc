// qcow2-img resize and dd against qemu-img 7.2: the same operation by each
// tool on its own copy of a QEMU-made image gives `qemu-img compare` exit 0,
// a clean `qemu-img check` of ours and the same virtual size, and a grow with
// each --preallocation mode allocates the ranges qemu-img's allocates (by
// `qemu-img map`); bad input is one line, exit 1, and leaves the image
// byte-identical.
//
// Each test sets its image up once and runs several operations on it (ctest
// runs every test in its own process, so this is where setup is shared).
#include <gtest/gtest.h>

#include <cstdint>
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

// Runs `command` in `dir`.
std::string Ours() { return Quote(Qcow2Img()); }

int Lines(const std::string& text) {
  int n = 0;
  for (char c : text) n += c == '\n';
  return n;
}

uint64_t VirtualSize(const std::string& dir, const std::string& file, const std::string& fmt) {
  const RunResult r = In(dir, "qemu-img info -U --output=json -f " + fmt + " " + Quote(file));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  common::Json j = ParseOrDie(r.out);
  const common::Json* v = j.Find("virtual-size");
  return v == nullptr ? 0 : static_cast<uint64_t>(v->AsInt());
}

// Sets up `setup` in a fresh directory, or skips the test without QEMU.
bool MakeImages(const TempDir& dir, const std::string& setup) {
  if (!HaveTool("qemu-img") || !HaveTool("qemu-io")) return false;
  const RunResult r = In(dir.path(), setup);
  EXPECT_EQ(r.exit_code, 0) << setup << "\n" << r.err;
  return r.exit_code == 0;
}

// Resizes copies of img.qcow2 with both tools (`args` before the file, the
// size after it) and compares the results.
void ResizeBoth(const std::string& dir, const std::string& args, const std::string& size,
                const std::string& fmt = "qcow2") {
  SCOPED_TRACE("resize " + args + " " + size);
  ASSERT_EQ(In(dir, "cp img.qcow2 ours.img && cp img.qcow2 theirs.img").exit_code, 0);
  const RunResult ours = In(dir, Ours() + " resize -f " + fmt + " " + args + " ours.img " + size);
  const RunResult theirs =
      In(dir, "qemu-img resize -f " + fmt + " " + args + " theirs.img " + size);
  ASSERT_EQ(theirs.exit_code, 0) << theirs.err;
  ASSERT_EQ(ours.exit_code, 0) << ours.err;
  EXPECT_EQ(ours.out, "Image resized.\n");
  EXPECT_EQ(ours.err, "");
  const RunResult compare =
      In(dir, "qemu-img compare -f " + fmt + " -F " + fmt + " ours.img theirs.img");
  EXPECT_EQ(compare.exit_code, 0) << compare.out << compare.err;
  if (fmt == "qcow2") {
    const RunResult check = In(dir, "qemu-img check ours.img");
    EXPECT_EQ(check.exit_code, 0) << check.out << check.err;
  } else {
    EXPECT_EQ(ReadFile(dir + "/ours.img").size(), ReadFile(dir + "/theirs.img").size());
  }
  EXPECT_EQ(VirtualSize(dir, "ours.img", fmt), VirtualSize(dir, "theirs.img", fmt));
}

// What `qemu-img map` says of each range of `file`: present, allocated in
// which layer (data, depth); host offsets and zero reads aside (a hole and
// written zeros differ there). Adjacent equal ranges merged.
std::string MapShape(const std::string& dir, const std::string& file) {
  const RunResult r = In(dir, "qemu-img map -U --output=json " + Quote(file));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  std::string shape;
  std::string last;
  int64_t start = 0;
  int64_t end = 0;
  const common::Json map = ParseOrDie(r.out);
  for (const common::Json& e : map.items()) {
    const std::string kind = std::string(e.Find("present")->AsBool() ? "present" : "absent") +
                             (e.Find("data")->AsBool() ? " data" : "") + " depth " +
                             std::to_string(e.Find("depth")->AsInt());
    if (kind != last && end > start) {
      shape += std::to_string(start) + "+" + std::to_string(end - start) + " " + last + "\n";
      start = end;
    }
    last = kind;
    end = e.Find("start")->AsInt() + e.Find("length")->AsInt();
  }
  if (end > start) shape += std::to_string(start) + "+" + std::to_string(end - start) + " " + last;
  return shape;
}

struct ResizeCase {
  std::string name;
  std::string setup;     // leaves img.qcow2 (and its backing files)
  std::string grow;      // a size to grow to
  std::string shrink;    // a size to shrink to (with --shrink)
  std::string snapshot;  // if set: compared after `snapshot -a` too
  // A size to grow to with each --preallocation mode (small: full writes it).
  std::string prealloc_grow = "+1100K";
};

void PrintTo(const ResizeCase& c, std::ostream* os) { *os << c.name; }

std::string KindSetup(const std::string& name) {
  for (const ImageKind& k : ImageKinds()) {
    if (k.name == name) return k.setup;
  }
  ADD_FAILURE() << "no image kind " << name;
  return "false";
}

std::vector<ResizeCase> ResizeCases() {
  const std::string create = "qemu-img create -q -f qcow2 ";
  return {
      // plain_64k holds data at 0-1M, 5M-5.3M and 7M: the shrink to 5M+100k
      // cuts through data and leaves a partial last cluster.
      {"plain_64k", KindSetup("plain_64k"), "+40M", "5222400", ""},
      {"cluster_4k", KindSetup("cluster_4k"), "1G", "-9M", ""},
      {"compat_0_10", KindSetup("compat_0_10"), "+3G", "6M", ""},
      {"extended_l2", KindSetup("extended_l2"), "100M", "2100K", ""},
      {"compressed_zlib", KindSetup("compressed_zlib"), "+1M", "8704K", ""},
      {"snapshots", KindSetup("snapshots"), "+64M", "3M", "one"},
      // Small clusters: the shrink drops whole L2 tables a snapshot shares,
      // whose clusters lose the active layer's references.
      {"snapshots_512",
       create + "-o cluster_size=512 img.qcow2 8M && qemu-io -c 'write -P 0x11 0 8M' img.qcow2 " +
           ">/dev/null && qemu-img snapshot -c one img.qcow2 && qemu-io -c 'write -P 0x22 1M 1M' " +
           "img.qcow2 >/dev/null",
       "+1M", "2M", "one"},
      // The overlay is shorter than its backing file: growing it must hide
      // the backing file's bytes past its old end (zero clusters).
      {"overlay_shorter",
       create + "base.qcow2 64M && qemu-io -c 'write -P 0x44 0 64M' base.qcow2 >/dev/null && " +
           create +
           "-b base.qcow2 -F qcow2 img.qcow2 20M && qemu-io -c 'write -P 0x11 1M 2M' "
           "-c 'write -P 0x12 19M 1M' img.qcow2 >/dev/null",
       "+30M", "1536K", ""},
      {"backing_qcow2", KindSetup("backing_qcow2"), "+16M", "3M", ""},
      // An end inside a cluster over a longer backing file: a preallocated
      // grow copies the first cluster's head up from the backing file.
      {"overlay_unaligned",
       create + "base.qcow2 4M && qemu-io -c 'write -P 0x44 0 4M' base.qcow2 >/dev/null && " +
           create +
           "-b base.qcow2 -F qcow2 img.qcow2 1000K && qemu-io -c 'write -P 0x11 64K 8K' "
           "img.qcow2 >/dev/null",
       "+1M", "500K", "", "+1300K"},
      // The same with extended L2 and ends inside subclusters: falloc and
      // full allocate every subcluster of the grown clusters (the first
      // one's head copied up), metadata leaves them zero, as qemu-img.
      {"overlay_unaligned_extended",
       create + "base.qcow2 4M && qemu-io -c 'write -P 0x44 0 4M' base.qcow2 >/dev/null && " +
           create +
           "-o extended_l2=on -b base.qcow2 -F qcow2 img.qcow2 1000K && "
           "qemu-io -c 'write -P 0x11 64K 8K' img.qcow2 >/dev/null",
       "+1M", "1025K", "", "+1301K"},
  };
}

class ResizeKindsTest : public ::testing::TestWithParam<ResizeCase> {};

TEST_P(ResizeKindsTest, SameResultAsQemuImg) {
  const ResizeCase& c = GetParam();
  TempDir dir;
  if (!MakeImages(dir, c.setup)) GTEST_SKIP() << "qemu-img or qemu-io not found";
  ResizeBoth(dir.path(), "", c.grow);
  ResizeBoth(dir.path(), "--shrink", c.shrink);
  // Preallocated grows allocate what qemu-img's allocate.
  for (const char* mode : {"metadata", "falloc", "full"}) {
    ResizeBoth(dir.path(), std::string("--preallocation=") + mode, c.prealloc_grow);
    EXPECT_EQ(MapShape(dir.path(), "ours.img"), MapShape(dir.path(), "theirs.img")) << mode;
  }
  if (!c.snapshot.empty()) {
    // The snapshot survives the shrink unchanged.
    ASSERT_EQ(In(dir.path(), "qemu-img snapshot -a " + c.snapshot +
                                 " ours.img && qemu-img snapshot -a " + c.snapshot + " theirs.img")
                  .exit_code,
              0);
    EXPECT_EQ(In(dir.path(), "qemu-img compare ours.img theirs.img").exit_code, 0);
    EXPECT_EQ(In(dir.path(), "qemu-img check ours.img").exit_code, 0);
  }
}

INSTANTIATE_TEST_SUITE_P(Kinds, ResizeKindsTest, ::testing::ValuesIn(ResizeCases()),
                         [](const ::testing::TestParamInfo<ResizeCase>& info) {
                           return info.param.name;
                         });

// Headroom in a 512-byte-cluster image: the L1 table (4 clusters for 8 MiB)
// must grow and move; the header names the new table.
TEST(ResizeTest, GrowingPastTheL1TableMovesIt) {
  TempDir dir;
  if (!MakeImages(dir, KindSetup("cluster_512"))) GTEST_SKIP() << "qemu-img or qemu-io not found";
  const std::string before = ReadFile(dir.File("img.qcow2")).substr(36, 12);
  ResizeBoth(dir.path(), "", "+100M");
  const std::string after = ReadFile(dir.File("ours.img")).substr(36, 12);
  EXPECT_NE(before.substr(4), after.substr(4)) << "the L1 table did not move";
  EXPECT_NE(before.substr(0, 4), after.substr(0, 4)) << "the L1 table did not grow";
  // And again from there: a second move, then a shrink below the first size.
  ASSERT_EQ(In(dir.path(), "cp ours.img img.qcow2").exit_code, 0);
  ResizeBoth(dir.path(), "", "+200M");
  ResizeBoth(dir.path(), "--shrink", "5M");
  // An L1 table as long as a refcount block's range is refused, not attempted
  // (the allocator cannot place it; see src/engine/resize.h).
  const std::string image = ReadFile(dir.File("img.qcow2"));
  const RunResult big = In(dir.path(), Ours() + " resize img.qcow2 1G");
  EXPECT_EQ(big.exit_code, 1);
  EXPECT_EQ(Lines(big.err), 1) << big.err;
  EXPECT_TRUE(ReadFile(dir.File("img.qcow2")) == image);
}

TEST(ResizeTest, RawImages) {
  TempDir dir;
  if (!MakeImages(dir,
                  "qemu-img create -q -f raw img.qcow2 3M && qemu-io -f raw -c 'write -P 9 0 3M' "
                  "img.qcow2 >/dev/null")) {
    GTEST_SKIP() << "qemu-img or qemu-io not found";
  }
  ResizeBoth(dir.path(), "", "+1000", "raw");  // raw sizes need not be sector multiples
  ResizeBoth(dir.path(), "--shrink", "-1M", "raw");
  ResizeBoth(dir.path(), "--shrink", "12345", "raw");
  ResizeBoth(dir.path(), "--preallocation=falloc", "+1M", "raw");
  ResizeBoth(dir.path(), "--preallocation=full", "5000000", "raw");
}

// External data files, raw and not: each tool resizes its own image (with
// its own data file) made by qemu-img, by resize or amend -o size; the data
// file ends where qemu-img's does, and the same ranges are mapped (a raw
// data file maps every cluster, so its grows allocate).
TEST(ResizeTest, ExternalDataFiles) {
  TempDir dir;
  if (!MakeImages(dir, "true")) GTEST_SKIP() << "qemu-img or qemu-io not found";
  // Each step is a verb and its arguments, `F` standing for the image.
  const std::string steps[] = {
      "resize -q F +2M",
      "resize -q F +1300K",
      "resize -q --shrink F 1000K",
      "resize -q --preallocation=metadata F +1300K",
      "resize -q --preallocation=falloc F +1300K",
      "resize -q --preallocation=full F 9M",
      "amend -o size=6M F",
  };
  for (const char* raw : {"on", "off"}) {
    for (const std::string& step : steps) {
      SCOPED_TRACE(std::string("data_file_raw=") + raw + " " + step);
      std::string setup = "rm -f o.qcow2 o.data t.qcow2 t.data";
      for (const char* f : {"o", "t"}) {
        setup += std::string(" && qemu-img create -q -f qcow2 -o data_file=") + f +
                 ".data,data_file_raw=" + raw + " " + f + ".qcow2 4M && qemu-io -c 'write -P 3 " +
                 "0 100k' -c 'write -P 4 3M 200k' " + f + ".qcow2 >/dev/null";
      }
      ASSERT_EQ(In(dir.path(), setup).exit_code, 0);
      const size_t at = step.find('F');
      const std::string before = step.substr(0, at);
      const std::string after = step.substr(at + 1);
      const RunResult ours = In(dir.path(), Ours() + " " + before + "o.qcow2" + after);
      ASSERT_EQ(ours.exit_code, 0) << ours.err;
      ASSERT_EQ(In(dir.path(), "qemu-img " + before + "t.qcow2" + after).exit_code, 0);
      EXPECT_EQ(In(dir.path(), "qemu-img compare o.qcow2 t.qcow2").exit_code, 0);
      const RunResult check = In(dir.path(), "qemu-img check o.qcow2");
      EXPECT_EQ(check.exit_code, 0) << check.out << check.err;
      EXPECT_EQ(ReadFile(dir.File("o.data")).size(), ReadFile(dir.File("t.data")).size());
      EXPECT_EQ(MapShape(dir.path(), "o.qcow2"), MapShape(dir.path(), "t.qcow2"));
      EXPECT_EQ(VirtualSize(dir.path(), "o.qcow2", "qcow2"),
                VirtualSize(dir.path(), "t.qcow2", "qcow2"));
    }
  }
}

// Refusals: one line naming the problem, exit 1, the image untouched; the
// words are qemu-img's where it has them.
TEST(ResizeTest, BadInputLeavesTheImageUnchanged) {
  TempDir dir;
  if (!MakeImages(dir, KindSetup("plain_64k") +
                           " && qemu-img create -q -f qcow2 -o compat=0.10 v2snap.qcow2 1M && "
                           "qemu-img snapshot -c s v2snap.qcow2 && qemu-img create -q -f qcow2 "
                           "bitmaps.qcow2 1M && qemu-img bitmap --add bitmaps.qcow2 b0 && "
                           "qemu-img create -q -f raw raw.img 1M")) {
    GTEST_SKIP() << "qemu-img or qemu-io not found";
  }
  struct Bad {
    std::string args;
    std::string file;
    std::string message;
    bool qemu_refuses = true;
  };
  const Bad cases[] = {
      {"img.qcow2 16M", "img.qcow2", "Use the --shrink option to perform a shrink operation."},
      {"img.qcow2 -1M", "img.qcow2", "Use the --shrink option to perform a shrink operation."},
      {"img.qcow2 abc", "img.qcow2", "Parameter 'size' expects a non-negative number below 2^64"},
      {"img.qcow2 +1000", "img.qcow2", "The new size must be a multiple of 512"},
      {"--shrink img.qcow2 -- -1G", "img.qcow2", "New image size must be positive"},
      {"img.qcow2 0", "img.qcow2", "New image size must be positive"},
      {"--shrink --preallocation=metadata img.qcow2 1M", "img.qcow2",
       "Preallocation can only be used for growing images"},
      {"--preallocation=bogus img.qcow2 +1M", "img.qcow2", "Invalid preallocation mode 'bogus'"},
      {"-f raw --preallocation=metadata raw.img +1M", "raw.img",
       "Unsupported preallocation mode: metadata"},
      // qemu-img resizes the bitmaps; the engine's writable open would mark
      // them stale, so this is refused before the open.
      {"bitmaps.qcow2 2M", "bitmaps.qcow2", "resizing an image with persistent bitmaps", false},
      {"img.qcow2", "img.qcow2", "Expecting image file name and size"},
      {"v2snap.qcow2 2M", "v2snap.qcow2", "Can't resize a v2 image which has snapshots"},
      {"missing.qcow2 1G", "", "Could not open 'missing.qcow2'"},
  };
  for (const Bad& b : cases) {
    SCOPED_TRACE(b.args);
    const std::string before = b.file.empty() ? "" : ReadFile(dir.File(b.file));
    const RunResult r = In(dir.path(), Ours() + " resize " + b.args);
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(r.out, "");
    EXPECT_EQ(Lines(r.err), 1) << r.err;
    EXPECT_NE(r.err.find(b.message), std::string::npos) << r.err;
    if (!b.file.empty()) {
      EXPECT_TRUE(ReadFile(dir.File(b.file)) == before) << "image changed";
    }
    // qemu-img refuses the same (exit 1).
    if (b.qemu_refuses) {
      EXPECT_EQ(In(dir.path(), "qemu-img resize " + b.args + " >/dev/null 2>&1").exit_code, 1);
      if (!b.file.empty()) {
        EXPECT_TRUE(ReadFile(dir.File(b.file)) == before);
      }
    }
  }
  // The writer's lock: refused (one line, image untouched) while qemu-io
  // has the image open.
  {
    const std::string before = ReadFile(dir.File("img.qcow2"));
    const RunResult locked =
        In(dir.path(), "{ qemu-io -c 'sleep 800' img.qcow2 >/dev/null 2>&1 & sleep 0.3; " + Ours() +
                           " resize img.qcow2 +1M; r=$?; wait; exit $r; }");
    EXPECT_EQ(locked.exit_code, 1);
    EXPECT_EQ(Lines(locked.err), 1) << locked.err;
    EXPECT_NE(locked.err.find("Failed to get \"write\" lock"), std::string::npos) << locked.err;
    EXPECT_TRUE(ReadFile(dir.File("img.qcow2")) == before);
  }
  // -q prints nothing on success.
  const RunResult quiet = In(dir.path(), Ours() + " resize -q img.qcow2 +1M");
  EXPECT_EQ(quiet.exit_code, 0) << quiet.err;
  EXPECT_EQ(quiet.out, "");
}

// dd: every bs/count/skip combination below, qcow2 and raw in and out, gives
// what qemu-img dd gives (exit code, guest bytes, virtual size, warning).
TEST(DdTest, SameResultAsQemuImgDd) {
  TempDir dir;
  if (!MakeImages(dir,
                  "qemu-img create -q -f qcow2 -o cluster_size=4k in.qcow2 1M && "
                  "qemu-io -c 'write -P 7 0 1M' -c 'write -P 9 4096 512' -c 'write -P 11 5000 100' "
                  "-c 'write -P 13 900k 100k' in.qcow2 >/dev/null && "
                  "qemu-img convert -O raw in.qcow2 in.raw")) {
    GTEST_SKIP() << "qemu-img or qemu-io not found";
  }
  const char* operands[] = {
      "bs=4K count=4 skip=2", "bs=1000 count=3", "bs=3 skip=5 count=4000",
      "bs=64k skip=3",        "count=0",         "skip=100000",
      "bs=1M count=1k",
  };
  for (const char* op : operands) {
    for (const char* in : {"in.qcow2", "in.raw"}) {
      for (const char* fmt : {"qcow2", "raw"}) {
        SCOPED_TRACE(std::string(op) + " if=" + in + " -O " + fmt);
        const std::string tail = std::string(" -O ") + fmt + " if=" + in + " " + op;
        const RunResult theirs = In(dir.path(), "rm -f q.out && qemu-img dd of=q.out" + tail);
        const RunResult ours = In(dir.path(), "rm -f o.out && " + Ours() + " dd of=o.out" + tail);
        EXPECT_EQ(ours.exit_code, theirs.exit_code) << ours.err << theirs.err;
        EXPECT_EQ(ours.out, theirs.out);
        EXPECT_EQ(ours.err.empty(), theirs.err.empty()) << ours.err << theirs.err;
        const RunResult compare = In(
            dir.path(), std::string("qemu-img compare -f ") + fmt + " -F " + fmt + " o.out q.out");
        EXPECT_EQ(compare.exit_code, 0) << compare.out << compare.err;
        EXPECT_EQ(VirtualSize(dir.path(), "o.out", fmt), VirtualSize(dir.path(), "q.out", fmt));
        if (std::string(fmt) == "qcow2") {
          EXPECT_EQ(In(dir.path(), "qemu-img check o.out").exit_code, 0);
        } else {
          EXPECT_TRUE(ReadFile(dir.File("o.out")) == ReadFile(dir.File("q.out")));
        }
      }
    }
  }
}

TEST(DdTest, BadInputIsOneLine) {
  TempDir dir;
  if (!MakeImages(dir, "qemu-img create -q -f qcow2 in.qcow2 1M")) {
    GTEST_SKIP() << "qemu-img or qemu-io not found";
  }
  struct Bad {
    std::string args;
    std::string message;
  };
  const Bad cases[] = {
      {"if=in.qcow2", "Must specify both input and output files"},
      {"of=out.raw", "Must specify both input and output files"},
      {"if=in.qcow2 of=out.raw foo=1", "unrecognized operand foo"},
      {"if=in.qcow2 of=out.raw bs=0", "Invalid bs specified. Must be between 1 and 2147483647."},
      {"if=in.qcow2 of=out.raw bs=abc", "Invalid bs specified."},
      {"if=in.qcow2 of=out.raw count=1x", "Invalid count specified."},
      {"if=missing.qcow2 of=out.raw", "Could not open 'missing.qcow2'"},
  };
  for (const Bad& b : cases) {
    SCOPED_TRACE(b.args);
    const RunResult r = In(dir.path(), Ours() + " dd " + b.args);
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(Lines(r.err), 1) << r.err;
    EXPECT_NE(r.err.find(b.message), std::string::npos) << r.err;
    EXPECT_EQ(In(dir.path(), "qemu-img dd " + b.args + " >/dev/null 2>&1").exit_code, 1);
  }
}

}  // namespace
}  // namespace uq::interop
