// qcow2-img convert's options against qemu-img 7.2 convert on the same input
// (the basic copy, -n, -c and the cache modes are in convert_test.cc):
//  - a convert that fails reading its source exits 1 with one line of its
//    own and leaves no target behind; with -n the existing target stays an
//    image qemu-img check accepts;
//  - -S SIZE: the same contents and the same allocation (qemu-img map of the
//    target, raw and qcow2, and the raw file's block count) as qemu-img's -S
//    for sizes from 0 (fully allocated) to 16M, -c and extended L2 included;
//    sizes qemu-img refuses are refused;
//  - -r RATE: a convert of 8 MiB at 4 MiB/s takes 2 s at least (a lower
//    bound only) and writes what qemu-img convert -r writes; -r 0 is no
//    limit; a bad rate is refused as qemu-img refuses it;
//  - -B BACKING -F FMT: for qcow2 and raw sources with and without backing
//    files, new backing files shorter than the source, -c, -S 0 and 4k
//    clusters, the target has the same contents and the same allocation
//    (qemu-img map: data, zero clusters, what is left to the backing file)
//    as qemu-img convert -B's, names BACKING and FMT, and checks clean;
//    qemu-img's refusals are ours;
//  - -o preallocation=off|metadata|falloc|full (qcow2) and off|falloc|full
//    (raw): the same contents and guest allocation as qemu-img's, for raw
//    the same block count; the combinations qemu-img refuses are refused;
//  - -C: raw and qcow2 sources to raw and qcow2 targets give qemu-img -C's
//    contents and allocation (data copied as it is, zeros included; holes
//    left out, or zeroed with -n); raw to raw goes through copy_file_range
//    (seen with strace where it is installed); -C with -c or -S is refused
//    as qemu-img does;
//  - --salvage: over unreadable compressed clusters both tools exit 0,
//    report the same unreadable sectors and write the same image; -q keeps
//    the reports quiet; -C --salvage is refused as qemu-img refuses it.
// Seeded inputs print their seed; UQ_CONVERT_SEED=<n> reruns one.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/interop/interop_util.h"
#include "tests/interop/qcow2_img_under_test.h"

namespace uq::interop {
namespace {

uint64_t Seed() {
  if (const char* s = std::getenv("UQ_CONVERT_SEED")) return std::strtoull(s, nullptr, 0);
  return std::random_device{}();
}

int Lines(const std::string& text) {
  return static_cast<int>(std::count(text.begin(), text.end(), '\n'));
}

// Lines of `text` that start with `prefix`.
int LinesStartingWith(const std::string& text, const std::string& prefix) {
  int n = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    if (text.compare(pos, prefix.size(), prefix) == 0) ++n;
    const size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) break;
    pos = nl + 1;
  }
  return n;
}

// `convert ARGS SRC x.img` is refused: exit 1, one line, no x.img left;
// and qemu-img refuses `convert ARGS SRC y.img` too.
void ExpectRefusedLikeQemuImg(const std::string& dir, const std::string& args,
                              const std::string& src) {
  SCOPED_TRACE(args);
  const RunResult r = In(dir, Ours() + " convert " + args + " " + src + " x.img");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(Lines(r.err), 1) << r.err;
  EXPECT_NE(In(dir, "test -e x.img").exit_code, 0) << "the refused target is left behind";
  EXPECT_NE(In(dir, "qemu-img convert " + args + " " + src + " y.img").exit_code, 0);
}

