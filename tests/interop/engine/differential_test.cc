// Differential test: short random op streams on small images, applied by
// qemu-io and by `qcow2-img io`, with QEMU as the referee.
//
// Each stream starts from a small image (2-8 clusters, sometimes with a partial
// last cluster) made by qemu-img and prepared by qemu-io (pattern writes, zero
// writes, compressed clusters, and for overlays the backing file's contents).
// It then runs 4-12 random operations (write, write-zeroes with and without
// unmap, discard, flush, reads) whose offsets and lengths are multiples of 512
// bytes picked without regard to alignment, half of them near a subcluster or
// cluster edge so that requests begin and end inside (sub)clusters. A flat
// model follows the guest contents; discards follow QEMU's qcow2 driver (whole
// clusters read as zero, partly covered clusters keep their contents, version
// 2 images with a backing file ignore discards).
//
// Per stream:
//   1. qemu-io runs the stream on one copy, then a sweep of `read -P` over the
//      whole disk: the model agrees with QEMU;
//   2. `qcow2-img io` runs the same stream and sweep on another copy;
//   3. qemu-io runs the sweep on our result (what QEMU reads from our image is
//      what our reader read), so both results hold identical contents;
//   4. `qemu-img check` of our result exits 0 (no corruption, no leak).
// qemu-io runs one process per batch of streams (open/close per image); a
// batch that fails is rerun stream by stream to name the failing streams.
//
// Streams per variant: 300 by default, 25,000 with UQ_LONG=1, or
// UQ_DIFF_STREAMS=N. The run's seed is printed; stream k of a run has seed
// SEED + k, and UQ_DIFF_SEED=SEED UQ_DIFF_FIRST=k UQ_DIFF_STREAMS=1 reruns it
// alone (the failure message prints that command line).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "tests/interop/interop_util.h"

