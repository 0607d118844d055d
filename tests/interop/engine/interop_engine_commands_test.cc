// The engine's commands against QEMU's tools, one case each (the
// EngineInterop fixture of interop_engine_util.h; interop_engine_test.cc
// runs the same stream on each start image): a raw image under the same
// stream, io's output lines next to qemu-io's, a raw image whose size is not
// a sector multiple, bench -w next to qemu-img bench, and malformed
// invocations. The random stream's seed is printed; UQ_INTEROP_SEED=<n>
// reruns one seed.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <iostream>
#include <string>

#include "absl/strings/str_cat.h"
#include "tests/interop/engine/interop_engine_util.h"

namespace uq::interop::engine_interop {
namespace {

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

}  // namespace
}  // namespace uq::interop::engine_interop