// `qemu-img map --output=json` of `file` as guest ranges of one status
// ("start+length:data/zero"), adjacent ranges of the same status merged:
// where the host put the clusters (which splits QEMU's entries) is left out.
std::string Allocation(const std::string& dir, const std::string& fmt, const std::string& file) {
  const RunResult map = In(dir, "qemu-img map --output=json -f " + fmt + " " + file);
  EXPECT_EQ(map.exit_code, 0) << map.err;
  std::vector<std::tuple<int64_t, int64_t, bool, bool>> ranges;
  const common::Json entries = ParseOrDie(map.out);
  for (const common::Json& e : entries.items()) {
    const int64_t start = e.Find("start")->AsInt();
    const int64_t length = e.Find("length")->AsInt();
    const bool data = e.Find("data")->AsBool();
    const bool zero = e.Find("zero")->AsBool();
    if (!ranges.empty()) {
      auto& [s, l, d, z] = ranges.back();
      if (d == data && z == zero && s + l == start) {
        l += length;
        continue;
      }
    }
    ranges.emplace_back(start, length, data, zero);
  }
  std::string out;
  for (const auto& [s, l, d, z] : ranges) {
    absl::StrAppend(&out, s, "+", l, ":", d ? "data" : "-", z ? "/zero" : "", " ");
  }
  return out;
}

// A qcow2 image of compressed clusters whose last ones do not decompress
// (their bytes at the end of the file overwritten): reading them fails.
constexpr char kBadCompressedSource[] =
    "qemu-img create -q -f qcow2 plain.qcow2 8M && "
    "qemu-io -c 'write -P 7 0 8M' plain.qcow2 >/dev/null && "
    "qemu-img convert -c -O qcow2 plain.qcow2 bad.qcow2 && "
    "head -c 300 /dev/zero | tr '\\000' '\\377' | "
    "dd of=bad.qcow2 bs=1 seek=$(( $(stat -c %s bad.qcow2) - 400 )) conv=notrunc 2>/dev/null";

TEST(ConvertFailure, RemovesTheTargetItCreated) {
  if (!HaveTool("qemu-img") || !HaveTool("qemu-io")) GTEST_SKIP() << "QEMU tools not installed";
  TempDir dir;
  ASSERT_EQ(In(dir.path(), kBadCompressedSource).exit_code, 0);
  // The oracle agrees that the source cannot be read.
  EXPECT_EQ(In(dir.path(), "qemu-img convert -O raw bad.qcow2 theirs.raw").exit_code, 1);
  for (const char* out : {"raw", "qcow2", "qcow2 -c"}) {
    SCOPED_TRACE(out);
    const RunResult r = In(dir.path(), Ours() + " convert -O " + out + " bad.qcow2 ours.img");
    EXPECT_EQ(r.exit_code, 1) << r.err;
    // One line of ours (the engine may add its own "qcow2: corrupt image"
    // diagnostic, as QEMU's driver does).
    EXPECT_EQ(LinesStartingWith(r.err, "qcow2-img: "), 1) << r.err;
    EXPECT_NE(r.err.find("qcow2-img: convert: reading source at offset"), std::string::npos)
        << r.err;
    EXPECT_NE(In(dir.path(), "test -e ours.img").exit_code, 0) << "the target is left behind";
  }
  // A target that existed before (convert without -n empties it) is ours too
  // once locked: removed as well.
  ASSERT_EQ(In(dir.path(), "cp plain.qcow2 old.qcow2").exit_code, 0);
  EXPECT_EQ(In(dir.path(), Ours() + " convert -O qcow2 bad.qcow2 old.qcow2").exit_code, 1);
  EXPECT_NE(In(dir.path(), "test -e old.qcow2").exit_code, 0);
}

