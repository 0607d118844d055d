// Images are untrusted input: qcow2-img check (with and without repair),
// map, measure, compare and info on QEMU-made images with random bytes of
// their metadata overwritten must end with an exit status, never a signal,
// within a bounded address space, and a failing command says so in one
// "qcow2-img: ..." line. The seed is printed; UQ_GARBAGE_SEED=<n> reruns one.
#include <gtest/gtest.h>

#include <cstdlib>
#include <iostream>
#include <random>
#include <sstream>
#include <string>

#include "tests/interop/interop_util.h"

namespace uq::interop {
namespace {

std::string Qcow2Img() {
  const char* env = std::getenv("UQ_QCOW2_IMG");
  return env && *env ? env : QCOW2_IMG_PATH;
}

// Sanitizer runtimes reserve terabytes of address space; limit it otherwise.
// Under ASan a report becomes an exit status above 128, like a signal.
// A sanitized qcow2-img is about five times slower: fewer images there keep
// the test under a minute (the seed varies from run to run anyway).
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr const char* kLimit =
    "export ASAN_OPTIONS=\"${ASAN_OPTIONS:+$ASAN_OPTIONS:}exitcode=200\"; ";
constexpr int kIterations = 10;
#else
constexpr const char* kLimit = "ulimit -v 1048576; ";  // 1 GiB
constexpr int kIterations = 40;
#endif

int CountToolLines(const std::string& err) {
  std::istringstream in(err);
  int n = 0;
  for (std::string line; std::getline(in, line);) n += line.rfind("qcow2-img: ", 0) == 0;
  return n;
}

TEST(GarbageTest, RandomMetadataBytesNeverCrash) {
  if (!HaveTool("qemu-img") || !HaveTool("qemu-io")) GTEST_SKIP() << "QEMU tools not installed";
  uint64_t seed = std::random_device{}();
  if (const char* s = std::getenv("UQ_GARBAGE_SEED")) seed = std::strtoull(s, nullptr, 0);
  std::cout << "[ seed ] UQ_GARBAGE_SEED=" << seed << "\n";
  SCOPED_TRACE("UQ_GARBAGE_SEED=" + std::to_string(seed));
  std::mt19937_64 rng(seed);

  TempDir dir;
  const std::string cd = "cd " + Quote(dir.path()) + " && ";
  // Snapshots, compressed clusters and a bitmap: metadata of every kind, in
  // the first few clusters of a 4 KiB-cluster image.
  const RunResult made = RunCommand(
      cd +
      "qemu-img create -q -f qcow2 -o cluster_size=4k base.qcow2 16M && qemu-io -c 'write -P 1 0 "
      "64k' -c 'write -c -P 2 1M 4k' -c 'write -z 2M 8k' base.qcow2 >/dev/null && qemu-img "
      "snapshot -c s base.qcow2 && qemu-io -c 'write -P 3 8k 8k' base.qcow2 >/dev/null && "
      "qemu-img bitmap --add base.qcow2 b");
  ASSERT_EQ(made.exit_code, 0) << made.err;
  const std::string base = ReadFile(dir.File("base.qcow2"));
  const std::string q = Quote(Qcow2Img());
  const size_t metadata_bytes = std::min<size_t>(base.size(), 128 << 10);

  for (int it = 0; it < kIterations; ++it) {
    std::string img = base;
    const int edits = 1 + static_cast<int>(rng() % 8);
    for (int e = 0; e < edits; ++e) {
      // Skip the magic and version most of the time so the header decodes.
      const size_t at = (rng() % 4 == 0 ? 0 : 8) + rng() % (metadata_bytes - 8);
      img[at] = static_cast<char>(rng());
    }
    WriteFile(dir.File("bad.qcow2"), img);
    WriteFile(dir.File("fix.qcow2"), img);
    for (const char* args :
         {"check bad.qcow2", "check --output=json bad.qcow2", "check -r all fix.qcow2",
          "check fix.qcow2", "map --output=json bad.qcow2", "map bad.qcow2",
          "measure -O qcow2 bad.qcow2", "compare bad.qcow2 base.qcow2", "info bad.qcow2"}) {
      SCOPED_TRACE(std::string(args) + " (iteration " + std::to_string(it) + ")");
      const RunResult r = RunCommand(cd + kLimit + q + " " + args);
      ASSERT_GE(r.exit_code, 0) << "killed by a signal: " << r.err;
      ASSERT_LT(r.exit_code, 128) << r.err;
      const bool is_check = std::string(args).rfind("check", 0) == 0;
      const bool is_compare = std::string(args).rfind("compare", 0) == 0;
      if (!is_check && r.exit_code != 0 && !(is_compare && r.exit_code == 1)) {
        EXPECT_EQ(CountToolLines(r.err), 1) << r.err;
      }
    }
  }
}

}  // namespace
}  // namespace uq::interop