namespace uq::interop {
namespace {

namespace fs = std::filesystem;

constexpr uint64_t kSector = 512;
const std::string kOurs = UQ_QCOW2_IMG;

enum class Backing { kNone, kRaw, kQcow2 };

struct Variant {
  std::string name;
  uint32_t cluster_bits;
  bool extended_l2;
  int version;  // 2 (compat=0.10) or 3
  Backing backing;
};

void PrintTo(const Variant& v, std::ostream* os) { *os << v.name; }

uint64_t EnvU64(const char* name, uint64_t fallback) {
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

  Stream Make() {
    const uint64_t clusters = Uniform(2, 8);
    s_.size_bytes = clusters * cluster_;
    if (Uniform(0, 3) == 0) {
      s_.size_bytes -= Uniform(1, std::min<uint64_t>(cluster_ / kSector - 1, 9)) * kSector;
    }
    model_.assign(s_.size_bytes, 0);
    if (v_.backing != Backing::kNone) {
      // Sometimes shorter than the overlay: the tail reads as zero.
      s_.backing_bytes =
          Uniform(0, 1) == 0
              ? s_.size_bytes
              : Uniform(s_.size_bytes / 2 / kSector, s_.size_bytes / kSector) * kSector;
      for (uint64_t i = Uniform(1, 4); i > 0; --i) {
        auto [off, len] = RangeIn(s_.backing_bytes);
        const uint8_t p = Pattern();
        s_.base_setup.push_back(absl::StrFormat("write -q -P 0x%02x %d %d", p, off, len));
        Fill(off, len, p);
      }
    }
    // Compressed clusters first: qemu-io compresses only whole, unallocated
    // clusters.
    const uint64_t whole_clusters = s_.size_bytes / cluster_;
    for (uint64_t c = 0; c < whole_clusters; ++c) {
      if (Uniform(0, 4) != 0) continue;
      const uint8_t p = Pattern();
      s_.setup.push_back(absl::StrFormat("write -q -c -P 0x%02x %d %d", p, c * cluster_, cluster_));
      Fill(c * cluster_, cluster_, p);
    }
    for (uint64_t i = Uniform(0, 4); i > 0; --i) Setup();
    for (uint64_t i = Uniform(4, 12); i > 0; --i) Op();
    Sweep();
    return s_;
  }

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
  uint64_t Offset(uint64_t limit) {
    const uint64_t sectors = limit / kSector;
    if (Uniform(0, 1) == 0) return Uniform(0, sectors - 1) * kSector;
    const uint64_t edge = Uniform(0, limit / edge_) * edge_;
    const int64_t delta = static_cast<int64_t>(Uniform(0, 6)) - 3;
    const int64_t off = static_cast<int64_t>(edge) + delta * static_cast<int64_t>(kSector);
    return static_cast<uint64_t>(
        std::clamp<int64_t>(off, 0, static_cast<int64_t>(limit - kSector)));
  }

  // [off, off + len) inside [0, limit): up to two subclusters, one cluster or
  // two clusters long (a third each); half the time the end is also put near
  // an edge.
  std::pair<uint64_t, uint64_t> RangeIn(uint64_t limit) {
    const uint64_t off = Offset(limit);
    const uint64_t room = (limit - off) / kSector;
    const uint64_t max_bytes[] = {2 * edge_, cluster_, 2 * cluster_};
    const uint64_t max_sectors = std::max<uint64_t>(1, max_bytes[Uniform(0, 2)] / kSector);
    uint64_t len = Uniform(1, std::min<uint64_t>(room, max_sectors)) * kSector;
    if (Uniform(0, 1) == 0) {
      const uint64_t edge = (off + len) / edge_ * edge_ + (Uniform(0, 1) ? edge_ : 0);
      const int64_t delta = static_cast<int64_t>(Uniform(0, 6)) - 3;
      const int64_t end = static_cast<int64_t>(edge) + delta * static_cast<int64_t>(kSector);
      len = static_cast<uint64_t>(std::clamp<int64_t>(end, static_cast<int64_t>(off + kSector),
                                                      static_cast<int64_t>(limit))) -
            off;
    }
    return {off, len};
  }

  void Setup() {
    const uint64_t kind = Uniform(0, 9);
    auto [off, len] = RangeIn(s_.size_bytes);
    if (kind < 3) {
      s_.setup.push_back(absl::StrFormat("write -q -z %d %d", off, len));
      Fill(off, len, 0);
      return;
    }
    const uint8_t p = Pattern();
    s_.setup.push_back(absl::StrFormat("write -q -P 0x%02x %d %d", p, off, len));
    Fill(off, len, p);
  }

  void Op() {
    const uint64_t kind = Uniform(0, 99);
    if (kind < 5) {
      s_.ops.push_back("flush");
      return;
    }
    auto [off, len] = RangeIn(s_.size_bytes);
    if (kind < 40) {
      const uint8_t p = Pattern();
      s_.ops.push_back(absl::StrFormat("write -q -P 0x%02x %d %d", p, off, len));
      Fill(off, len, p);
    } else if (kind < 65) {
      const bool unmap = Uniform(0, 1) == 1;
      s_.ops.push_back(absl::StrFormat("write -q -z%s %d %d", unmap ? " -u" : "", off, len));
      Fill(off, len, 0);
    } else if (kind < 85) {
      s_.ops.push_back(absl::StrFormat("discard -q %d %d", off, len));
      Discard(off, len);
    } else {
      // A read of a uniform run inside the range (checks mid-stream state).
      const uint8_t first = model_[off];
      uint64_t n = 0;
      while (n < len && model_[off + n] == first) n += kSector;
      s_.ops.push_back(absl::StrFormat("read -q -P 0x%02x %d %d", first, off, n));
    }
  }

  // QEMU's qcow2 discard: whole clusters (the last partial cluster counts
  // when the range reaches the end of the disk); none on v2 with a backing
  // file.
  void Discard(uint64_t off, uint64_t len) {
    if (v_.version < 3 && v_.backing != Backing::kNone) return;
    const uint64_t begin = (off + cluster_ - 1) / cluster_ * cluster_;
    uint64_t end = (off + len) / cluster_ * cluster_;
    if (off + len == s_.size_bytes && off <= s_.size_bytes / cluster_ * cluster_) {
      end = s_.size_bytes;
    }
    if (begin < end) Fill(begin, end - begin, 0);
  }

  void Sweep() {
    uint64_t pos = 0;
    while (pos < model_.size()) {
      uint64_t end = pos;
      while (end < model_.size() && model_[end] == model_[pos]) end += kSector;
      s_.sweep.push_back(absl::StrFormat("read -q -P 0x%02x %d %d", model_[pos], pos, end - pos));
      pos = end;
    }
  }

  const Variant& v_;
  std::mt19937_64 rng_;
  Stream s_;
  uint64_t cluster_ = 0;
  uint64_t edge_ = 0;
  std::vector<uint8_t> model_;
};

std::string BackingFormat(Backing b) { return b == Backing::kQcow2 ? "qcow2" : "raw"; }

std::string QemuIoOpen(const std::string& path, const std::string& driver, bool read_only) {
  return absl::StrCat("open ", read_only ? "-r " : "", "-o driver=", driver, " ", path);
}

std::string OurIoArgs(const std::vector<std::string>& a, const std::vector<std::string>& b) {
  std::string out;
  for (const auto* list : {&a, &b}) {
    for (const std::string& c : *list) absl::StrAppend(&out, " -c ", Quote(c));
  }
  return out;
}

// A directory for the run's images: tmpfs when there is one (thousands of
// small images, fsync on close), else $TMPDIR or /tmp.
std::string MakeWorkDir() {
  std::string base = "/dev/shm";
  if (access(base.c_str(), W_OK) != 0) {
    const char* t = std::getenv("TMPDIR");
    base = t != nullptr && *t != '\0' ? t : "/tmp";
  }
  std::string templ = base + "/uq-differential-XXXXXX";
  return mkdtemp(templ.data()) != nullptr ? templ : "";
}

class Differential : public ::testing::TestWithParam<Variant> {
 protected:
  void SetUp() override {
    if (!HaveTool("qemu-img") || !HaveTool("qemu-io")) {
      GTEST_SKIP() << "qemu-img / qemu-io not installed";
    }
    root_ = MakeWorkDir();
    ASSERT_FALSE(root_.empty());
  }
  void TearDown() override {
    if (HasFailure()) {
      std::cerr << "kept work directory " << root_ << "\n";
    } else if (!root_.empty()) {
      fs::remove_all(root_);
    }
  }