TEST(ConvertFailure, LeavesAnExistingTargetClean) {
  if (!HaveTool("qemu-img") || !HaveTool("qemu-io")) GTEST_SKIP() << "QEMU tools not installed";
  TempDir dir;
  ASSERT_EQ(In(dir.path(), std::string(kBadCompressedSource) +
                               " && qemu-img create -q -f qcow2 old.qcow2 8M && "
                               "qemu-io -c 'write -P 3 0 8M' old.qcow2 >/dev/null && "
                               "head -c 8388608 /dev/urandom > old.raw && cp old.raw keep.raw")
                .exit_code,
            0);
  for (const char* out : {"qcow2", "raw"}) {
    SCOPED_TRACE(out);
    const std::string o = out;
    const RunResult r = In(dir.path(), Ours() + " convert -n -O " + o + " bad.qcow2 old." + o);
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_EQ(LinesStartingWith(r.err, "qcow2-img: "), 1) << r.err;
    EXPECT_EQ(In(dir.path(), "test -s old." + o).exit_code, 0) << "-n target removed";
  }
  const RunResult check = In(dir.path(), "qemu-img check old.qcow2");
  EXPECT_EQ(check.exit_code, 0) << check.out << check.err;
  // What was copied before the failure is the source's; the rest is as it was.
  EXPECT_EQ(
      In(dir.path(), "qemu-io -c 'read -P 7 0 1M' old.qcow2 | grep -q 'read 1048576'").exit_code,
      0);
  // A refused convert (bad option) leaves no new file either.
  const RunResult bad = In(dir.path(), Ours() + " convert -S 100 -O raw bad.qcow2 new.raw");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(In(dir.path(), "test -e new.raw").exit_code, 0);
}

// A raw disk of zeros with seeded islands of data and holes of every size
// around -S's values, kept inside 2 MiB windows (qemu-img decides per
// buffer of 2 MiB; so do we past the default -S). Data at offset 0: QEMU
// always allocates a raw target's first block.
std::string SparseIslands(uint64_t seed) {
  std::mt19937_64 rng(seed);
  const uint64_t lengths[] = {100, 512, 1000, 3000, 4096, 9000, 70000};
  const uint64_t gaps[] = {512, 1024, 2048, 4096, 6000, 8192, 20000, 40000, 70000, 150000};
  std::string cmds = " -c 'write -P 5 0 700'";
  for (uint64_t window = 0; window < 4; ++window) {
    uint64_t pos = window * (2 << 20) + 64 * 1024 + rng() % 4096;
    const uint64_t end = (window + 1) * (2 << 20) - 200000;
    while (pos < end) {
      const uint64_t len = lengths[rng() % std::size(lengths)];
      absl::StrAppend(&cmds, " -c 'write -P ", rng() % 255 + 1, " ", pos, " ", len, "'");
      pos += len + gaps[rng() % std::size(gaps)];
    }
  }
  return "head -c 8M /dev/zero > src.raw && qemu-io -f raw" + cmds + " src.raw >/dev/null";
}

TEST(ConvertSparse, AllocatesWhatQemuImgAllocates) {
  if (!HaveTool("qemu-img") || !HaveTool("qemu-io")) GTEST_SKIP() << "QEMU tools not installed";
  const uint64_t seed = Seed();
  std::printf("[ seed ] %lu (rerun: UQ_CONVERT_SEED=%lu)\n", seed, seed);
  TempDir dir;
  ASSERT_EQ(In(dir.path(), SparseIslands(seed)).exit_code, 0);
  for (const char* sparse : {"", "-S 0", "-S 512", "-S 4k", "-S 8k", "-S 64k", "-S 1M", "-S 16M"}) {
    for (const char* out :
         {"raw", "qcow2", "qcow2 -o cluster_size=4k", "qcow2 -o extended_l2=on", "qcow2 -c"}) {
      SCOPED_TRACE(absl::StrCat(sparse, " -O ", out, " seed ", seed));
      const std::string fmt = std::string(out).substr(0, std::string(out).find(' '));
      const std::string args = std::string(" -f raw ") + sparse + " -O " + out + " src.raw ";
      ASSERT_EQ(In(dir.path(), "rm -f ours theirs").exit_code, 0);
      const RunResult r = In(dir.path(), Ours() + " convert" + args + "ours");
      ASSERT_EQ(r.exit_code, 0) << r.err;
      ASSERT_EQ(In(dir.path(), "qemu-img convert" + args + "theirs").exit_code, 0);
      EXPECT_EQ(In(dir.path(), "qemu-img compare -f raw -F " + fmt + " src.raw ours").exit_code, 0);
      const std::string ours = Allocation(dir.path(), fmt, "ours");
      EXPECT_EQ(ours, Allocation(dir.path(), fmt, "theirs"));
      if (fmt == "raw") {
        const RunResult blocks = In(dir.path(), "stat -c %b ours theirs");
        ASSERT_EQ(blocks.exit_code, 0);
        uint64_t a = 0, b = 0;
        ASSERT_EQ(std::sscanf(blocks.out.c_str(), "%lu %lu", &a, &b), 2) << blocks.out;
        EXPECT_EQ(a, b) << "512-byte blocks allocated, ours vs qemu-img's";
        if (std::string(sparse) == "-S 0") {
          EXPECT_GE(a * 512, uint64_t{8} << 20);  // fully allocated
        } else if (std::string(sparse).empty()) {
          EXPECT_LT(a * 512, uint64_t{4} << 20);  // sparse
        }
      } else {
        EXPECT_EQ(In(dir.path(), "qemu-img check -q ours").exit_code, 0);
      }
    }
  }
  // Sizes qemu-img refuses: one line, exit 1, as qemu-img exits 1.
  for (const char* bad : {"-S 100", "-S 17M", "-S -1", "-S 4x"}) {
    ExpectRefusedLikeQemuImg(dir.path(), bad, "-O raw src.raw");
  }
}

