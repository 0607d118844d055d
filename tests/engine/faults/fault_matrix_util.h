// The fault matrix's harness (fault_matrix_test.cc describes the test): the
// image kinds, the workload's steps, the write points of the fault-free run,
// the values each sector may hold, and FaultMatrix, which runs the matrix for
// one image kind. Its methods are split by concern: fault_matrix_workload.cc
// builds and runs the workload, fault_matrix_points.cc classifies and samples
// the write points and makes their fault rules, fault_matrix_check.cc checks
// the image a run leaves, and fault_matrix_test.cc runs the matrix.
#ifndef UQ_TESTS_ENGINE_FAULTS_FAULT_MATRIX_UTIL_H_
#define UQ_TESTS_ENGINE_FAULTS_FAULT_MATRIX_UTIL_H_

#include <bitset>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "format/create.h"
#include "src/engine/image.h"
#include "src/io/fault_file.h"
#include "src/io/mem_file.h"
#include "src/io/op_kind.h"
#include "tests/engine/test_util.h"

namespace uq::engine::testing {

using io::FaultFile;
using io::FaultRule;
using io::OpKind;
using io::OpKindBit;

constexpr uint64_t kSector = 512;
// Under ASan (the `sanitize` ctest label) each light kind runs 8 points and
// the heavy kinds (thousands of file operations per run) are skipped, so the
// whole test stays under 30 s there; UQ_FAULT_CAP overrides the cap.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
constexpr uint32_t kMutatingKinds = OpKindBit(OpKind::kWrite) | OpKindBit(OpKind::kFlush) |
                                    OpKindBit(OpKind::kDiscard) | OpKindBit(OpKind::kWriteZeroes) |
                                    OpKindBit(OpKind::kTruncate);
constexpr char kImagePath[] = "/images/disk.qcow2";
constexpr char kBackingName[] = "base.raw";
constexpr uint64_t kBackingBytes = 8 << 20;

// Values a sector may hold (every request writes whole sectors of one byte).
using Values = std::bitset<256>;

struct ImageKind {
  const char* name;
  format::CreateOptions create;
  bool backing = false;
  uint64_t bulk_clusters = 8;  // clusters written by the bulk step
  size_t max_points = 120;     // sampling cap on write points
  int qemu_checks = 3;         // post-fault images checked with qemu-img
  bool heavy = false;          // skipped under ASan
};

struct Step {
  enum Kind { kWrite, kDiscard, kZeroes, kFlush, kRead } kind;
  uint64_t offset_bytes = 0;
  uint64_t length_bytes = 0;
  uint8_t value = 0;
  bool may_unmap = false;
};

inline const char* StepName(Step::Kind k) {
  switch (k) {
    case Step::kWrite:
      return "write";
    case Step::kDiscard:
      return "discard";
    case Step::kZeroes:
      return "write_zeroes";
    case Step::kFlush:
      return "flush";
    case Step::kRead:
      return "read";
  }
  return "?";
}

// The region of the image a file operation touches, from the final layout of
// the fault-free run (plus the initial refcount table, which may have moved).
enum class Region { kHeader, kL1, kRefTable, kRefBlock, kL2, kData, kFlush, kTruncate };

inline const char* RegionName(Region r) {
  switch (r) {
    case Region::kHeader:
      return "header";
    case Region::kL1:
      return "L1";
    case Region::kRefTable:
      return "refcount-table";
    case Region::kRefBlock:
      return "refcount-block";
    case Region::kL2:
      return "L2";
    case Region::kData:
      return "data";
    case Region::kFlush:
      return "flush";
    case Region::kTruncate:
      return "truncate";
  }
  return "?";
}

struct Point {
  size_t index;  // among the mutating operations of the fault-free run
  FaultFile::OpRecord op;
  Region region;
};

struct Sector {
  Values live;     // what a read may return now
  Values on_disk;  // what may be read after reopening
};

// One run of the workload, with or without a fault.
struct Outcome {
  bool opened = false;
  int open_error = 0;
  std::vector<int> results;  // per step
  bool closed_ok = false;
  std::string close_message;
  // Step during which the fault first fired: -1 open, steps.size() close,
  // -2 never.
  int fault_step = -2;
  std::vector<FaultFile::OpRecord> log;
  std::vector<std::byte> bytes;
  std::map<uint64_t, Sector> model;
  // The durable bytes (what a power cut would leave) right after the step
  // during which the fault fired, and the model as of then.
  std::vector<std::byte> crash_bytes;
  std::map<uint64_t, Sector> crash_model;
  int read_mismatches = 0;
};

struct Totals {
  uint64_t points = 0;
  uint64_t runs = 0;
  uint64_t fired = 0;
  uint64_t reported = 0;
  uint64_t dirty_repaired = 0;
  uint64_t sectors_verified = 0;
  uint64_t qemu_checks = 0;
  uint64_t crash_images = 0;
};

// Runs the matrix for one image kind; failures are reported through gtest
// and counted in `totals`.
class FaultMatrix {
 public:
  explicit FaultMatrix(const ImageKind& kind) : kind_(kind) {}

  void Run(Totals* totals);

 private:
  uint64_t cluster_bytes() const { return uint64_t{1} << kind_.create.cluster_bits; }
  uint8_t Initial(uint64_t sector) const {
    if (!kind_.backing || sector >= kBackingBytes / kSector) return 0;
    return static_cast<uint8_t>(1 + (sector * 37) % 251);
  }
  void Setup();
  void BuildWorkload();
  OpenOptions Options(bool read_only) {
    OpenOptions o;
    o.path = kImagePath;
    o.opener = files_.Opener();
    o.read_only = read_only;
    return o;
  }
  // Runs the workload on a fresh copy of the image with `rule` (if any). The
  // crash image taken when the fault fires keeps a random subset (seeded by
  // `subset_seed`) of the unflushed writes, or none without a seed.
  Outcome RunWorkload(const std::optional<FaultRule>& rule, std::optional<uint64_t> subset_seed);
  void ApplyStep(const Step& s, int result, Outcome* out, int injected);
  std::vector<Point> Classify(const Outcome& clean);
  std::vector<size_t> Sample(const std::vector<Point>& points);
  FaultRule OnceRule(const Point& p, int error) const;
  FaultRule AlwaysRule(const Point& p, const std::vector<FaultFile::OpRecord>& log,
                       int error) const;
  // Checks an image left by a run against the values its sectors may hold;
  // `what` names the run in messages.
  void CheckImageBytes(const std::vector<std::byte>& bytes, const std::map<uint64_t, Sector>& model,
                       const std::string& what, bool qemu_check, Totals* totals);

  ImageKind kind_;
  std::vector<std::byte> pristine_;
  std::unique_ptr<io::MemFile> backing_;
  std::vector<std::byte> backing_bytes_;
  FileSet files_;
  std::vector<Step> steps_;
  std::map<uint64_t, Sector> initial_model_;
  uint64_t initial_reftable_offset_ = 0;
  uint64_t initial_reftable_bytes_ = 0;
  uint64_t base_seed_ = 0;
};

}  // namespace uq::engine::testing

#endif  // UQ_TESTS_ENGINE_FAULTS_FAULT_MATRIX_UTIL_H_