  // Makes (once per geometry) base.img and img.qcow2 with qemu-img.
  std::string Template(const Stream& s) {
    const Variant& v = GetParam();
    const std::string key = absl::StrCat(s.size_bytes, "-", s.backing_bytes);
    auto it = templates_.find(key);
    if (it != templates_.end()) return it->second;
    const std::string dir = absl::StrCat(root_, "/template-", key);
    fs::create_directories(dir);
    std::string opts = absl::StrCat("cluster_size=", uint64_t{1} << v.cluster_bits,
                                    ",compat=", v.version == 2 ? "0.10" : "1.1");
    if (v.extended_l2) absl::StrAppend(&opts, ",extended_l2=on");
    std::string cmd = absl::StrCat("cd ", Quote(dir), " && ");
    if (s.backing_bytes != 0) {
      absl::StrAppend(&cmd, "qemu-img create -q -f ", BackingFormat(v.backing), " base.img ",
                      s.backing_bytes, " && ");
      absl::StrAppend(&opts, " -b base.img -F ", BackingFormat(v.backing));
    }
    absl::StrAppend(&cmd, "qemu-img create -q -f qcow2 -o ", opts, " img.qcow2 ", s.size_bytes);
    RunResult r = RunCommand(cmd);
    EXPECT_EQ(r.exit_code, 0) << cmd << "\n" << r.out << r.err;
    templates_[key] = dir;
    return dir;
  }

  static void CopyImages(const std::string& from, const std::string& to) {
    fs::create_directories(to);
    for (const auto& e : fs::directory_iterator(from)) {
      fs::copy_file(e.path(), to + "/" + e.path().filename().string(),
                    fs::copy_options::overwrite_existing);
    }
  }

  // qemu-io script for streams[i] in directory dirs[i].
  enum class Script { kSetup, kApply, kSweepOurs };
  std::string QemuIoScript(Script kind, const std::vector<Stream>& streams,
                           const std::vector<std::string>& dirs) const {
    const Variant& v = GetParam();
    std::vector<std::string> lines;
    for (size_t i = 0; i < streams.size(); ++i) {
      const Stream& s = streams[i];
      const std::string& d = dirs[i];
      switch (kind) {
        case Script::kSetup:
          if (s.backing_bytes != 0 && !s.base_setup.empty()) {
            lines.push_back(QemuIoOpen(d + "/start/base.img", BackingFormat(v.backing), false));
            lines.insert(lines.end(), s.base_setup.begin(), s.base_setup.end());
            lines.push_back("close");
          }
          if (s.setup.empty()) break;
          lines.push_back(QemuIoOpen(d + "/start/img.qcow2", "qcow2", false));
          lines.insert(lines.end(), s.setup.begin(), s.setup.end());
          lines.push_back("close");
          break;
        case Script::kApply:
          lines.push_back(QemuIoOpen(d + "/theirs/img.qcow2", "qcow2", false));
          lines.insert(lines.end(), s.ops.begin(), s.ops.end());
          lines.insert(lines.end(), s.sweep.begin(), s.sweep.end());
          lines.push_back("close");
          break;
        case Script::kSweepOurs:
          lines.push_back(QemuIoOpen(d + "/ours/img.qcow2", "qcow2", true));
          lines.insert(lines.end(), s.sweep.begin(), s.sweep.end());
          lines.push_back("close");
          break;
      }
    }
    return absl::StrJoin(lines, "\n") + "\n";
  }

