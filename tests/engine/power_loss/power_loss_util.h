// The power-loss test's harness (power_loss_test.cc describes the test): the
// random configuration of a seed, the QEMU-made start images, `qemu-img
// check`, and PowerLossRun, which runs one seed. PowerLossRun's methods are
// split by concern: power_loss_stream.cc issues the random request stream and
// keeps the model of what must survive, power_loss_run.cc cuts the power and
// checks the crashed image.
#ifndef UQ_TESTS_ENGINE_POWER_LOSS_POWER_LOSS_UTIL_H_
#define UQ_TESTS_ENGINE_POWER_LOSS_POWER_LOSS_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <list>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "format/create.h"
#include "src/engine/image.h"
#include "src/io/mem_file.h"
#include "src/io/power_loss_file.h"

namespace uq::engine::testing {

constexpr uint64_t kSector = 512;

// Where the image comes from: the layout builder, or QEMU (made once per run
// with qemu-img / qemu-io, so the crash hits COW of snapshot-shared clusters,
// compressed clusters, and a dirty lazy-refcount image repaired on open).
enum class Start { kFresh, kQemuSnapshots, kQemuCompressed, kQemuLazyDirty };

inline const char* StartName(Start s) {
  switch (s) {
    case Start::kFresh:
      return "fresh";
    case Start::kQemuSnapshots:
      return "qemu-snapshots";
    case Start::kQemuCompressed:
      return "qemu-compressed";
    case Start::kQemuLazyDirty:
      return "qemu-lazy-dirty";
  }
  return "?";
}

struct Config {
  Start start = Start::kFresh;
  format::CreateOptions create;
  uint64_t l2_cache_bytes = 0;
  int max_in_flight = 1;
  int steps_before_crash = 0;
  bool random_subset = false;
};

// One line naming every choice of `c` (printed with a failing seed).
std::string Describe(const Config& c);

// The configuration of a seed, drawn from `rng`.
Config RandomConfig(std::mt19937_64& rng);

// A QEMU-made start image and its contents, one byte per sector.
struct QemuStart {
  std::vector<std::byte> image;
  std::vector<uint8_t> sectors;
};

// Builds (once) the QEMU-made image for `start`; empty error string on success.
// Every write is sector aligned with one pattern byte, so the contents stay
// one value per sector.
std::string GetQemuStart(Start start, const QemuStart** out);

// `qemu-img check` on `bytes`: returns its exit status (or -1 if it could not run).
int QemuImgCheck(const std::vector<std::byte>& bytes, std::string* output);

// True if qemu-img is on the PATH (looked up once).
bool QemuImgAvailable();

// What the seeds covered (printed at the end, so a weak run is visible).
struct Coverage {
  uint64_t seeds = 0;
  uint64_t dirty_at_crash = 0;
  uint64_t with_completed_flush = 0;
  uint64_t sectors_verified = 0;
  uint64_t requests = 0;
  uint64_t qemu_checks = 0;
  uint64_t qemu_starts = 0;
};
inline Coverage coverage;

// One guest request of the stream.
struct Op {
  enum Kind { kWrite, kZeroes, kDiscard, kRead, kFlush } kind;
  uint64_t first_sector = 0;
  uint64_t sectors = 0;
  uint8_t value = 0;  // kWrite: the pattern byte
  bool may_unmap = false;
  std::vector<std::byte> buf;
  bool done = false;
  int result = 0;
  int id = 0;
};

class PowerLossRun {
 public:
  PowerLossRun(uint64_t seed, Config config)
      : seed_(seed), rng_(seed ^ 0x9e3779b97f4a7c15ull), config_(std::move(config)) {}

  // Runs the scenario; failures are reported through gtest.
  void Run(bool qemu_check);

 private:
  uint64_t Uniform(uint64_t lo, uint64_t hi) {
    return std::uniform_int_distribution<uint64_t>(lo, hi)(rng_);
  }
  bool Overlaps(uint64_t first, uint64_t count) const;
  void Issue();
  void Complete(Op* op, int result);
  Task<void> Drive(Op* op);
  bool Drain();
  void CheckCrashedImage(std::vector<std::byte> crashed, bool qemu_check);

  uint64_t seed_;
  std::mt19937_64 rng_;
  Config config_;
  uint64_t sectors_ = 0;

  std::unique_ptr<io::MemFile> base_;
  std::unique_ptr<io::PowerLossFile> power_;
  std::unique_ptr<Device> device_;

  std::list<Op> ops_;  // stable addresses; finished ones are erased
  int in_flight_ = 0;
  bool flush_in_flight_ = false;

  // Model, one byte per sector (every request writes whole sectors with one
  // value). current_: as of the completed requests. durable_/uncertain_: as
  // of the last completed flush. flush_*: for the flush in flight.
  std::vector<uint8_t> current_;
  std::vector<uint8_t> durable_;
  std::vector<bool> uncertain_;
  std::vector<uint8_t> flush_snapshot_;
  std::vector<bool> flush_uncertain_;
  int failures_ = 0;
  bool crashed_ = false;
  bool flush_completed_ = false;
  bool trace_ = std::getenv("UQ_POWER_TRACE") != nullptr;
  int next_id_ = 0;
};

}  // namespace uq::engine::testing

#endif  // UQ_TESTS_ENGINE_POWER_LOSS_POWER_LOSS_UTIL_H_
