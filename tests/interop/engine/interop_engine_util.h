// The EngineInterop tests' harness (interop_engine_test.cc describes the
// tests): running shell commands and the EXPECT_SH / ASSERT_SH checks of
// their exit codes, the start images, the random command stream with its
// flat model (StreamGenerator), and the EngineInterop fixture with its work
// directory. interop_engine_util.cc holds the functions and the generator's
// methods; interop_engine_test.cc and interop_engine_commands_test.cc hold
// the tests.
#ifndef UQ_TESTS_INTEROP_ENGINE_INTEROP_ENGINE_UTIL_H_
#define UQ_TESTS_INTEROP_ENGINE_INTEROP_ENGINE_UTIL_H_

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <ostream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace uq::interop::engine_interop {

struct RunResult {
  int exit_code = -1;
  std::string output;  // stdout + stderr
};

// Runs `command` with bash in `dir`; captures stdout and stderr together.
RunResult Sh(const std::string& dir, const std::string& command);

std::string Describe(const std::string& command, const RunResult& r);

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

std::vector<uint8_t> ReadWholeFile(const std::string& path);

uint64_t BaseSeed();

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

inline void PrintTo(const StartImage& image, std::ostream* os) { *os << image.name; }

// The random command stream and its flat model of the guest contents.
class StreamGenerator {
 public:
  StreamGenerator(uint64_t seed, std::vector<uint8_t> start_contents, uint64_t cluster_bytes)
      : rng_(seed), model_(std::move(start_contents)), cluster_bytes_(cluster_bytes) {}

  std::vector<std::string> Generate(int count);

 private:
  static constexpr uint64_t kSector = 512;

  uint64_t Uniform(uint64_t lo, uint64_t hi) {  // inclusive
    return std::uniform_int_distribution<uint64_t>(lo, hi)(rng_);
  }

  // A range (mostly sector aligned); lengths from one sector to a few clusters,
  // biased to start near cluster boundaries so pieces cross them.
  std::pair<uint64_t, uint64_t> Range();

  void Fill(uint64_t offset, uint64_t len, uint8_t value) {
    std::fill(model_.begin() + offset, model_.begin() + offset + len, value);
  }

  std::string Read();
  std::string Next();

  std::mt19937_64 rng_;
  std::vector<uint8_t> model_;
  uint64_t cluster_bytes_;
  uint64_t last_offset_ = 0;
  uint64_t last_len_ = 0;
};

std::string CommandArgs(const std::vector<std::string>& commands);

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

inline const std::string kOurs = UQ_QCOW2_IMG;

}  // namespace uq::interop::engine_interop

#endif  // UQ_TESTS_INTEROP_ENGINE_INTEROP_ENGINE_UTIL_H_
