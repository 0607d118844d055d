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
//
// This file holds the start images and the test run on each of them; the
// harness is in interop_engine_util.h, and interop_engine_commands_test.cc
// holds the single cases (raw images, io's output, bench, bad input).
#include <gtest/gtest.h>

#include <cstdint>
#include <iostream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/interop/engine/interop_engine_util.h"

namespace uq::interop::engine_interop {
namespace {

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

INSTANTIATE_TEST_SUITE_P(StartImages, EngineInterop, ::testing::ValuesIn(StartImages()),
                         [](const ::testing::TestParamInfo<StartImage>& info) {
                           return info.param.name;
                         });

}  // namespace
}  // namespace uq::interop::engine_interop
