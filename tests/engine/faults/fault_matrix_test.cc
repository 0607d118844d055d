// Fault matrix (qemu-iotests 026 style, STYLE.md "fault matrix").
//
// For several image kinds a fixed workload (allocating writes that grow L2
// tables and refcount structures, partial-cluster COW writes, discard, write
// zeroes, flushes, close) runs once on a recording FaultFile to enumerate
// every write, flush, discard, write_zeroes and truncate the engine issues on
// the image file (the "write points", classified by the region of the final
// layout they touch). Then, for each point x {EIO, ENOSPC} x {once, always},
// the workload reruns from scratch with that fault injected and
//   - nothing crashes and the engine does not mark the image corrupt,
//   - a fault that fired is reported: the request it hit, or a later request,
//     flush or close returns the injected -errno (a file discard may be
//     swallowed: the engine documents punching holes as best effort),
//   - the on-"disk" bytes (rules cleared) pass CheckImage with zero
//     corruptions (leaks allowed; a dirty lazy-refcount image is checked after
//     the engine repaired it on open),
//   - every sector reads back a value it may hold: what a successful flush
//     covered, or a value written since (a failed write may or may not have
//     landed).
// "once" fails the n-th mutating operation only; "always" fails it and every
// later operation of the same kind touching the same byte range (flushes and
// truncates: every later one), like a named blkdebug event with once=off.
// Besides the image the run leaves, each run checks the same way a crash image
// taken right after the step during which the fault fired (PowerLossFile under
// the FaultFile): "always" runs drop every unflushed write, "once" runs keep a
// seeded random subset of them (UQ_FAULT_SEED, printed). A few post-fault
// images per kind also go through the real `qemu-img check`.
//
// The matrix is sampled deterministically when a kind has more points than its
// cap: header, L1 and refcount-table points and the operation right after each
// come first, then the other metadata points, then data-cluster writes, each
// group thinned evenly (the chosen indices are printed).
//
// Environment: UQ_FAULT_FULL=1 runs every point; UQ_FAULT_CAP=<n> up to n
// points per kind; UQ_FAULT_POINT=<n> only point n (0-based) of every kind;
// UQ_FAULT_LIST=1 prints every point; UQ_FAULT_AFTER_IO=1 lets the failed
// operations land first (a lost completion); UQ_FAULT_KEEP_GOING=1 does not
// stop a kind at its first failing run.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <bitset>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "format/create.h"
#include "format/endian.h"
#include "format/header.h"
#include "format/tables.h"
#include "src/engine/check.h"
#include "src/engine/image.h"
#include "src/io/fault_file.h"
#include "src/io/mem_file.h"
#include "src/io/op_kind.h"
#include "src/io/power_loss_file.h"
#include "src/io/run_sync.h"
#include "tests/engine/test_util.h"