TEST(ConvertRate, TakesAtLeastSizeOverRate) {
  if (!HaveTool("qemu-img")) GTEST_SKIP() << "qemu-img not installed";
  TempDir dir;
  ASSERT_EQ(In(dir.path(), "head -c 8388608 /dev/urandom > src.raw").exit_code, 0);
  for (const char* out : {"raw", "qcow2", "qcow2 -c"}) {
    SCOPED_TRACE(out);
    const std::string fmt = std::string(out).substr(0, std::string(out).find(' '));
    const std::string args = std::string(" -f raw -O ") + out + " src.raw ";
    ASSERT_EQ(In(dir.path(), "rm -f ours theirs").exit_code, 0);
    const auto start = std::chrono::steady_clock::now();
    const RunResult r = In(dir.path(), Ours() + " convert -r 4M" + args + "ours");
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    ASSERT_EQ(r.exit_code, 0) << r.err;
    std::printf("-O %s -r 4M of 8 MiB: %.2f s\n", out, seconds);
    EXPECT_GE(seconds, 2.0);
    ASSERT_EQ(In(dir.path(), "qemu-img convert -r 4M" + args + "theirs").exit_code, 0);
    EXPECT_EQ(
        In(dir.path(), "qemu-img compare -f " + fmt + " -F " + fmt + " ours theirs").exit_code, 0);
  }
  ASSERT_EQ(In(dir.path(), "rm -f ours && " + Ours() +
                               " convert -r 0 -f raw src.raw ours && "
                               "cmp src.raw ours")
                .exit_code,
            0);
  for (const char* bad : {"-r -1", "-r 4Q"}) {
    ExpectRefusedLikeQemuImg(dir.path(), bad, "-f raw src.raw");
  }
}

// Sources over and beside backing files, and new backing files for them.
constexpr char kBackingSetup[] =
    "qemu-img create -q -f qcow2 base.qcow2 8M && "
    "qemu-io -c 'write -P 1 0 8M' base.qcow2 >/dev/null && "
    "head -c 8M /dev/zero | tr '\\000' '\\001' > base.raw && "
    "qemu-img create -q -f qcow2 small.qcow2 3M && "
    "qemu-io -c 'write -P 4 0 3M' small.qcow2 >/dev/null && "
    "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 && "
    "qemu-io -c 'write -P 2 1M 300k' -c 'write -z 3M 64k' -c 'write -z 4M 10k' "
    "-c 'write -P 0 5M 128k' top.qcow2 >/dev/null && "
    "qemu-img create -q -f qcow2 alone.qcow2 8M && "
    "qemu-io -c 'write -P 2 1M 300k' -c 'write -z 2M 64k' -c 'write -P 0 5M 128k' "
    "-c 'write -P 6 7M 64k' alone.qcow2 >/dev/null && "
    "truncate -s 8M holes.raw && "
    "qemu-io -f raw -c 'write -P 3 1M 100k' -c 'write -P 0 2M 64k' holes.raw >/dev/null";

