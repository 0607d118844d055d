// The differential test's harness (differential_test.cc describes the test):
// the image variants, one random stream with its flat model in qemu-io syntax
// (Stream, made by StreamMaker), and the Differential fixture, which runs
// batches of streams through qemu-io and `qcow2-img io`. Its methods are
// split by concern: differential_stream.cc makes a stream, and
// differential_batch.cc runs a batch and names the streams that fail.
#ifndef UQ_TESTS_INTEROP_ENGINE_DIFFERENTIAL_UTIL_H_
#define UQ_TESTS_INTEROP_ENGINE_DIFFERENTIAL_UTIL_H_

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <ostream>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace uq::interop::differential {

enum class Backing { kNone, kRaw, kQcow2 };

struct Variant {
  std::string name;
  uint32_t cluster_bits;
  bool extended_l2;
  int version;  // 2 (compat=0.10) or 3
  Backing backing;
};

inline void PrintTo(const Variant& v, std::ostream* os) { *os << v.name; }

inline uint64_t EnvU64(const char* name, uint64_t fallback) {
  const char* s = std::getenv(name);
  return s != nullptr && *s != '\0' ? std::strtoull(s, nullptr, 0) : fallback;
}

// One stream: its image geometry, the commands that prepare the start image,
// the random operations and the final sweep, all in qemu-io syntax.
struct Stream {
  uint64_t seed = 0;
  uint64_t size_bytes = 0;
  uint64_t backing_bytes = 0;  // 0: no backing file
  std::vector<std::string> base_setup;
  std::vector<std::string> setup;
  std::vector<std::string> ops;
  std::vector<std::string> sweep;
};

class StreamMaker {
 public:
  StreamMaker(const Variant& v, uint64_t seed) : v_(v), rng_(seed) {
    s_.seed = seed;
    cluster_ = uint64_t{1} << v.cluster_bits;
    edge_ = v.extended_l2 ? cluster_ / 32 : cluster_;
  }

  Stream Make();

 private:
  uint64_t Uniform(uint64_t lo, uint64_t hi) {
    return std::uniform_int_distribution<uint64_t>(lo, hi)(rng_);
  }
  uint8_t Pattern() { return static_cast<uint8_t>(Uniform(1, 255)); }
  void Fill(uint64_t off, uint64_t len, uint8_t value) {
    const uint64_t end = std::min<uint64_t>(off + len, model_.size());
    if (off < end) std::fill(model_.begin() + off, model_.begin() + end, value);
  }

  // A sector-granular offset: random, or within three sectors of an edge.
  uint64_t Offset(uint64_t limit);

  // [off, off + len) inside [0, limit): up to two subclusters, one cluster or
  // two clusters long (a third each); half the time the end is also put near
  // an edge.
  std::pair<uint64_t, uint64_t> RangeIn(uint64_t limit);

  void Setup();
  void Op();

  // QEMU's qcow2 discard: whole clusters (the last partial cluster counts
  // when the range reaches the end of the disk); none on v2 with a backing
  // file.
  void Discard(uint64_t off, uint64_t len);

  void Sweep();

  const Variant& v_;
  std::mt19937_64 rng_;
  Stream s_;
  uint64_t cluster_ = 0;
  uint64_t edge_ = 0;
  std::vector<uint8_t> model_;
};

std::string BackingFormat(Backing b);

std::string QemuIoOpen(const std::string& path, const std::string& driver, bool read_only);

std::string OurIoArgs(const std::vector<std::string>& a, const std::vector<std::string>& b);

// A directory for the run's images: tmpfs when there is one (thousands of
// small images, fsync on close), else $TMPDIR or /tmp.
std::string MakeWorkDir();

class Differential : public ::testing::TestWithParam<Variant> {
 protected:
  void SetUp() override;
  void TearDown() override;

  // Makes (once per geometry) base.img and img.qcow2 with qemu-img.
  std::string Template(const Stream& s);

  static void CopyImages(const std::string& from, const std::string& to);

  // qemu-io script for streams[i] in directory dirs[i].
  enum class Script { kSetup, kApply, kSweepOurs };
  std::string QemuIoScript(Script kind, const std::vector<Stream>& streams,
                           const std::vector<std::string>& dirs) const;

  // Runs a qemu-io script; true if every command succeeded.
  bool RunQemuIo(const std::string& script, const std::string& name, std::string* output);

  std::string Repro(const Stream& s, uint64_t run_seed, uint64_t index) const;

  // Runs one batch; records failures with their reproduction.
  void RunBatch(const std::vector<Stream>& streams, uint64_t run_seed, uint64_t first_index,
                int batch);

  std::string root_;
  std::map<std::string, std::string> templates_;
  int failures_ = 0;
};

}  // namespace uq::interop::differential

#endif  // UQ_TESTS_INTEROP_ENGINE_DIFFERENTIAL_UTIL_H_