namespace uq::engine {
namespace {

using io::FaultFile;
using io::FaultRule;
using io::OpKind;
using io::OpKindBit;
using testing::BorrowedFile;
using testing::FileSet;

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

const char* StepName(Step::Kind k) {
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

const char* RegionName(Region r) {
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

bool QemuImgAvailable() {
  static const bool available = std::system("command -v qemu-img >/dev/null 2>&1") == 0;
  return available;
}

bool WriteWholeFile(const std::string& path, const std::vector<std::byte>& bytes) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return false;
  bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  return std::fclose(f) == 0 && ok;
}

// Runs `qemu-img check` on `image` (with its raw backing file beside it if
// given); returns the exit status, -1 if it could not run.
int QemuImgCheck(const std::vector<std::byte>& image, const std::vector<std::byte>* backing,
                 std::string* output) {
  char dir_template[] = "/tmp/uq-fault-matrix-XXXXXX";
  if (mkdtemp(dir_template) == nullptr) return -1;
  std::string dir = dir_template;
  std::string path = dir + "/disk.qcow2";
  bool ok = WriteWholeFile(path, image);
  if (ok && backing != nullptr) ok = WriteWholeFile(dir + "/" + kBackingName, *backing);
  int code = -1;
  if (ok) {
    std::string cmd = absl::StrCat("qemu-img check -f qcow2 ", path, " 2>&1");
    FILE* p = popen(cmd.c_str(), "r");
    if (p != nullptr) {
      char buf[512];
      while (fgets(buf, sizeof(buf), p) != nullptr) {
        if (output->size() < 4000) output->append(buf);
      }
      int status = pclose(p);
      code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }
  }
  std::system(absl::StrCat("rm -rf ", dir).c_str());
  return code;
}

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

void FaultMatrix::Setup() {
  format::CreateOptions o = kind_.create;
  if (kind_.backing) {
    backing_bytes_.assign(kBackingBytes, std::byte{0});
    for (uint64_t s = 0; s < kBackingBytes / kSector; ++s) {
      std::memset(backing_bytes_.data() + s * kSector, Initial(s), kSector);
    }
    backing_ = std::make_unique<io::MemFile>(io::MemFile::Mode::kImmediate, backing_bytes_);
    backing_->set_read_only(true);
    files_.files[std::string("/images/") + kBackingName] = backing_.get();
    o.backing_file = kBackingName;
    o.backing_format = "raw";
  }
  BuildWorkload();
  o.size_bytes = kind_.create.size_bytes;
  auto img = testing::MakeImage(o);
  ASSERT_NE(img, nullptr);
  pristine_ = img->data();
  auto h = format::DecodeHeader(pristine_, format::DecodeLimits{pristine_.size()});
  ASSERT_TRUE(h.ok()) << h.status();
  initial_reftable_offset_ = h->refcount_table_offset;
  initial_reftable_bytes_ = uint64_t{h->refcount_table_clusters} << h->cluster_bits;
}

void FaultMatrix::BuildWorkload() {
  const uint64_t c = cluster_bytes();
  const uint64_t entry = kind_.create.extended_l2 ? 16 : 8;
  const uint64_t l2_span = c / entry * c;  // guest bytes one L2 table maps
  const uint64_t half = std::max<uint64_t>(c / 2, kSector);
  const uint64_t bulk_start = 4 * l2_span;
  const uint64_t bulk_bytes = kind_.bulk_clusters * c;
  // Room after the bulk region for one more L2 table.
  kind_.create.size_bytes = (bulk_start + bulk_bytes + l2_span - 1) / l2_span * l2_span + l2_span;
  auto w = [&](uint64_t off, uint64_t len, uint8_t v) {
    steps_.push_back({Step::kWrite, off, len, v, false});
  };
  auto flush = [&] { steps_.push_back({Step::kFlush, 0, 0, 0, false}); };
  auto read = [&](uint64_t off, uint64_t len) {
    steps_.push_back({Step::kRead, off, len, 0, false});
  };
  w(0, 3 * c, 0x11);  // allocating, cluster aligned
  flush();
  w(5 * c + 1024, 2048, 0x22);  // partial cluster: COW (backing or zeros)
  w(l2_span + half, c, 0x33);   // a new L2 table, two partial clusters
  read(0, 6 * c);
  w(bulk_start, bulk_bytes, 0x44);  // grows the refcount structures
  flush();
  steps_.push_back({Step::kDiscard, c, c, 0, false});
  steps_.push_back({Step::kZeroes, 2 * c, c, 0, true});
  steps_.push_back({Step::kZeroes, 5 * c, half, 0, false});
  w(c + 512, 1024, 0x55);           // reallocates the discarded cluster
  flush();                          // frees applied; the next writes may reuse them
  w(0, c, 0x66);                    // in place
  w(3 * l2_span + c, 2 * c, 0x77);  // another L2 table
  steps_.push_back({Step::kDiscard, bulk_start, std::min<uint64_t>(bulk_bytes, 4 * c), 0, false});
  steps_.push_back({Step::kZeroes, l2_span, 2 * c, 0, true});
  read(bulk_start, bulk_bytes);
  flush();

  // Every cluster a step touches is tracked sector by sector (so COW must
  // keep the untouched sectors of a cluster).
  for (const Step& s : steps_) {
    if (s.kind == Step::kFlush) continue;
    uint64_t first = s.offset_bytes / c * c;
    uint64_t end = (s.offset_bytes + s.length_bytes + c - 1) / c * c;
    for (uint64_t off = first; off < end; off += kSector) {
      Values v;
      v.set(Initial(off / kSector));
      initial_model_[off / kSector] = {v, v};
    }
  }
}

void FaultMatrix::ApplyStep(const Step& s, int result, Outcome* out, int injected) {
  auto& model = out->model;
  switch (s.kind) {
    case Step::kWrite:
    case Step::kDiscard:
    case Step::kZeroes: {
      const uint8_t v = s.kind == Step::kWrite ? s.value : 0;
      for (uint64_t off = s.offset_bytes; off < s.offset_bytes + s.length_bytes; off += kSector) {
        Sector& sec = model.at(off / kSector);
        if (result == 0) sec.live.reset();
        sec.live.set(v);
        sec.on_disk.set(v);
      }
      break;
    }
    case Step::kFlush:
      if (result == 0) {
        for (auto& [sector, sec] : model) sec.on_disk = sec.live;
      }
      break;
    case Step::kRead:
      break;
  }
  (void)injected;
}

Outcome FaultMatrix::RunWorkload(const std::optional<FaultRule>& rule,
                                 std::optional<uint64_t> subset_seed) {
  Outcome out;
  out.model = initial_model_;
  io::MemFile mem(io::MemFile::Mode::kImmediate, pristine_);
  // Failed operations never reach the power-loss journal (FaultFile above it).
  io::PowerLossFile power(&mem, pristine_);
  FaultFile fault(&power);
  fault.set_recording(true);
  int rule_id = rule ? fault.AddRule(*rule) : 0;
  const int injected = rule ? rule->error : 0;
  auto fired = [&] { return rule_id != 0 && fault.rule_fired(rule_id) > 0; };
  auto note = [&](int step) {
    if (out.fault_step == -2 && fired()) {
      out.fault_step = step;
      if (subset_seed) {
        std::mt19937_64 rng(*subset_seed);
        out.crash_bytes = power.CrashRandomSubset(rng);
      } else {
        out.crash_bytes = power.Crash();
      }
      out.crash_model = out.model;
    }
  };

  auto opened =
      io::RunSync(nullptr, OpenImage(std::make_unique<BorrowedFile>(&fault), Options(false)));
  note(-1);
  if (!opened.ok()) {
    out.open_error = -EIO;
    out.log = fault.log();
    out.bytes = mem.data();
    return out;
  }
  out.opened = true;
  std::unique_ptr<Device> dev = std::move(*opened);
  std::vector<std::byte> buf;
  for (size_t i = 0; i < steps_.size(); ++i) {
    const Step& s = steps_[i];
    int r = 0;
    switch (s.kind) {
      case Step::kWrite:
        buf.assign(s.length_bytes, std::byte{s.value});
        r = testing::WriteSync(*dev, s.offset_bytes, buf);
        break;
      case Step::kDiscard:
        r = io::RunSync(nullptr, dev->Discard(s.offset_bytes, s.length_bytes));
        break;
      case Step::kZeroes:
        r = io::RunSync(nullptr, dev->WriteZeroes(s.offset_bytes, s.length_bytes, s.may_unmap));
        break;
      case Step::kFlush:
        r = io::RunSync(nullptr, dev->Flush());
        break;
      case Step::kRead: {
        buf.assign(s.length_bytes, std::byte{0xee});
        r = testing::ReadSync(*dev, s.offset_bytes, buf);
        if (r != 0) break;
        for (uint64_t o = 0; o < s.length_bytes; o += kSector) {
          const Sector& sec = out.model.at((s.offset_bytes + o) / kSector);
          const uint8_t got = static_cast<uint8_t>(buf[o]);
          bool uniform = std::all_of(buf.begin() + static_cast<ptrdiff_t>(o),
                                     buf.begin() + static_cast<ptrdiff_t>(o + kSector),
                                     [&](std::byte b) { return b == buf[o]; });
          if (!uniform || !sec.live.test(got)) {
            if (++out.read_mismatches <= 3) {
              ADD_FAILURE() << kind_.name << ": live read at step " << i << ": sector "
                            << (s.offset_bytes + o) / kSector << " reads " << int(got)
                            << (uniform ? "" : " (not uniform)") << ", not a value it may hold";
            }
          }
        }
        break;
      }
    }
    out.results.push_back(r);
    ApplyStep(s, r, &out, injected);
    note(static_cast<int>(i));
  }
  absl::Status closed = io::RunSync(nullptr, dev->Close());
  out.closed_ok = closed.ok();
  out.close_message = closed.ToString();
  if (closed.ok()) {
    for (auto& [sector, sec] : out.model) sec.on_disk = sec.live;
  }
  note(static_cast<int>(steps_.size()));
  dev.reset();
  out.log = fault.log();
  out.bytes = mem.data();
  return out;
}

std::vector<Point> FaultMatrix::Classify(const Outcome& clean) {
  struct Range {
    uint64_t begin, end;
    Region region;
  };
  std::vector<Range> ranges;
  const std::vector<std::byte>& b = clean.bytes;
  auto h = format::DecodeHeader(b, format::DecodeLimits{b.size()});
  EXPECT_TRUE(h.ok()) << h.status();
  const uint64_t c = cluster_bytes();
  ranges.push_back({0, c, Region::kHeader});
  if (h.ok()) {
    ranges.push_back(
        {h->l1_table_offset, h->l1_table_offset + uint64_t{h->l1_size} * 8, Region::kL1});
    const uint64_t rt_bytes = uint64_t{h->refcount_table_clusters} << h->cluster_bits;
    ranges.push_back(
        {h->refcount_table_offset, h->refcount_table_offset + rt_bytes, Region::kRefTable});
    ranges.push_back({initial_reftable_offset_, initial_reftable_offset_ + initial_reftable_bytes_,
                      Region::kRefTable});
    for (uint64_t i = 0; i < rt_bytes / 8 && h->refcount_table_offset + i * 8 + 8 <= b.size();
         ++i) {
      uint64_t off = format::LoadBE64(&b[h->refcount_table_offset + i * 8]) & format::kOffsetMask;
      if (off) ranges.push_back({off, off + c, Region::kRefBlock});
    }
    for (uint64_t i = 0; i < h->l1_size && h->l1_table_offset + i * 8 + 8 <= b.size(); ++i) {
      uint64_t off = format::LoadBE64(&b[h->l1_table_offset + i * 8]) & format::kOffsetMask;
      if (off) ranges.push_back({off, off + c, Region::kL2});
    }
  }
  std::vector<Point> points;
  size_t index = 0;
  for (const FaultFile::OpRecord& op : clean.log) {
    if ((OpKindBit(op.kind) & kMutatingKinds) == 0) continue;
    Region region = Region::kData;
    if (op.kind == OpKind::kFlush) {
      region = Region::kFlush;
    } else if (op.kind == OpKind::kTruncate) {
      region = Region::kTruncate;
    } else {
      for (const Range& r : ranges) {
        if (op.offset_bytes < r.end && r.begin < op.offset_bytes + op.length_bytes) {
          region = r.region;
          break;
        }
      }
    }
    points.push_back({index++, op, region});
  }
  return points;
}

std::vector<size_t> FaultMatrix::Sample(const std::vector<Point>& points) {
  std::vector<size_t> all(points.size());
  for (size_t i = 0; i < points.size(); ++i) all[i] = i;
  if (const char* only = std::getenv("UQ_FAULT_POINT")) {
    size_t n = std::strtoull(only, nullptr, 0);
    if (n < points.size()) return {n};
    return {};
  }
  const size_t cap = testing::EnvU64("UQ_FAULT_CAP", kSanitized ? 8 : kind_.max_points);
  if (testing::EnvU64("UQ_FAULT_FULL", 0) != 0 || points.size() <= cap) return all;
  // Rare points (header, L1, refcount table, truncate) and the operation
  // right after each (usually the fsync ordering it) are always kept; other
  // metadata points next, thinned evenly; data points fill what is left (at
  // least a few).
  std::vector<size_t> anchors, meta, data;
  for (size_t i = 0; i < points.size(); ++i) {
    const Region r = points[i].region;
    const bool rare = r == Region::kHeader || r == Region::kL1 || r == Region::kTruncate ||
                      r == Region::kRefTable;
    const bool after_rare =
        i > 0 &&
        (points[i - 1].region == Region::kHeader || points[i - 1].region == Region::kL1 ||
         points[i - 1].region == Region::kTruncate || points[i - 1].region == Region::kRefTable);
    if (rare || after_rare) {
      anchors.push_back(i);
    } else {
      (r == Region::kData ? data : meta).push_back(i);
    }
  }
  auto thin = [](const std::vector<size_t>& v, size_t keep) {
    if (v.size() <= keep) return v;
    std::vector<size_t> out;
    if (keep == 0) return out;
    if (keep == 1) return std::vector<size_t>{v.front()};
    for (size_t k = 0; k < keep; ++k) out.push_back(v[k * (v.size() - 1) / (keep - 1)]);
    out.erase(std::unique(out.begin(), out.end()), out.end());
    return out;
  };
  const size_t budget = cap > 8 ? cap - 8 : 0;
  std::vector<size_t> chosen = thin(anchors, budget / 2);
  std::vector<size_t> m = thin(meta, budget > chosen.size() ? budget - chosen.size() : 0);
  chosen.insert(chosen.end(), m.begin(), m.end());
  std::vector<size_t> d =
      thin(data, std::max<size_t>(8, cap > chosen.size() ? cap - chosen.size() : 0));
  chosen.insert(chosen.end(), d.begin(), d.end());
  std::sort(chosen.begin(), chosen.end());
  chosen.erase(std::unique(chosen.begin(), chosen.end()), chosen.end());
  return chosen;
}

FaultRule FaultMatrix::OnceRule(const Point& p, int error) const {
  FaultRule r;
  r.kinds = kMutatingKinds;
  r.skip = p.index;
  r.error = error;
  r.once = true;
  return r;
}

FaultRule FaultMatrix::AlwaysRule(const Point& p, const std::vector<FaultFile::OpRecord>& log,
                                  int error) const {
  FaultRule r;
  r.kinds = OpKindBit(p.op.kind);
  r.error = error;
  r.once = false;
  const bool ranged =
      p.op.kind != OpKind::kFlush && p.op.kind != OpKind::kTruncate && p.op.length_bytes > 0;
  if (ranged) {
    r.offset_bytes = p.op.offset_bytes;
    r.length_bytes = p.op.length_bytes;
  }
  // Matching operations before the point pass.
  size_t mutating = 0;
  for (const FaultFile::OpRecord& op : log) {
    if ((OpKindBit(op.kind) & kMutatingKinds) == 0) continue;
    if (mutating++ == p.index) break;
    if (op.kind != p.op.kind) continue;
    if (ranged && (op.length_bytes == 0 || op.offset_bytes >= r.offset_bytes + r.length_bytes ||
                   r.offset_bytes >= op.offset_bytes + op.length_bytes)) {
      continue;
    }
    ++r.skip;
  }
  return r;
}

void FaultMatrix::CheckImageBytes(const std::vector<std::byte>& bytes,
                                  const std::map<uint64_t, Sector>& model, const std::string& what,
                                  bool qemu_check, Totals* totals) {
  auto h = format::DecodeHeader(bytes, format::DecodeLimits{bytes.size()});
  ASSERT_TRUE(h.ok()) << what << ": header after the run: " << h.status();
  EXPECT_EQ(h->incompatible_features & format::kIncompatCorrupt, 0u)
      << what << ": the engine marked the image corrupt after an I/O error";
  io::MemFile file(io::MemFile::Mode::kImmediate, bytes);
  if (h->incompatible_features & format::kIncompatDirty) {
    // Stale refcounts are allowed while dirty: the open repairs them.
    ++totals->dirty_repaired;
    auto d = testing::OpenSync(&file, Options(false));
    ASSERT_TRUE(d.ok()) << what << ": reopening the dirty image: " << d.status();
    absl::Status s = io::RunSync(nullptr, (*d)->Close());
    ASSERT_TRUE(s.ok()) << what << ": closing the repaired image: " << s;
  }
  auto check = io::RunSync(nullptr, CheckImage(file));
  ASSERT_TRUE(check.ok()) << what << ": " << check.status();
  std::string msgs;
  for (const std::string& m : check->messages) msgs += "\n  " + m;
  EXPECT_EQ(check->corruptions, 0u) << what << ": CheckImage corruptions" << msgs;
  if (qemu_check && QemuImgAvailable()) {
    std::string output;
    int code = QemuImgCheck(file.data(), kind_.backing ? &backing_bytes_ : nullptr, &output);
    ++totals->qemu_checks;
    EXPECT_TRUE(code == 0 || code == 3) << what << ": qemu-img check exit " << code << "\n"
                                        << output;
  }

  // Read back every tracked sector.
  auto d = testing::OpenSync(&file, Options(true));
  ASSERT_TRUE(d.ok()) << what << ": reopening read-only: " << d.status();
  std::vector<std::byte> buf;
  int mismatches = 0;
  const uint64_t c = cluster_bytes();
  for (auto it = model.begin(); it != model.end();) {
    // One cluster at a time (tracked sectors come in whole clusters).
    const uint64_t first = it->first;
    const uint64_t n = c / kSector;
    buf.assign(c, std::byte{0xee});
    int r = testing::ReadSync(**d, first * kSector, buf);
    ASSERT_EQ(r, 0) << what << ": read-back at sector " << first;
    for (uint64_t k = 0; k < n && it != model.end(); ++k, ++it) {
      ASSERT_EQ(it->first, first + k);
      const uint8_t got = static_cast<uint8_t>(buf[k * kSector]);
      bool uniform = std::all_of(buf.begin() + static_cast<ptrdiff_t>(k * kSector),
                                 buf.begin() + static_cast<ptrdiff_t>((k + 1) * kSector),
                                 [&](std::byte x) { return x == buf[k * kSector]; });
      ++totals->sectors_verified;
      if ((!uniform || !it->second.on_disk.test(got)) && ++mismatches <= 3) {
        std::string allowed;
        for (int v = 0; v < 256; ++v) {
          if (it->second.on_disk.test(v)) absl::StrAppend(&allowed, allowed.empty() ? "" : ",", v);
        }
        ADD_FAILURE() << what << ": after reopen sector " << it->first << " (offset "
                      << it->first * kSector << ") reads " << int(got)
                      << (uniform ? "" : " (not uniform)") << ", may hold only {" << allowed << "}";
      }
    }
  }
  absl::Status s = io::RunSync(nullptr, (*d)->Close());
  EXPECT_TRUE(s.ok()) << s;
}

void FaultMatrix::Run(Totals* totals) {
  ASSERT_NO_FATAL_FAILURE(Setup());
  base_seed_ = testing::EnvU64("UQ_FAULT_SEED", 0x5eed);
  std::printf("[%s] crash subset base seed %llu (UQ_FAULT_SEED)\n", kind_.name,
              (unsigned long long)base_seed_);
  const auto start = std::chrono::steady_clock::now();

  // The fault-free run: every step succeeds, and its operations are the points.
  Outcome clean = RunWorkload(std::nullopt, std::nullopt);
  ASSERT_TRUE(clean.opened);
  for (size_t i = 0; i < steps_.size(); ++i) {
    ASSERT_EQ(clean.results[i], 0)
        << kind_.name << ": fault-free step " << i << " (" << StepName(steps_[i].kind) << ")";
  }
  ASSERT_TRUE(clean.closed_ok) << clean.close_message;
  ASSERT_NO_FATAL_FAILURE(CheckImageBytes(clean.bytes, clean.model,
                                          std::string(kind_.name) + " fault-free", false, totals));
  for (const auto& [sector, sec] : clean.model) {
    ASSERT_EQ(sec.on_disk.count(), 1u) << "a fault-free run leaves one value per sector";
  }

  std::vector<Point> points = Classify(clean);
  std::map<Region, size_t> by_region;
  for (const Point& p : points) ++by_region[p.region];
  std::string hist;
  for (const auto& [region, n] : by_region) absl::StrAppend(&hist, " ", RegionName(region), "=", n);
  if (testing::EnvU64("UQ_FAULT_LIST", 0) != 0) {
    for (const Point& p : points) {
      std::printf("[%s] point %zu: %s %s at %llu+%llu\n", kind_.name, p.index,
                  std::string(io::OpKindName(p.op.kind)).c_str(), RegionName(p.region),
                  (unsigned long long)p.op.offset_bytes, (unsigned long long)p.op.length_bytes);
    }
  }
  std::vector<size_t> chosen = Sample(points);
  std::string chosen_list;
  for (size_t i : chosen) absl::StrAppend(&chosen_list, chosen_list.empty() ? "" : ",", i);
  std::printf(
      "[%s] %zu write points:%s\n[%s] running %zu points x {EIO,ENOSPC} x {once,always}: %s\n",
      kind_.name, points.size(), hist.c_str(), kind_.name, chosen.size(),
      chosen.size() == points.size() ? "all" : chosen_list.c_str());
  totals->points += chosen.size();

  int qemu_left = kind_.qemu_checks;
  for (size_t ci = 0; ci < chosen.size(); ++ci) {
    const Point& p = points[chosen[ci]];
    for (int error : {EIO, ENOSPC}) {
      for (bool always : {false, true}) {
        const std::string what = absl::StrCat(
            kind_.name, " point ", p.index, " (", std::string(io::OpKindName(p.op.kind)), " ",
            RegionName(p.region), " at ", p.op.offset_bytes, "+", p.op.length_bytes, ") ",
            std::strerror(error), always ? " always" : " once");
        FaultRule rule = always ? AlwaysRule(p, clean.log, error) : OnceRule(p, error);
        if (testing::EnvU64("UQ_FAULT_AFTER_IO", 0) != 0) {
          rule.effect = io::FaultEffect::kFailAfterIo;
        }
        // "once" runs crash keeping a random subset of the unflushed writes
        // (a disk that persisted part of its cache), "always" runs keep none.
        std::optional<uint64_t> seed;
        if (!always) seed = base_seed_ ^ (p.index * 0x9e3779b97f4a7c15ull) ^ uint64_t(error);
        Outcome out = RunWorkload(rule, seed);
        ++totals->runs;
        // Until the fault, the engine must have done exactly what it did in
        // the fault-free run, or the point is not the one named.
        size_t mutating = 0;
        for (size_t k = 0; k < out.log.size() && k < clean.log.size(); ++k) {
          const auto& a = out.log[k];
          const auto& b = clean.log[k];
          ASSERT_TRUE(a.kind == b.kind && a.offset_bytes == b.offset_bytes &&
                      a.length_bytes == b.length_bytes)
              << what << ": operation " << k << " differs from the fault-free run";
          if (a.faulted) break;
          if ((OpKindBit(a.kind) & kMutatingKinds) && ++mutating > p.index) break;
        }
        ASSERT_NE(out.fault_step, -2) << what << ": the fault never fired";
        ++totals->fired;
        // Reported: the step it hit or a later one (or open/close) fails.
        int first_error = 0;
        int error_step = -2;
        if (!out.opened) {
          first_error = out.open_error;
          error_step = -1;
        }
        for (size_t i = 0; i < out.results.size() && first_error == 0; ++i) {
          if (out.results[i] < 0 && static_cast<int>(i) >= out.fault_step) {
            first_error = out.results[i];
            error_step = static_cast<int>(i);
          }
        }
        if (first_error == 0 && !out.closed_ok && out.opened) {
          error_step = static_cast<int>(steps_.size());
          first_error =
              out.close_message.find(std::strerror(error)) != std::string::npos ? -error : -EIO;
        }
        if (first_error != 0) ++totals->reported;
        if (p.op.kind != OpKind::kDiscard) {
          EXPECT_NE(first_error, 0)
              << what << ": the fault fired during "
              << (out.fault_step < 0 ? std::string("open")
                  : out.fault_step >= static_cast<int>(steps_.size())
                      ? std::string("close")
                      : absl::StrCat("step ", out.fault_step, " (",
                                     StepName(steps_[out.fault_step].kind), ")"))
              << " but every request, flush and close reported success";
          if (first_error != 0 && error_step >= 0 && error_step < static_cast<int>(steps_.size())) {
            EXPECT_EQ(first_error, -error)
                << what << ": step " << error_step << " reported " << std::strerror(-first_error);
          }
        }
        const bool qemu =
            qemu_left > 0 && ci % std::max<size_t>(1, chosen.size() / 3) == 0 && error == EIO;
        if (qemu) --qemu_left;
        ASSERT_NO_FATAL_FAILURE(CheckImageBytes(out.bytes, out.model, what, qemu, totals));
        // A power cut right after the failing request: only flushed writes
        // remain, and they must form a consistent image holding every
        // flushed request.
        ++totals->crash_images;
        ASSERT_NO_FATAL_FAILURE(CheckImageBytes(
            out.crash_bytes, out.crash_model,
            absl::StrCat(
                what, " crash after the fault (",
                seed ? absl::StrCat("subset seed ", *seed) : std::string("unflushed dropped"), ")"),
            false, totals));
        if (::testing::Test::HasFailure() && testing::EnvU64("UQ_FAULT_KEEP_GOING", 0) == 0) {
          GTEST_FAIL() << what << ": stopping at the first failing run (UQ_FAULT_KEEP_GOING=1 "
                       << "runs the rest; UQ_FAULT_POINT=" << p.index << " reruns this point)";
        }
      }
    }
  }
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("[%s] %zu points, %zu runs in %.2f s\n", kind_.name, chosen.size(), chosen.size() * 4,
              secs);
}

format::CreateOptions Opts(uint32_t cluster_bits, uint32_t refcount_order = 4, bool ext = false,
                           bool lazy = false) {
  format::CreateOptions o;
  o.cluster_bits = cluster_bits;
  o.refcount_order = refcount_order;
  o.extended_l2 = ext;
  o.lazy_refcounts = lazy;
  return o;
}

Totals totals;

void RunKind(const ImageKind& kind) {
  if (kSanitized && kind.heavy && testing::EnvU64("UQ_FAULT_CAP", 0) == 0) {
    GTEST_SKIP() << kind.name << " is too slow under ASan (UQ_FAULT_CAP=<n> runs it)";
  }
  FaultMatrix m(kind);
  m.Run(&totals);
  std::printf(
      "totals so far: %llu points, %llu runs (%llu fired, %llu reported an error), "
      "%llu dirty images repaired, %llu sectors verified, %llu qemu-img checks, "
      "%llu crash images\n",
      (unsigned long long)totals.points, (unsigned long long)totals.runs,
      (unsigned long long)totals.fired, (unsigned long long)totals.reported,
      (unsigned long long)totals.dirty_repaired, (unsigned long long)totals.sectors_verified,
      (unsigned long long)totals.qemu_checks, (unsigned long long)totals.crash_images);
}

TEST(FaultMatrix, c64k) { RunKind({.name = "c64k", .create = Opts(16), .bulk_clusters = 8}); }

TEST(FaultMatrix, c4k_refbits1) {
  RunKind({.name = "c4k_refbits1", .create = Opts(12, 0), .bulk_clusters = 40});
}

// 4 KiB refcount blocks of 64-bit counts cover 512 clusters: the bulk write
// needs new refcount blocks.
TEST(FaultMatrix, c4k_refbits64) {
  RunKind({.name = "c4k_refbits64", .create = Opts(12, 6), .bulk_clusters = 530, .heavy = true});
}

// 512-byte clusters, 64-bit counts: a one-cluster refcount table covers 4096
// clusters, so the bulk write grows (moves) the table.
TEST(FaultMatrix, c512_refbits64) {
  RunKind({.name = "c512_refbits64", .create = Opts(9, 6), .bulk_clusters = 4200, .heavy = true});
}

TEST(FaultMatrix, c64k_extl2) {
  RunKind({.name = "c64k_extl2", .create = Opts(16, 4, true), .bulk_clusters = 8});
}

TEST(FaultMatrix, c4k_lazy) {
  RunKind({.name = "c4k_lazy", .create = Opts(12, 4, false, true), .bulk_clusters = 40});
}

TEST(FaultMatrix, c64k_backing) {
  RunKind({.name = "c64k_backing", .create = Opts(16), .backing = true, .bulk_clusters = 8});
}

TEST(FaultMatrix, c64k_extl2_backing) {
  RunKind({.name = "c64k_extl2_backing",
           .create = Opts(16, 4, true),
           .backing = true,
           .bulk_clusters = 8});
}

}  // namespace
}  // namespace uq::engine