TEST(ConvertBacking, WritesWhatQemuImgWrites) {
  if (!HaveTool("qemu-img") || !HaveTool("qemu-io")) GTEST_SKIP() << "QEMU tools not installed";
  TempDir dir;
  ASSERT_EQ(In(dir.path(), kBackingSetup).exit_code, 0);
  struct Case {
    const char* src;
    const char* backing;
    const char* fmt;
    const char* extra;
  };
  for (const Case& c :
       {Case{"top.qcow2", "base.qcow2", "qcow2", ""},
        Case{"top.qcow2", "base.qcow2", "qcow2", "-c"},
        Case{"top.qcow2", "base.qcow2", "qcow2", "-S 0"},
        Case{"top.qcow2", "base.qcow2", "qcow2", "-o cluster_size=4k"},
        Case{"top.qcow2", "base.raw", "raw", ""}, Case{"top.qcow2", "small.qcow2", "qcow2", "-S 0"},
        Case{"alone.qcow2", "base.qcow2", "qcow2", ""},
        Case{"alone.qcow2", "small.qcow2", "qcow2", ""},
        Case{"holes.raw", "small.qcow2", "qcow2", ""},
        Case{"holes.raw", "base.qcow2", "qcow2", "-c"}}) {
    const std::string args =
        absl::StrCat(" -B ", c.backing, " -F ", c.fmt, " ", c.extra, " -O qcow2 ", c.src, " ");
    SCOPED_TRACE(args);
    ASSERT_EQ(In(dir.path(), "rm -f ours theirs").exit_code, 0);
    const RunResult r = In(dir.path(), Ours() + " convert" + args + "ours");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    ASSERT_EQ(In(dir.path(), "qemu-img convert" + args + "theirs").exit_code, 0);
    EXPECT_EQ(In(dir.path(), "qemu-img compare theirs ours").exit_code, 0);
    if (std::string(c.src) == "top.qcow2" && std::string(c.backing) == "base.qcow2") {
      EXPECT_EQ(In(dir.path(), "qemu-img compare top.qcow2 ours").exit_code, 0);
    }
    EXPECT_EQ(Allocation(dir.path(), "qcow2", "ours"), Allocation(dir.path(), "qcow2", "theirs"));
    const RunResult check = In(dir.path(), "qemu-img check ours");
    EXPECT_EQ(check.exit_code, 0) << check.out;
    const RunResult info = In(dir.path(), "qemu-img info --output=json ours");
    ASSERT_EQ(info.exit_code, 0);
    const common::Json json = ParseOrDie(info.out);
    EXPECT_EQ(json.Find("backing-filename")->AsString(), c.backing);
    EXPECT_EQ(json.Find("backing-filename-format")->AsString(), c.fmt);
  }
  // Refused as qemu-img refuses them, one line each, no target left.
  for (const char* bad : {"-B base.qcow2 -O qcow2", "-F qcow2 -O qcow2",
                          "-B base.qcow2 -F qcow2 -O raw", "-B missing.qcow2 -F qcow2 -O qcow2"}) {
    ExpectRefusedLikeQemuImg(dir.path(), bad, "top.qcow2");
  }
  // qemu-img reports this one but exits 0 (7.2); ours exits 1.
  ASSERT_EQ(In(dir.path(), "qemu-img create -q -f qcow2 z.qcow2 8M").exit_code, 0);
  const RunResult z = In(dir.path(), Ours() +
                                         " convert -n --target-is-zero -B base.qcow2 -F qcow2 "
                                         "-O qcow2 top.qcow2 z.qcow2");
  EXPECT_EQ(z.exit_code, 1);
  EXPECT_EQ(Lines(z.err), 1) << z.err;
}

