// qcow2-img convert against qemu-img 7.2 on every interop image kind:
//  - which chunks convert skips as zeros (tools::ZeroChunks, from the
//    source's metadata) is exactly what `qemu-img map --output=json` reports
//    as zero for those chunks: nothing with data is skipped, and every chunk
//    QEMU calls zero is skipped;
//  - the output of -O raw and -O qcow2 compares equal to the source
//    (`qemu-img compare`), and the qcow2 output is clean;
//  - in-order convert to qcow2 places every cluster where qemu-img does,
//    whatever -m, and with small clusters makes no longer a file;
//  - the destination cache modes (unsafe, the default; writeback; none)
//    write the same image; an unknown mode is one line, exit 1;
//  - -n writes into an existing qcow2 or raw target full of old data with the
//    same result as qemu-img convert -n (zero ranges zeroed, bytes past the
//    source's end kept); --target-is-zero skips the zeroing;
//  - compressed clusters are packed as QEMU packs them: convert -c output
//    (zlib, zstd; 64 KiB and 4 KiB clusters) of a file system full of small
//    files is within 2% of qemu-img's size and the same bytes whatever -m
//    (clusters are compressed on worker threads), and seeded streams of compressed
//    writes through `qcow2-img io` leave the contents that the same stream
//    leaves in a raw file, and that qemu-io leaves in its own qcow2 image
//    whenever that image passes qemu-img check (the seed is printed;
//    UQ_CONVERT_SEED=<n> reruns one).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/interop/image_kinds.h"
#include "tests/interop/interop_util.h"
#include "tests/interop/qcow2_img_under_test.h"
#include "tools/zero_chunks.h"

