// The engine against QEMU's tools as the oracle, through the command line.
//
// For each kind of starting image (made by qemu-img / qemu-io: compressed
// clusters, extended L2, internal snapshots, backing chains, external data
// file, dirty lazy-refcount content, several cluster sizes) the same seeded
// random command stream runs through `qcow2-img io` and through `qemu-io` on
// copies of the image. Then:
//   - `qemu-img compare` of the two results exits 0 (identical contents);
//   - `qemu-img check` of ours exits 0 (no corruption, no leak);
//   - reads with -P in the stream check contents against a flat model seeded
//     from qemu-img's raw conversion of the start image (both tools must pass);
//   - `qcow2-img convert -O raw` of the start image (and of our result) is
//     byte-identical to `qemu-img convert -O raw`;
//   - `qcow2-img convert -O qcow2 [-c]` output passes `qemu-img check` and
//     `qemu-img compare` against its source.
//
// The seed is printed; UQ_INTEROP_SEED=<n> reruns one seed.
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"

namespace {

struct RunResult {
  int exit_code = -1;
  std::string output;  // stdout + stderr
};

// Runs `command` with bash in `dir`; captures stdout and stderr together.
RunResult Sh(const std::string& dir, const std::string& command) {
  std::string full = absl::StrCat("cd '", dir, "' && { ", command, " ; } 2>&1");
  RunResult result;
  FILE* p = popen(full.c_str(), "r");
  if (p == nullptr) return result;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) result.output.append(buf, n);
  int status = pclose(p);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

std::string Describe(const std::string& command, const RunResult& r) {
  std::string out = r.output.size() > 4000 ? r.output.substr(0, 4000) + "..." : r.output;
  return absl::StrCat("$ ", command, "\nexit ", r.exit_code, "\n", out);
}

#define EXPECT_SH(dir, command, expected_exit)                      \
  do {                                                              \
    std::string cmd_ = (command);                                   \
    RunResult r_ = Sh((dir), cmd_);                                 \
    EXPECT_EQ(r_.exit_code, (expected_exit)) << Describe(cmd_, r_); \
  } while (0)

#define ASSERT_SH(dir, command, expected_exit)                      \
  do {                                                              \
    std::string cmd_ = (command);                                   \
    RunResult r_ = Sh((dir), cmd_);                                 \
    ASSERT_EQ(r_.exit_code, (expected_exit)) << Describe(cmd_, r_); \
  } while (0)

std::vector<uint8_t> ReadWholeFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

uint64_t BaseSeed() {
  if (const char* s = std::getenv("UQ_INTEROP_SEED")) return std::strtoull(s, nullptr, 0);
  return std::random_device{}();
}

struct StartImage {
  StartImage(std::string name_in, std::string setup_in, uint64_t size, uint64_t cluster,
             int commands_in = 60, bool external_data_in = false, std::string snapshot_in = "")
      : name(std::move(name_in)),
        setup(std::move(setup_in)),
        size_bytes(size),
        cluster_bytes(cluster),
        commands(commands_in),
        external_data(external_data_in),
        snapshot(std::move(snapshot_in)) {}

  std::string name;
  // bash run in the start directory; must leave `img.qcow2` there.
  std::string setup;
  uint64_t size_bytes;
  uint64_t cluster_bytes;
  // Number of random commands in the stream.
  int commands;
  // The image has an external data file (QEMU resolves its relative name
  // against the working directory, so cross-directory compares are skipped).
  bool external_data;
  // An internal snapshot to convert with -l (compared with qemu-img's).
  std::string snapshot;
};

void PrintTo(const StartImage& image, std::ostream* os) { *os << image.name; }

// The random command stream and its flat model of the guest contents.
class StreamGenerator {
 public:
  StreamGenerator(uint64_t seed, std::vector<uint8_t> start_contents, uint64_t cluster_bytes)
      : rng_(seed), model_(std::move(start_contents)), cluster_bytes_(cluster_bytes) {}

  std::vector<std::string> Generate(int count) {
    std::vector<std::string> out;
    for (int i = 0; i < count; ++i) out.push_back(Next());
    // End with a full verification sweep of a few random ranges.
    for (int i = 0; i < 6; ++i) out.push_back(Read());
    return out;
  }