  // Runs a qemu-io script; true if every command succeeded.
  bool RunQemuIo(const std::string& script, const std::string& name, std::string* output) {
    const std::string path = absl::StrCat(root_, "/", name, ".qemu-io");
    WriteFile(path, script);
    RunResult r = RunCommand(absl::StrCat("qemu-io < ", Quote(path)));
    *output = absl::StrReplaceAll(r.out, {{"qemu-io> ", ""}}) + r.err;
    return r.exit_code == 0 && r.out.find("failed") == std::string::npos &&
           r.err.find("qemu-io:") == std::string::npos;
  }

  std::string Repro(const Stream& s, uint64_t run_seed, uint64_t index) const {
    const Variant& v = GetParam();
    return absl::StrCat(
        "variant ", v.name, ", stream seed ", s.seed, ", disk ", s.size_bytes, " bytes",
        s.backing_bytes ? absl::StrCat(", ", BackingFormat(v.backing), " backing file of ",
                                       s.backing_bytes, " bytes")
                        : "",
        "\n  rerun: UQ_DIFF_SEED=", run_seed, " UQ_DIFF_FIRST=", index,
        " UQ_DIFF_STREAMS=1 interop_differential_test --gtest_filter='*", v.name, "*'",
        "\n  backing setup: ", absl::StrJoin(s.base_setup, "; "),
        "\n  image setup (qemu-io): ", absl::StrJoin(s.setup, "; "),
        "\n  stream: ", absl::StrJoin(s.ops, "; "), "\n");
  }

  // Runs one batch; records failures with their reproduction.
  void RunBatch(const std::vector<Stream>& streams, uint64_t run_seed, uint64_t first_index,
                int batch) {
    std::vector<std::string> dirs;
    for (size_t i = 0; i < streams.size(); ++i) {
      const std::string d = absl::StrCat(root_, "/b", batch, "/s", first_index + i);
      CopyImages(Template(streams[i]), d + "/start");
      dirs.push_back(d);
    }
    std::string out;
    ASSERT_TRUE(RunQemuIo(QemuIoScript(Script::kSetup, streams, dirs), "setup", &out))
        << "qemu-io could not prepare the start images:\n"
        << out.substr(0, 4000);
    for (const std::string& d : dirs) {
      CopyImages(d + "/start", d + "/theirs");
      CopyImages(d + "/start", d + "/ours");
    }
    // 1. QEMU applies the streams and confirms the model.
    bool theirs_ok = RunQemuIo(QemuIoScript(Script::kApply, streams, dirs), "apply", &out);
    // 2. Ours, one process per stream.
    std::string script;
    for (size_t i = 0; i < streams.size(); ++i) {
      absl::StrAppend(&script, "cd ", Quote(dirs[i] + "/ours"), " && ", kOurs, " io",
                      OurIoArgs(streams[i].ops, streams[i].sweep), " img.qcow2 >out 2>&1 || echo ",
                      i, "\n");
    }
    WriteFile(root_ + "/ours.sh", script);
    RunResult ours = RunCommand(absl::StrCat("sh ", Quote(root_ + "/ours.sh")));
    // 3. QEMU reads our results.
    bool sweep_ok = RunQemuIo(QemuIoScript(Script::kSweepOurs, streams, dirs), "sweep-ours", &out);
    // 4. qemu-img check of ours.
    script.clear();
    for (size_t i = 0; i < streams.size(); ++i) {
      absl::StrAppend(&script, "qemu-img check -q ", Quote(dirs[i] + "/ours/img.qcow2"), " >",
                      Quote(dirs[i] + "/check"), " 2>&1 || echo ", i, "\n");
    }
    WriteFile(root_ + "/check.sh", script);
    RunResult checks = RunCommand(absl::StrCat("sh ", Quote(root_ + "/check.sh")));

    // Why each stream failed ("" = it passed).
    std::vector<std::string> why(streams.size());
    auto mark = [&](const std::string& list, const char* what) {
      std::istringstream in(list);
      size_t i;
      while (in >> i) {
        if (i < why.size()) absl::StrAppend(&why[i], what);
      }
    };
    mark(ours.out, "qcow2-img io failed (a read -P of the model, or an I/O error); ");
    mark(checks.out, "qemu-img check of our image failed; ");
    for (size_t i = 0; i < streams.size(); ++i) {
      if (!fs::exists(dirs[i] + "/ours/out") || !fs::exists(dirs[i] + "/check")) {
        absl::StrAppend(&why[i], "the stream or its check did not run; ");
      }
    }
    if (!theirs_ok || !sweep_ok) {
      // Name the streams: rerun the qemu-io steps one stream at a time.
      for (size_t i = 0; i < streams.size(); ++i) {
        const std::vector<Stream> one{streams[i]};
        const std::vector<std::string> dir{dirs[i]};
        std::string o;
        if (!theirs_ok) {
          CopyImages(dirs[i] + "/start", dirs[i] + "/theirs");
          if (!RunQemuIo(QemuIoScript(Script::kApply, one, dir), "apply-one", &o)) {
            absl::StrAppend(&why[i],
                            "qemu-io disagrees with the test's model (a test bug, or a "
                            "QEMU behaviour to model):\n",
                            o.substr(0, 2000));
          }
        }
        if (!sweep_ok && !RunQemuIo(QemuIoScript(Script::kSweepOurs, one, dir), "sweep-one", &o)) {
          absl::StrAppend(&why[i], "QEMU reads other contents from our image:\n",
                          o.substr(0, 2000));
        }
      }
    }
    for (size_t i = 0; i < streams.size(); ++i) {
      if (why[i].empty()) continue;
      ++failures_;
      ADD_FAILURE() << why[i] << "\nqcow2-img io said:\n"
                    << ReadFile(dirs[i] + "/ours/out").substr(0, 2000) << "qemu-img check said:\n"
                    << ReadFile(dirs[i] + "/check").substr(0, 2000)
                    << Repro(streams[i], run_seed, first_index + i);
    }
    if (failures_ == 0) fs::remove_all(absl::StrCat(root_, "/b", batch));
  }