TEST(ConvertPreallocation, AllocatesWhatQemuImgAllocates) {
  if (!HaveTool("qemu-img") || !HaveTool("qemu-io")) GTEST_SKIP() << "QEMU tools not installed";
  const uint64_t seed = Seed();
  std::printf("[ seed ] %lu (rerun: UQ_CONVERT_SEED=%lu)\n", seed, seed);
  TempDir dir;
  ASSERT_EQ(In(dir.path(), std::string(kBackingSetup) + " && " + SparseIslands(seed)).exit_code, 0);
  for (const char* src : {"-f qcow2 top.qcow2", "-f raw src.raw"}) {
    for (const char* out :
         {"raw -o preallocation=off", "raw -o preallocation=falloc", "raw -o preallocation=full",
          "qcow2 -o preallocation=metadata", "qcow2 -o preallocation=falloc",
          "qcow2 -o preallocation=full", "qcow2 -o preallocation=metadata,cluster_size=4k",
          "qcow2 -o preallocation=full -S 0"}) {
      const std::string args = std::string(" ") + src + " -O " + out + " ";
      SCOPED_TRACE(args + " seed " + std::to_string(seed));
      const std::string fmt = std::string(out).substr(0, std::string(out).find(' '));
      ASSERT_EQ(In(dir.path(), "rm -f ours theirs").exit_code, 0);
      const RunResult r = In(dir.path(), Ours() + " convert" + args + "ours");
      ASSERT_EQ(r.exit_code, 0) << r.err;
      ASSERT_EQ(In(dir.path(), "qemu-img convert" + args + "theirs").exit_code, 0);
      EXPECT_EQ(
          In(dir.path(), "qemu-img compare -f " + fmt + " -F " + fmt + " theirs ours").exit_code,
          0);
      EXPECT_EQ(Allocation(dir.path(), fmt, "ours"), Allocation(dir.path(), fmt, "theirs"));
      if (fmt == "raw") {
        EXPECT_EQ(In(dir.path(), "test $(stat -c %b ours) = $(stat -c %b theirs)").exit_code, 0);
      } else {
        EXPECT_EQ(In(dir.path(), "qemu-img check -q ours").exit_code, 0);
      }
    }
  }
  for (const char* bad : {"-O raw -o preallocation=metadata", "-O qcow2 -c -o preallocation=full",
                          "-O raw -o cluster_size=4k", "-O qcow2 -o preallocation=bogus",
                          "-O qcow2 -B base.qcow2 -F qcow2 -o preallocation=metadata"}) {
    ExpectRefusedLikeQemuImg(dir.path(), bad, "top.qcow2");
  }
}

TEST(ConvertCopyOffload, CopiesWhatQemuImgCopies) {
  if (!HaveTool("qemu-img") || !HaveTool("qemu-io")) GTEST_SKIP() << "QEMU tools not installed";
  TempDir dir;
  ASSERT_EQ(In(dir.path(), std::string(kBackingSetup) +
                               " && qemu-io -f raw -c 'write -P 9 0 4k' -c 'write -P 5 3M 4k' "
                               "holes.raw >/dev/null")
                .exit_code,
            0);
  for (const char* src : {"-f raw holes.raw", "-f qcow2 top.qcow2"}) {
    for (const char* fmt : {"raw", "qcow2"}) {
      const std::string args = std::string(" -C ") + src + " -O " + fmt + " ";
      SCOPED_TRACE(args);
      ASSERT_EQ(In(dir.path(), "rm -f ours theirs").exit_code, 0);
      const RunResult r = In(dir.path(), Ours() + " convert" + args + "ours");
      ASSERT_EQ(r.exit_code, 0) << r.err;
      ASSERT_EQ(In(dir.path(), "qemu-img convert" + args + "theirs").exit_code, 0);
      EXPECT_EQ(
          In(dir.path(), absl::StrCat("qemu-img compare -f ", fmt, " -F ", fmt, " theirs ours"))
              .exit_code,
          0);
      EXPECT_EQ(Allocation(dir.path(), fmt, "ours"), Allocation(dir.path(), fmt, "theirs"));
    }
  }
  // -n: the source's zero ranges are zeroed in the existing target.
  ASSERT_EQ(In(dir.path(), "head -c 8388608 /dev/urandom > ours && cp ours theirs").exit_code, 0);
  const RunResult n = In(dir.path(), Ours() + " convert -C -n -f raw -O raw holes.raw ours");
  EXPECT_EQ(n.exit_code, 0) << n.err;
  ASSERT_EQ(In(dir.path(), "qemu-img convert -C -n -f raw -O raw holes.raw theirs").exit_code, 0);
  EXPECT_EQ(In(dir.path(), "cmp ours theirs && cmp holes.raw ours").exit_code, 0);
  if (HaveTool("strace")) {
    const RunResult traced =
        In(dir.path(), "rm -f ours && strace -f -e trace=copy_file_range -o trace " + Ours() +
                           " convert -C -f raw -O raw holes.raw ours && grep -c "
                           "'copy_file_range(.*= [1-9]' trace");
    EXPECT_EQ(traced.exit_code, 0) << "no copy_file_range copied anything";
  }
  for (const char* bad : {"-C -c -O qcow2", "-C -S 4k", "-C -S 0"}) {
    ExpectRefusedLikeQemuImg(dir.path(), bad, "holes.raw");
  }
}

