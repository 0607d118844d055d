// The single-threaded simulation's harness (simulation_test.cc describes the
// test): the configuration of a run and Simulation, which runs one seeded
// stream of requests against the engine and compares it with a flat model.
// Its methods are split by concern: simulation_run.cc creates, reopens,
// checks and compares the image (the phases of a run), and
// simulation_requests.cc issues the random requests and completes the file
// operations in random order.
#ifndef UQ_TESTS_ENGINE_SIMULATION_UTIL_H_
#define UQ_TESTS_ENGINE_SIMULATION_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <random>
#include <span>
#include <vector>

#include "format/header.h"
#include "src/engine/device.h"
#include "src/io/mem_file.h"
#include "src/io/task.h"
#include "tests/engine/test_util.h"

namespace uq::engine::testing {

enum class BackingKind { kNone, kQcow2, kRaw };

struct SimConfig {
  uint32_t cluster_bits = 16;
  uint32_t refcount_order = 4;
  bool extended_l2 = false;
  uint32_t version = 3;
  BackingKind backing = BackingKind::kNone;
  bool backing_format_named = true;
  uint64_t l2_cache_bytes = 0;
  uint64_t refcount_cache_bytes = 0;
  format::CompressionType compression = format::CompressionType::kZlib;
  bool lazy_refcounts = false;
  uint64_t size_bytes = 8 << 20;
  uint64_t ops = 1500;
  uint32_t max_inflight = 24;
  uint64_t max_io_bytes = 256 << 10;
  uint64_t seed = 1;
  // > 0: every file fails misaligned I/O (O_DIRECT) and the engine is told to
  // align (OpenOptions.file_alignment_bytes).
  uint64_t strict_alignment = 0;
  // > 0: every request lies inside the first `hot_clusters` clusters and is at
  // most two subclusters (or 4 KiB) long, so concurrent requests keep meeting
  // inside one cluster and one subcluster.
  uint64_t hot_clusters = 0;
};

enum class OpType { kRead, kWrite, kZeroes, kZeroesUnmap, kDiscard, kFlush, kCompressed };

class Simulation {
 public:
  explicit Simulation(SimConfig c) : c_(c), rng_(c.seed) {
    c_.seed = EnvU64("UQ_SIM_SEED", c.seed);
    rng_.seed(c_.seed);
    c_.ops *= EnvU64("UQ_SIM_SCALE", 1);
  }

  void Run();

 private:
  struct InFlight {
    uint64_t begin;
    uint64_t end;
    bool mutates;
  };

  uint64_t cluster_bytes() const { return uint64_t{1} << c_.cluster_bits; }

  void FillRandom(std::span<std::byte> buf);
  void Setup();
  void Reopen(bool read_only);
  void CloseAndCheck();
  void CompareAll();
  bool Overlaps(uint64_t b, uint64_t e, bool mutates) const;
  Task<void> RunOp(OpType type, uint64_t off, uint64_t len, std::list<InFlight>::iterator it,
                   uint64_t op_id);
  bool TryIssue(uint64_t op_id);
  bool CompleteOne();
  void RandomOps();

  SimConfig c_;
  std::mt19937_64 rng_;
  FileSet files_;
  std::unique_ptr<io::MemFile> image_;
  std::unique_ptr<io::MemFile> backing_;
  std::unique_ptr<Device> dev_;
  std::vector<std::byte> model_;
  std::list<InFlight> inflight_;
  uint64_t failures_ = 0;
};

}  // namespace uq::engine::testing

#endif  // UQ_TESTS_ENGINE_SIMULATION_UTIL_H_