  std::string root_;
  std::map<std::string, std::string> templates_;
  int failures_ = 0;
};

TEST_P(Differential, SameContentsAsQemu) {
  const Variant& v = GetParam();
  const uint64_t run_seed = EnvU64("UQ_DIFF_SEED", std::random_device{}());
  const uint64_t count = EnvU64("UQ_DIFF_STREAMS", EnvU64("UQ_LONG", 0) ? 25000 : 300);
  const uint64_t first = EnvU64("UQ_DIFF_FIRST", 0);
  std::cout << "[ seed ] " << v.name << " UQ_DIFF_SEED=" << run_seed << ", " << count
            << " streams from " << first << "\n";
  constexpr uint64_t kBatch = 100;
  int batch = 0;
  for (uint64_t begin = first; begin < first + count && failures_ < 5; begin += kBatch) {
    std::vector<Stream> streams;
    for (uint64_t k = begin; k < std::min(first + count, begin + kBatch); ++k) {
      streams.push_back(StreamMaker(v, run_seed + k).Make());
    }
    ASSERT_NO_FATAL_FAILURE(RunBatch(streams, run_seed, begin, batch++));
  }
  std::cout << "[ done ] " << v.name << ": " << count << " streams, " << failures_ << " failed\n";
}

INSTANTIATE_TEST_SUITE_P(
    Streams, Differential,
    ::testing::Values(Variant{"std64k", 16, false, 3, Backing::kNone},
                      Variant{"std4k_v2", 12, false, 2, Backing::kNone},
                      Variant{"ext32k", 15, true, 3, Backing::kNone},
                      Variant{"ext128k", 17, true, 3, Backing::kNone},
                      Variant{"std64k_qcow2_backing", 16, false, 3, Backing::kQcow2},
                      Variant{"ext64k_raw_backing", 16, true, 3, Backing::kRaw},
                      Variant{"ext16k_qcow2_backing", 14, true, 3, Backing::kQcow2},
                      Variant{"std16k_v2_raw_backing", 14, false, 2, Backing::kRaw}),
    [](const ::testing::TestParamInfo<Variant>& info) { return info.param.name; });

}  // namespace
}  // namespace uq::interop