namespace uq::interop {
namespace {

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
    auto ours = tools::ZeroChunks(dir_.File("img.qcow2"), fmt(), "", /*allow_devices=*/false,
                                  size_bytes, chunk_bytes);
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

// Default (in-order) convert to qcow2 places clusters as qemu-img does, in
// guest order, however many requests are in flight: a chunk's writes may
// start before the previous chunk's data is written (once its clusters are
// allocated), but never take host clusters before it. The source has data
// runs across 2 MiB chunk boundaries, zero runs inside data, and holes.
TEST(ConvertLayout, InOrderPlacesClustersAsQemuImgWhateverM) {
  if (!HaveTool("qemu-img")) GTEST_SKIP() << "qemu-img not installed";
  TempDir dir;
  ASSERT_EQ(In(dir.path(),
               "truncate -s 40M src.raw && "
               "for r in '0 3' '5 1' '9 7' '20 2' '31 5'; do set -- $r; "
               "dd if=/dev/urandom of=src.raw bs=1M seek=$1 count=$2 conv=notrunc status=none; "
               "done && "
               "dd if=/dev/zero of=src.raw bs=4k seek=2563 count=40 conv=notrunc status=none && "
               "dd if=/dev/zero of=src.raw bs=1k seek=21509 count=3 conv=notrunc status=none")
                .exit_code,
            0);
  // Both tools convert src.raw with `options`; ours must read the same and
  // be clean.
  auto convert_both = [&](const std::string& options) {
    ASSERT_EQ(In(dir.path(), "qemu-img convert -f raw -O qcow2 " + options + " src.raw qemu.qcow2")
                  .exit_code,
              0);
    const RunResult r =
        In(dir.path(), Ours() + " convert -f raw -O qcow2 " + options + " src.raw ours.qcow2");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(In(dir.path(), "qemu-img compare -f raw -F qcow2 src.raw ours.qcow2").exit_code, 0);
    EXPECT_EQ(In(dir.path(), "qemu-img check -q ours.qcow2").exit_code, 0);
  };
  for (const char* m : {"-m 1", "-m 8", "-m 16"}) {
    SCOPED_TRACE(m);
    ASSERT_NO_FATAL_FAILURE(convert_both(m));
    const RunResult theirs = In(dir.path(), "qemu-img map --output=json qemu.qcow2");
    const RunResult mine = In(dir.path(), "qemu-img map --output=json ours.qcow2");
    EXPECT_EQ(mine.out, theirs.out);  // host offsets included
  }
  // Small clusters: refcount blocks every 8 MiB (4 KiB clusters) or 128 KiB
  // (512 bytes); the data runs fill the space up to each block and go on
  // behind it, so the file is no longer than qemu-img's (it was 33% longer
  // with 4 KiB clusters).
  for (const char* cluster : {"4096", "512"}) {
    SCOPED_TRACE(cluster);
    ASSERT_NO_FATAL_FAILURE(convert_both(std::string("-o cluster_size=") + cluster));
    const RunResult sizes = In(dir.path(), "stat -c %s qemu.qcow2 ours.qcow2");
    uint64_t theirs = 0, mine = 0;
    ASSERT_EQ(std::sscanf(sizes.out.c_str(), "%lu %lu", &theirs, &mine), 2) << sizes.out;
    EXPECT_LE(mine, theirs);
  }
}

// A file system of many small text files (what convert -c packs most
// tightly), with some random and some repetitive larger files.
constexpr char kSmallFilesDisk[] =
    "mkdir tree && for d in 0 1 2 3 4 5 6 7; do mkdir tree/$d; "
    "for i in $(seq 1 150); do seq $i $((i * (d + 3))) > tree/$d/f$i; done; done && "
    "head -c 3000000 /dev/urandom > tree/random && seq 1 400000 > tree/numbers && "
    "mke2fs -q -t ext4 -d tree fs.raw 48M";

TEST(ConvertCompressed, PackedLikeQemu) {
  if (!HaveTool("qemu-img") || !HaveTool("mke2fs")) GTEST_SKIP() << "qemu-img or mke2fs missing";
  TempDir dir;
  ASSERT_EQ(In(dir.path(), kSmallFilesDisk).exit_code, 0);
  for (const char* opts :
       {"compression_type=zlib", "compression_type=zstd", "compression_type=zlib,cluster_size=4k",
        "compression_type=zstd,cluster_size=4k"}) {
    SCOPED_TRACE(opts);
    const std::string o = std::string(" -f raw -c -O qcow2 -o ") + opts + " fs.raw ";
    ASSERT_EQ(In(dir.path(), Ours() + " convert" + o + "ours.qcow2").exit_code, 0);
    // Deterministic: one chunk in flight or sixteen, the same bytes.
    ASSERT_EQ(In(dir.path(), Ours() + " convert -m 1" + o + "m1.qcow2").exit_code, 0);
    ASSERT_EQ(In(dir.path(), Ours() + " convert -m 16" + o + "m16.qcow2").exit_code, 0);
    EXPECT_EQ(In(dir.path(), "cmp ours.qcow2 m1.qcow2 && cmp ours.qcow2 m16.qcow2").exit_code, 0);
    ASSERT_EQ(In(dir.path(), "qemu-img convert" + o + "theirs.qcow2").exit_code, 0);
    EXPECT_EQ(In(dir.path(), "qemu-img compare -f raw -F qcow2 fs.raw ours.qcow2").exit_code, 0);
    EXPECT_EQ(In(dir.path(), "qemu-img check ours.qcow2").exit_code, 0);
    const RunResult sizes = In(dir.path(), "stat -c %s ours.qcow2 theirs.qcow2");
    ASSERT_EQ(sizes.exit_code, 0);
    uint64_t ours = 0, theirs = 0;
    ASSERT_EQ(std::sscanf(sizes.out.c_str(), "%lu %lu", &ours, &theirs), 2) << sizes.out;
    std::printf("%s: ours %lu bytes, qemu-img %lu bytes (%.4f)\n", opts, ours, theirs,
                static_cast<double>(ours) / static_cast<double>(theirs));
    EXPECT_LE(static_cast<double>(ours), 1.02 * static_cast<double>(theirs));
    EXPECT_GE(static_cast<double>(ours), 0.98 * static_cast<double>(theirs));
  }
}

uint64_t StreamSeed() {
  if (const char* s = std::getenv("UQ_CONVERT_SEED")) return std::strtoull(s, nullptr, 0);
  return std::random_device{}();
}

// One seeded stream of qemu-io commands: compressed writes into clusters
// that hold no data (QEMU refuses a compressed write over an allocated
// cluster), plain writes over anything at sector granularity, and discards
// of whole clusters. `model` gets the same stream for a raw file: the same
// bytes written plainly, and a discard as the zeros it leaves (a qcow2 v3
// image without a backing file reads a discarded cluster as zeros).
struct Stream {
  std::string cmds;
  std::string model;
};

Stream CompressedStream(std::mt19937_64& rng, uint64_t cluster, uint64_t clusters) {
  std::set<uint64_t> allocated;
  Stream s;
  for (int op = 0; op < 40; ++op) {
    const int kind = static_cast<int>(rng() % 10);
    const uint64_t c = rng() % clusters;
    const unsigned pattern = static_cast<unsigned>(rng() % 255 + 1);
    if (kind < 6) {
      uint64_t n = 1;
      while (n < 3 && c + n < clusters && !allocated.count(c + n) && rng() % 2) ++n;
      if (allocated.count(c)) continue;
      for (uint64_t i = 0; i < n; ++i) allocated.insert(c + i);
      const std::string range = absl::StrCat(" ", c * cluster, " ", n * cluster, "'");
      s.cmds += absl::StrCat(" -c 'write -q -c -P ", pattern, range);
      s.model += absl::StrCat(" -c 'write -q -P ", pattern, range);
    } else if (kind < 9) {
      const uint64_t off = rng() % (clusters * cluster / 512) * 512;
      const uint64_t len = std::min<uint64_t>((rng() % 16 + 1) * 512, clusters * cluster - off);
      for (uint64_t i = off / cluster; i <= (off + len - 1) / cluster; ++i) allocated.insert(i);
      const std::string write = absl::StrCat(" -c 'write -q -P ", pattern, " ", off, " ", len, "'");
      s.cmds += write;
      s.model += write;
    } else {
      allocated.erase(c);
      const std::string range = absl::StrCat(" ", c * cluster, " ", cluster, "'");
      s.cmds += absl::StrCat(" -c 'discard -q", range);
      s.model += absl::StrCat(" -c 'write -q -z", range);
    }
  }
  return s;
}

TEST(IoCompressed, StreamsMatchQemuIo) {
  if (!HaveTool("qemu-img") || !HaveTool("qemu-io")) GTEST_SKIP() << "QEMU tools not installed";
  const uint64_t seed = StreamSeed();
  std::printf("[ seed ] %lu (rerun: UQ_CONVERT_SEED=%lu)\n", seed, seed);
  std::mt19937_64 rng(seed);
  TempDir dir;
  for (const char* kind :
       {"cluster_size=64k", "cluster_size=4k", "cluster_size=64k,compression_type=zstd",
        "cluster_size=32k,extended_l2=on"}) {
    for (int stream = 0; stream < 6; ++stream) {
      SCOPED_TRACE(absl::StrCat(kind, " stream ", stream, " seed ", seed));
      const uint64_t cluster = std::strtoull(std::string(kind).substr(13).c_str(), nullptr, 0)
                               << 10;
      const Stream stream_cmds = CompressedStream(rng, cluster, 24);
      const std::string& cmds = stream_cmds.cmds;
      ASSERT_EQ(
          In(dir.path(),
             absl::StrCat("rm -f a.qcow2 b.qcow2 model.raw && qemu-img create -q -f "
                          "qcow2 -o ",
                          kind, " a.qcow2 ", 24 * cluster, " && cp a.qcow2 b.qcow2 && truncate -s ",
                          24 * cluster, " model.raw"))
              .exit_code,
          0);
      const RunResult ours = In(dir.path(), Ours() + " io" + cmds + " a.qcow2");
      ASSERT_EQ(ours.exit_code, 0) << cmds << "\n" << ours.err;
      const RunResult model = In(dir.path(), "qemu-io -f raw" + stream_cmds.model + " model.raw");
      ASSERT_EQ(model.exit_code, 0) << stream_cmds.model << "\n" << model.err;
      EXPECT_EQ(In(dir.path(), "qemu-img compare -f qcow2 -F raw a.qcow2 model.raw").exit_code, 0)
          << cmds;
      EXPECT_EQ(In(dir.path(), Ours() + " compare -f qcow2 -F raw a.qcow2 model.raw").exit_code, 0)
          << cmds;
      EXPECT_EQ(In(dir.path(), "qemu-img check a.qcow2").exit_code, 0) << cmds;
      const RunResult theirs = In(dir.path(), "qemu-io" + cmds + " b.qcow2");
      ASSERT_EQ(theirs.exit_code, 0) << cmds << "\n" << theirs.err;
      ASSERT_EQ(theirs.out.find("failed"), std::string::npos) << cmds << "\n" << theirs.out;
      // qemu-io 7.2 can corrupt its own image here: a plain write over a
      // compressed cluster frees the host cluster that held it, the next
      // plain write takes that host cluster, and the next compressed write
      // still packs into it (seed 1513109010, ops 2-5: refcount 4 on a data
      // cluster, and its bytes overwritten). QEMU's image is then no oracle,
      // and the raw model above judges alone.
      if (In(dir.path(), "qemu-img check b.qcow2").exit_code != 0) {
        std::printf(
            "[ qemu ] %s stream %d: qemu-io's own image fails qemu-img check; "
            "judged against the raw model only\n",
            kind, stream);
        continue;
      }
      EXPECT_EQ(In(dir.path(), "qemu-img compare a.qcow2 b.qcow2").exit_code, 0) << cmds;
      EXPECT_EQ(In(dir.path(), Ours() + " compare a.qcow2 b.qcow2").exit_code, 0) << cmds;
    }
  }
}

TEST(ConvertExisting, MatchesQemuImg) {
  if (!HaveTool("qemu-img") || !HaveTool("qemu-io")) GTEST_SKIP() << "QEMU tools not installed";
  TempDir dir;
  ASSERT_EQ(In(dir.path(),
               "qemu-img create -q -f qcow2 src.qcow2 8M && "
               "qemu-io -c 'write -P 7 1M 300k' -c 'write -z 2M 64k' -c 'write -P 9 6M 1M' "
               "src.qcow2 >/dev/null && "
               "qemu-img create -q -f qcow2 old.qcow2 10M && "
               "qemu-io -c 'write -P 3 0 10M' old.qcow2 >/dev/null && "
               "head -c 10485760 /dev/urandom > old.raw")
                .exit_code,
            0);
  for (const char* out : {"qcow2", "raw"}) {
    SCOPED_TRACE(out);
    const std::string o = std::string(out);
    ASSERT_EQ(
        In(dir.path(), "cp old." + o + " ours." + o + " && cp old." + o + " theirs." + o).exit_code,
        0);
    const RunResult r = In(dir.path(), Ours() + " convert -n -O " + o + " src.qcow2 ours." + o);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    ASSERT_EQ(In(dir.path(), "qemu-img convert -n -O " + o + " src.qcow2 theirs." + o).exit_code,
              0);
    EXPECT_EQ(
        In(dir.path(), "qemu-img compare -f " + o + " -F " + o + " ours." + o + " theirs." + o)
            .exit_code,
        0);
  }
  EXPECT_EQ(In(dir.path(), "cmp ours.raw theirs.raw").exit_code, 0);
  EXPECT_EQ(In(dir.path(), "qemu-img check ours.qcow2").exit_code, 0);
  // --target-is-zero on a target that does read as zeros.
  ASSERT_EQ(In(dir.path(), "qemu-img create -q -f qcow2 z.qcow2 8M && " + Ours() +
                               " convert -n --target-is-zero -O qcow2 src.qcow2 z.qcow2")
                .exit_code,
            0);
  EXPECT_EQ(In(dir.path(), "qemu-img compare src.qcow2 z.qcow2").exit_code, 0);
  // Refused, one line each, the target untouched.
  ASSERT_EQ(
      In(dir.path(), "qemu-img create -q -f qcow2 small.qcow2 4M && cp old.raw keep.raw").exit_code,
      0);
  for (const char* bad : {"--target-is-zero -O raw src.qcow2 keep.raw",
                          "-n -o cluster_size=4k -O qcow2 src.qcow2 old.qcow2",
                          "-n -O qcow2 src.qcow2 small.qcow2"}) {
    const RunResult r = In(dir.path(), Ours() + " convert " + bad);
    EXPECT_EQ(r.exit_code, 1) << bad;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
  EXPECT_EQ(In(dir.path(), "cmp old.raw keep.raw").exit_code, 0);
  EXPECT_EQ(In(dir.path(), "qemu-img check small.qcow2").exit_code, 0);
}

}  // namespace
}  // namespace uq::interop