 private:
  static constexpr uint64_t kSector = 512;

  uint64_t Uniform(uint64_t lo, uint64_t hi) {  // inclusive
    return std::uniform_int_distribution<uint64_t>(lo, hi)(rng_);
  }

  // A range (mostly sector aligned); lengths from one sector to a few clusters,
  // biased to start near cluster boundaries so pieces cross them.
  std::pair<uint64_t, uint64_t> Range() {
    uint64_t size = model_.size();
    uint64_t max_len = std::min<uint64_t>(size, std::max<uint64_t>(4 * cluster_bytes_, 64 * 1024));
    max_len = std::min<uint64_t>(max_len, 1 << 20);
    uint64_t len = Uniform(1, max_len / kSector) * kSector;
    uint64_t offset;
    if (Uniform(0, 2) == 0) {
      uint64_t cluster = Uniform(0, size / cluster_bytes_ - 1) * cluster_bytes_;
      int64_t delta = static_cast<int64_t>(Uniform(0, 8)) - 4;
      offset = std::clamp<int64_t>(static_cast<int64_t>(cluster) + delta * kSector, 0,
                                   static_cast<int64_t>(size - kSector));
    } else {
      offset = Uniform(0, size / kSector - 1) * kSector;
    }
    len = std::min(len, size - offset);
    // One request in eight is not sector aligned (both tools read-modify-write
    // the partial sectors).
    if (Uniform(0, 7) == 0) {
      uint64_t head = std::min<uint64_t>(Uniform(0, kSector - 1), len - 1);
      offset += head;
      len -= head;
      len -= std::min<uint64_t>(Uniform(0, kSector - 1), len - 1);
    }
    return {offset, len};
  }

  void Fill(uint64_t offset, uint64_t len, uint8_t value) {
    std::fill(model_.begin() + offset, model_.begin() + offset + len, value);
  }

  std::string Read() {
    // Half the reads target the most recent write so they are often uniform.
    uint64_t offset, len;
    if (last_len_ != 0 && Uniform(0, 1) == 0) {
      offset = last_offset_ + Uniform(0, last_len_ - 1);
      len = Uniform(1, last_offset_ + last_len_ - offset);
    } else {
      std::tie(offset, len) = Range();
    }
    uint8_t first = model_[offset];
    bool uniform = std::all_of(model_.begin() + offset, model_.begin() + offset + len,
                               [&](uint8_t b) { return b == first; });
    if (uniform) return absl::StrFormat("read -q -P 0x%02x %d %d", first, offset, len);
    return absl::StrFormat("read -q %d %d", offset, len);
  }

  std::string Next() {
    uint64_t kind = Uniform(0, 99);
    if (kind < 40) {
      auto [offset, len] = Range();
      uint8_t pattern = static_cast<uint8_t>(Uniform(1, 255));
      Fill(offset, len, pattern);
      last_offset_ = offset;
      last_len_ = len;
      return absl::StrFormat("write -q -P 0x%02x %d %d", pattern, offset, len);
    }
    if (kind < 55) {
      auto [offset, len] = Range();
      Fill(offset, len, 0);
      bool unmap = Uniform(0, 1) == 1;
      last_offset_ = offset;
      last_len_ = len;
      return absl::StrFormat("write -q -z%s %d %d", unmap ? " -u" : "", offset, len);
    }
    if (kind < 65) {
      // Discards on whole clusters: QEMU ignores partial clusters.
      uint64_t clusters = model_.size() / cluster_bytes_;
      uint64_t first = Uniform(0, clusters - 1);
      uint64_t count = Uniform(1, std::min<uint64_t>(4, clusters - first));
      Fill(first * cluster_bytes_, count * cluster_bytes_, 0);
      return absl::StrFormat("discard -q %d %d", first * cluster_bytes_, count * cluster_bytes_);
    }
    if (kind < 72) return "flush";
    return Read();
  }