// The offsets of "error while reading offset N" reports in `err`, sorted.
std::vector<uint64_t> ReportedOffsets(const std::string& err) {
  std::vector<uint64_t> offsets;
  const std::string key = "error while reading offset ";
  for (size_t at = err.find(key); at != std::string::npos; at = err.find(key, at + 1)) {
    offsets.push_back(std::strtoull(err.c_str() + at + key.size(), nullptr, 10));
  }
  std::sort(offsets.begin(), offsets.end());
  return offsets;
}

TEST(ConvertSalvage, GoesOnAsQemuImgDoes) {
  if (!HaveTool("qemu-img") || !HaveTool("qemu-io")) GTEST_SKIP() << "QEMU tools not installed";
  TempDir dir;
  ASSERT_EQ(In(dir.path(), kBadCompressedSource).exit_code, 0);
  for (const char* fmt : {"raw", "qcow2"}) {
    SCOPED_TRACE(fmt);
    const std::string args = std::string(" --salvage -O ") + fmt + " bad.qcow2 ";
    ASSERT_EQ(In(dir.path(), "rm -f ours theirs").exit_code, 0);
    const RunResult ours = In(dir.path(), Ours() + " convert" + args + "ours");
    const RunResult theirs = In(dir.path(), "qemu-img convert" + args + "theirs");
    EXPECT_EQ(ours.exit_code, 0) << ours.err.substr(0, 2000);
    EXPECT_EQ(theirs.exit_code, 0);
    const std::vector<uint64_t> reported = ReportedOffsets(ours.err);
    EXPECT_FALSE(reported.empty());
    EXPECT_EQ(reported, ReportedOffsets(theirs.err));
    EXPECT_EQ(In(dir.path(), absl::StrCat("qemu-img compare -f ", fmt, " -F ", fmt, " theirs ours"))
                  .exit_code,
              0);
    if (std::string(fmt) == "qcow2") {
      EXPECT_EQ(In(dir.path(), "qemu-img check -q ours").exit_code, 0);
    }
  }
  const RunResult quiet =
      In(dir.path(), "rm -f ours && " + Ours() + " convert -q --salvage bad.qcow2 ours");
  EXPECT_EQ(quiet.exit_code, 0);
  EXPECT_EQ(quiet.err.find("qcow2-img"), std::string::npos) << quiet.err.substr(0, 2000);
  const RunResult c = In(dir.path(), Ours() + " convert -C --salvage bad.qcow2 x.img");
  EXPECT_EQ(c.exit_code, 1);
  EXPECT_EQ(Lines(c.err), 1) << c.err;
  EXPECT_NE(In(dir.path(), "qemu-img convert -C --salvage bad.qcow2 y.img").exit_code, 0);
}

}  // namespace
}  // namespace uq::interop