  std::mt19937_64 rng_;
  std::vector<uint8_t> model_;
  uint64_t cluster_bytes_;
  uint64_t last_offset_ = 0;
  uint64_t last_len_ = 0;
};

std::string CommandArgs(const std::vector<std::string>& commands) {
  std::vector<std::string> quoted;
  for (const std::string& c : commands) quoted.push_back(absl::StrCat("-c '", c, "'"));
  return absl::StrJoin(quoted, " ");
}

class EngineInterop : public ::testing::TestWithParam<StartImage> {
 protected:
  void SetUp() override {
    if (Sh("/", "command -v qemu-img && command -v qemu-io").exit_code != 0) {
      GTEST_SKIP() << "qemu-img / qemu-io not installed";
    }
    char tmpl[] = "/tmp/uq-interop-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    root_ = tmpl;
  }
  void TearDown() override {
    if (!root_.empty() && !HasFailure()) Sh("/", absl::StrCat("rm -rf '", root_, "'"));
    if (HasFailure()) std::cerr << "kept work directory " << root_ << "\n";
  }

  std::string root_;
};

const std::string kOurs = UQ_QCOW2_IMG;

TEST_P(EngineInterop, SameStreamSameContents) {
  const StartImage& image = GetParam();
  const uint64_t seed = BaseSeed();
  std::cout << "[ seed ] " << image.name << " seed=" << seed << " (rerun: UQ_INTEROP_SEED=" << seed
            << ")\n";
  SCOPED_TRACE(absl::StrCat("image ", image.name, " seed ", seed));

  const std::string start = root_ + "/start";
  ASSERT_SH(root_, "mkdir start ours theirs conv", 0);
  // qemu-io exits with SIGABRT for the dirty-image recipe; only the image
  // matters, so the setup's own exit status is checked by the info below.
  RunResult setup = Sh(start, absl::StrCat("set -e; ", image.setup));
  RunResult made = Sh(start, "qemu-img info -U img.qcow2 >/dev/null");
  ASSERT_EQ(made.exit_code, 0) << Describe(image.setup, setup);

  // Start contents (through QEMU) seed the model.
  ASSERT_SH(start, "qemu-img convert -U -O raw img.qcow2 ../conv/start.theirs.raw", 0);
  std::vector<uint8_t> contents = ReadWholeFile(root_ + "/conv/start.theirs.raw");
  ASSERT_EQ(contents.size(), image.size_bytes);

  // 1. convert -O raw of the start image: byte-identical to qemu-img's.
  EXPECT_SH(start, absl::StrCat(kOurs, " convert -O raw img.qcow2 ../conv/start.ours.raw"), 0);
  EXPECT_SH(root_, "cmp conv/start.ours.raw conv/start.theirs.raw", 0);

  // 2. convert -O qcow2 [-c] of the start image: clean and identical.
  struct QcowOut {
    std::string name;
    std::string args;
  };
  const QcowOut outputs[] = {
      {"plain", "-O qcow2"},
      {"zlib", "-c -O qcow2"},
      {"zstd", "-c -O qcow2 -o compression_type=zstd"},
      {"small", "-O qcow2 -o cluster_size=4k,refcount_bits=1"},
      {"subclusters", "-O qcow2 -o cluster_size=16k,extended_l2=on,refcount_bits=64"},
      {"v2_lazy", "-O qcow2 -o compat=1.1,lazy_refcounts=on,cluster_size=1M"},
  };
  for (const QcowOut& o : outputs) {
    std::string dst = absl::StrCat("../conv/", o.name, ".qcow2");
    EXPECT_SH(start, absl::StrCat(kOurs, " convert ", o.args, " img.qcow2 ", dst), 0);
    EXPECT_SH(start, absl::StrCat("qemu-img check ", dst), 0);
    EXPECT_SH(start, absl::StrCat("qemu-img compare -U img.qcow2 ", dst), 0);
  }

  if (!image.snapshot.empty()) {
    EXPECT_SH(start,
              absl::StrCat(kOurs, " convert -l ", image.snapshot,
                           " -O raw img.qcow2 ../conv/snap.ours.raw"),
              0);
    EXPECT_SH(start,
              absl::StrCat("qemu-img convert -U -l snapshot.name=", image.snapshot,
                           " -O raw img.qcow2 ../conv/snap.theirs.raw"),
              0);
    EXPECT_SH(root_, "cmp conv/snap.ours.raw conv/snap.theirs.raw", 0);
  }

  // 3. The same stream through both tools.
  ASSERT_SH(root_, "cp -a start/. ours/ && cp -a start/. theirs/", 0);
  StreamGenerator gen(seed, std::move(contents), image.cluster_bytes);
  std::vector<std::string> stream = gen.Generate(image.commands);
  std::string args = CommandArgs(stream);
  EXPECT_SH(root_ + "/theirs", absl::StrCat("qemu-io ", args, " img.qcow2"), 0);
  EXPECT_SH(root_ + "/ours", absl::StrCat(kOurs, " io ", args, " img.qcow2"), 0);

  // Every command runs inside the image's directory: QEMU resolves a
  // relative external data file name against the working directory.
  const std::string ours = root_ + "/ours";
  const std::string theirs = root_ + "/theirs";
  EXPECT_SH(ours, "qemu-img convert -O raw img.qcow2 ../conv/after.ours.qemu.raw", 0);
  EXPECT_SH(theirs, "qemu-img convert -O raw img.qcow2 ../conv/after.theirs.raw", 0);
  EXPECT_SH(root_, "cmp conv/after.ours.qemu.raw conv/after.theirs.raw", 0);
  if (!image.external_data) {
    EXPECT_SH(root_, "qemu-img compare ours/img.qcow2 theirs/img.qcow2", 0);
  }
  EXPECT_SH(ours, "qemu-img check img.qcow2", 0);
  // Our image is clean after close: no dirty bit left behind.
  RunResult info = Sh(ours, "qemu-img info --output=json img.qcow2");
  EXPECT_EQ(info.exit_code, 0) << info.output;
  EXPECT_EQ(info.output.find("\"dirty-flag\": true"), std::string::npos) << info.output;

  // 4. Our read path on our own result agrees with QEMU's, byte for byte.
  EXPECT_SH(ours, absl::StrCat(kOurs, " convert -O raw img.qcow2 ../conv/after.ours.raw"), 0);
  EXPECT_SH(root_, "cmp conv/after.ours.raw conv/after.theirs.raw", 0);
}

std::vector<StartImage> StartImages() {
  // A source of compressible but non-uniform data for the compressed images.
  const std::string kMixedRaw =
      "qemu-img create -q -f raw src.raw 32M && "
      "qemu-io -f raw -c 'write -P 0x5a 0 3M' -c 'write -P 0xa5 8M 1M' "
      "-c 'write -P 0x01 12M 64k' -c 'write -P 0x02 12352k 12k' -c 'write -P 0x03 30M 2M' "
      "src.raw >/dev/null && head -c 262144 /dev/urandom | dd of=src.raw bs=64k seek=64 "
      "conv=notrunc status=none";
  const std::string kSomeWrites =
      "qemu-io -c 'write -P 0x11 0 1M' -c 'write -P 0x22 5M 300k' -c 'write -z 1536k 64k' "
      "-c 'write -P 0x33 7M 4k' img.qcow2 >/dev/null";
  return {
      {"plain_64k", "qemu-img create -q -f qcow2 img.qcow2 32M && " + kSomeWrites, 32 << 20,
       64 << 10},
      {"cluster_512",
       "qemu-img create -q -f qcow2 -o cluster_size=512 img.qcow2 8M && " + kSomeWrites, 8 << 20,
       512},
      {"cluster_4k",
       "qemu-img create -q -f qcow2 -o cluster_size=4k img.qcow2 16M && " + kSomeWrites, 16 << 20,
       4096},
      {"cluster_2M",
       "qemu-img create -q -f qcow2 -o cluster_size=2M img.qcow2 64M && " + kSomeWrites, 64 << 20,
       2 << 20},
      {"refcount_bits_1",
       "qemu-img create -q -f qcow2 -o refcount_bits=1 img.qcow2 32M && " + kSomeWrites, 32 << 20,
       64 << 10},
      {"compat_0_10", "qemu-img create -q -f qcow2 -o compat=0.10 img.qcow2 32M && " + kSomeWrites,
       32 << 20, 64 << 10},
      {"compressed_zlib", kMixedRaw + " && qemu-img convert -c -O qcow2 src.raw img.qcow2",
       32 << 20, 64 << 10},
      {"compressed_zstd",
       kMixedRaw +
           " && qemu-img convert -c -O qcow2 -o compression_type=zstd,cluster_size=16k src.raw "
           "img.qcow2",
       32 << 20, 16 << 10},
      {"extended_l2",
       "qemu-img create -q -f qcow2 -o extended_l2=on img.qcow2 32M && "
       "qemu-io -c 'write -P 0x11 4k 4k' -c 'write -P 0x22 130k 6k' -c 'write -z 1M 8k' "
       "-c 'write -P 0x33 2M 64k' -c 'write -z -u 2052k 4k' img.qcow2 >/dev/null",
       32 << 20, 64 << 10},
      {"extended_l2_backing",
       "qemu-img create -q -f qcow2 base.qcow2 16M && qemu-io -c 'write -P 0x44 0 16M' "
       "base.qcow2 >/dev/null && qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=32k "
       "-b base.qcow2 -F qcow2 img.qcow2 && qemu-io -c 'write -P 0x11 4k 2k' -c 'write -z 64k 4k' "
       "img.qcow2 >/dev/null",
       16 << 20, 32 << 10},
      {"snapshots",
       "qemu-img create -q -f qcow2 img.qcow2 32M && " + kSomeWrites +
           " && qemu-img snapshot -c one img.qcow2 && qemu-io -c 'write -P 0x44 64k 128k' "
           "img.qcow2 >/dev/null && qemu-img snapshot -c two img.qcow2 && "
           "qemu-io -c 'write -P 0x55 6M 1M' img.qcow2 >/dev/null",
       32 << 20, 64 << 10, 60, false, "one"},
      {"backing_qcow2",
       "qemu-img create -q -f qcow2 -o cluster_size=4k base.qcow2 32M && qemu-io -c 'write -P "
       "0x66 0 20M' -c 'write -z 4M 1M' base.qcow2 >/dev/null && qemu-img create -q -f qcow2 -b "
       "base.qcow2 -F qcow2 img.qcow2 && qemu-io -c 'write -P 0x77 1M 1M' img.qcow2 >/dev/null",
       32 << 20, 64 << 10},
      {"backing_raw",
       "qemu-img create -q -f raw base.raw 24M && qemu-io -f raw -c 'write -P 0x66 0 24M' "
       "base.raw >/dev/null && qemu-img create -q -f qcow2 -b base.raw -F raw img.qcow2 32M && "
       "qemu-io -c 'write -P 0x77 1M 1M' img.qcow2 >/dev/null",
       32 << 20, 64 << 10},
      {"backing_chain_3",
       "qemu-img create -q -f raw base.raw 32M && qemu-io -f raw -c 'write -P 0x66 0 32M' "
       "base.raw >/dev/null && qemu-img create -q -f qcow2 -b base.raw -F raw mid.qcow2 && "
       "qemu-io -c 'write -P 0x77 2M 3M' mid.qcow2 >/dev/null && qemu-img create -q -f qcow2 "
       "-o cluster_size=16k -b mid.qcow2 -F qcow2 img.qcow2 && qemu-io -c 'write -P 0x88 4M 2M' "
       "img.qcow2 >/dev/null",
       32 << 20, 16 << 10},
      {"data_file",
       "qemu-img create -q -f qcow2 -o data_file=img.data img.qcow2 32M && " + kSomeWrites,
       32 << 20, 64 << 10, 60, true},
      {"data_file_raw",
       "qemu-img create -q -f qcow2 -o data_file=img.data,data_file_raw=on img.qcow2 32M && " +
           kSomeWrites,
       32 << 20, 64 << 10, 60, true},
      {"lazy_refcounts_dirty",
       "qemu-img create -q -f qcow2 -o lazy_refcounts=on,cluster_size=4k img.qcow2 16M && "
       "{ qemu-io -c 'write -P 0x11 0 1M' -c 'write -P 0x22 3M 256k' -c 'flush' "
       "-c 'write -P 0x33 8M 512k' -c abort img.qcow2 >/dev/null 2>&1 || true; } && "
       "qemu-img info -U --output=json img.qcow2 | grep -q '\"dirty-flag\": true'",
       16 << 20, 4096},
  };
}

// A raw image: the same stream through `qcow2-img io -f raw` and
// `qemu-io -f raw` leaves byte-identical files.
TEST_F(EngineInterop, RawImageSameStream) {
  const uint64_t seed = BaseSeed();
  std::cout << "[ seed ] raw seed=" << seed << " (rerun: UQ_INTEROP_SEED=" << seed << ")\n";
  SCOPED_TRACE(absl::StrCat("raw image seed ", seed));
  ASSERT_SH(root_,
            "qemu-img create -q -f raw start.raw 8M && qemu-io -f raw -c 'write -P 0x21 0 3M' "
            "start.raw >/dev/null && cp start.raw ours.raw && cp start.raw theirs.raw",
            0);
  StreamGenerator gen(seed, ReadWholeFile(root_ + "/start.raw"), 4096);
  std::string args = CommandArgs(gen.Generate(80));
  EXPECT_SH(root_, absl::StrCat("qemu-io -f raw ", args, " theirs.raw"), 0);
  EXPECT_SH(root_, absl::StrCat(kOurs, " io -f raw ", args, " ours.raw"), 0);
  EXPECT_SH(root_, "cmp ours.raw theirs.raw", 0);
}

// Output format of `io` matches qemu-io's lines for the same commands
// (statistics lines aside, which carry timings).
TEST_F(EngineInterop, IoOutputMatchesQemuIo) {
  ASSERT_SH(root_, "qemu-img create -q -f qcow2 a.qcow2 4M && cp a.qcow2 b.qcow2", 0);
  const std::string cmds =
      "-c 'write -P 0x41 1000 100' -c 'read -v 990 40' -c 'write -z 64k 64k' "
      "-c 'discard 128k 64k' -c 'read -P 0 64k 64k' -c flush";
  RunResult ours = Sh(root_, absl::StrCat(kOurs, " io ", cmds, " a.qcow2 | grep -v ' ops; '"));
  RunResult theirs = Sh(root_, absl::StrCat("qemu-io ", cmds, " b.qcow2 | grep -v ' ops; '"));
  EXPECT_EQ(ours.exit_code, 0) << ours.output;
  EXPECT_EQ(theirs.exit_code, 0) << theirs.output;
  EXPECT_EQ(ours.output, theirs.output);
  // A pattern mismatch fails the command and the run, naming where.
  RunResult bad = Sh(root_, absl::StrCat(kOurs, " io -c 'read -P 0x42 1000 100' a.qcow2"));
  EXPECT_EQ(bad.exit_code, 1) << bad.output;
  EXPECT_NE(bad.output.find("byte at offset 1000 is 0x41"), std::string::npos) << bad.output;
  EXPECT_SH(root_, "qemu-img check a.qcow2", 0);
}

// A raw source whose size is not a sector multiple: qemu-img rounds the qcow2
// size up; the tail reads as zeros. io reaches the last partial sector.
TEST_F(EngineInterop, OddSizedRawImage) {
  ASSERT_SH(root_,
            "head -c 1000000 /dev/urandom > odd.raw && cp odd.raw ours.raw && "
            "cp odd.raw theirs.raw",
            0);
  for (const char* args : {"-O qcow2", "-c -O qcow2", "-O raw"}) {
    EXPECT_SH(root_, absl::StrCat(kOurs, " convert -f raw ", args, " odd.raw out.img"), 0);
    EXPECT_SH(root_, "qemu-img compare -f raw odd.raw out.img", 0);
  }
  EXPECT_SH(root_, "cmp odd.raw out.img", 0);  // the last one is raw: byte-identical
  const std::string cmds =
      "-c 'write -P 5 999990 10' -c 'write -z 999000 900' -c 'read -v 999980 20'";
  RunResult ours =
      Sh(root_, absl::StrCat(kOurs, " io -f raw ", cmds, " ours.raw | grep -v ' ops; '"));
  RunResult theirs =
      Sh(root_, absl::StrCat("qemu-io -f raw ", cmds, " theirs.raw | grep -v ' ops; '"));
  EXPECT_EQ(ours.exit_code, 0) << ours.output;
  EXPECT_EQ(ours.output, theirs.output);
  EXPECT_SH(root_, "cmp ours.raw theirs.raw", 0);
}

// bench -w writes the same requests as qemu-img bench (offsets, step,
// wrap-around, pattern), so both leave identical images; the header lines
// match qemu-img's.
TEST_F(EngineInterop, BenchWritesLikeQemuImgBench) {
  ASSERT_SH(root_, "qemu-img create -q -f qcow2 a.qcow2 1M && cp a.qcow2 b.qcow2", 0);
  // 300 requests of 4 KiB with an 8 KiB step from 12 KiB wrap around the
  // 1 MiB image (modulo size - request size).
  const std::string args =
      "bench -w -c 300 -d 8 -s 4k -S 8k -o 12k --pattern=0x5a --flush-interval=50 -f qcow2";
  RunResult ours = Sh(root_, absl::StrCat(kOurs, " ", args, " a.qcow2"));
  RunResult theirs = Sh(root_, absl::StrCat("qemu-img ", args, " b.qcow2"));
  ASSERT_EQ(ours.exit_code, 0) << ours.output;
  ASSERT_EQ(theirs.exit_code, 0) << theirs.output;
  auto header = [](const std::string& out) { return out.substr(0, out.find("Run completed")); };
  EXPECT_EQ(header(ours.output), header(theirs.output));
  EXPECT_NE(ours.output.find("Run completed in "), std::string::npos) << ours.output;
  EXPECT_SH(root_, "qemu-img compare a.qcow2 b.qcow2", 0);
  EXPECT_SH(root_, "qemu-img check a.qcow2", 0);
  EXPECT_SH(root_, "qemu-io -r -c 'read -P 0x5a 12k 4k' -c 'read -P 0 16k 4k' a.qcow2", 0);
  // Reads leave the image as it was.
  EXPECT_SH(root_, absl::StrCat(kOurs, " bench -c 500 -d 16 -s 4k a.qcow2"), 0);
  EXPECT_SH(root_, "qemu-img compare a.qcow2 b.qcow2", 0);
}

// Malformed invocations: exit 1 with one "qcow2-img: ..." line, never a crash.
TEST_F(EngineInterop, BadInputIsOneLineError) {
  ASSERT_SH(root_, "qemu-img create -q -f qcow2 m.qcow2 1M && head -c 4096 /dev/urandom > junk", 0);
  const char* cases[] = {
      "io -c 'read abc 1' m.qcow2",
      "io -c 'write -P 300 0 512' m.qcow2",
      "io -c 'read 0 2M' m.qcow2",
      "io -c 'read 18446744073709551615 512' m.qcow2",
      "io -c 'frob' m.qcow2",
      "io -c 'write -z -P 1 0 512' m.qcow2",
      "io -r -c 'write 0 512' m.qcow2",
      "io -c 'read -P' m.qcow2",
      "io missing.qcow2",
      "io -f qcow2 -c 'read 0 512' junk",
      "convert -O vmdk m.qcow2 out",
      "convert -O qcow2 -o cluster_size=3k m.qcow2 out",
      "convert -O qcow2 -o compat=0.10,lazy_refcounts=on m.qcow2 out",
      "convert -l nosuch m.qcow2 out",
      "convert -f qcow2 junk out",
      "bench -c 0 m.qcow2",
      "bench -s 1000 m.qcow2",
      "bench -o 2M m.qcow2",
      "bench --flush-interval=10 m.qcow2",
  };
  for (const char* c : cases) {
    RunResult r = Sh(root_, absl::StrCat(kOurs, " ", c));
    EXPECT_EQ(r.exit_code, 1) << Describe(c, r);
    EXPECT_EQ(r.output.rfind("qcow2-img: ", 0), 0u) << Describe(c, r);
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << Describe(c, r);
  }
  EXPECT_SH(root_, "qemu-img check m.qcow2", 0);
}

INSTANTIATE_TEST_SUITE_P(StartImages, EngineInterop, ::testing::ValuesIn(StartImages()),
                         [](const ::testing::TestParamInfo<StartImage>& info) {
                           return info.param.name;
                         });

}  // namespace
