// qcow2-img commit -t, -r and rebase -t, -T, -U against qemu-img 7.2, for
// what each changes, on a small chain, with qemu-img doing the same beside
// it: the images opened with O_DIRECT (strace), whether anything is flushed
// (perf), the time a rate limit takes (a lower bound only), and which locks
// are taken; the results must compare equal and check clean. Without strace
// or perf those checks are skipped (and said so).
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "tests/interop/interop_util.h"
#include "tests/interop/qcow2_img_under_test.h"

namespace uq::interop {
namespace {

// perf stat counting flushes: fsync and fdatasync calls, and io_uring fsync
// requests (opcode 3, IORING_OP_FSYNC), in CSV; the output file follows.
constexpr char kPerfStat[] =
    "perf stat -x, -e io_uring:io_uring_submit_req --filter 'opcode == 3' "
    "-e syscalls:sys_enter_fsync -e syscalls:sys_enter_fdatasync -o ";

// The sum of the counts in perf stat's CSV output, or -1 if one is not a
// number ("<not counted>", "<not supported>").
int SumCounts(const std::string& csv) {
  int sum = 0;
  int counts = 0;
  std::istringstream lines(csv);
  for (std::string line; std::getline(lines, line);) {
    if (line.empty() || line[0] == '#') continue;
    const std::string count = line.substr(0, line.find(','));
    if (count.empty() || count.find_first_not_of("0123456789") != std::string::npos) return -1;
    sum += std::stoi(count);
    ++counts;
  }
  return counts == 3 ? sum : -1;
}

// The cache, rate and lock options on a small chain: base <- top (data over
// data, a zero cluster, data past the base's) and `other` to rebase onto.
// Each command runs with qemu-img in a fresh copy q/ and with qcow2-img in o/.
class ChainOptionsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HaveTool("qemu-img") || !HaveTool("qemu-io")) {
      GTEST_SKIP() << "qemu-img or qemu-io not found";
    }
    const RunResult r = In(
        dir_.path(),
        "mkdir src && cd src && qemu-img create -q -f qcow2 base.qcow2 8M && qemu-io -c "
        "'write -P 1 0 3M' -c 'write -P 4 6M 1M' base.qcow2 >/dev/null && qemu-img create -q -f "
        "qcow2 -b base.qcow2 -F qcow2 top.qcow2 && qemu-io -c 'write -P 2 1M 1M' -c 'write -z 6M "
        "64k' -c 'write -P 3 7M 100k' top.qcow2 >/dev/null && qemu-img create -q -f qcow2 "
        "other.qcow2 8M && qemu-io -c 'write -P 5 2M 2M' other.qcow2 >/dev/null");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    strace_ = HaveTool("strace");
    perf_ =
        HaveTool("perf") &&
        SumCounts(
            In(dir_.path(), std::string(kPerfStat) + "perf.csv -- true && cat perf.csv").out) == 0;
    if (!strace_) std::printf("strace not found: O_DIRECT opens not checked\n");
    if (!perf_) std::printf("perf cannot count flushes here: flushes not checked\n");
  }

  std::string Sub(const std::string& name) const { return dir_.File(name); }

  void FreshCopies() const {
    ASSERT_EQ(In(dir_.path(), "rm -rf q o && cp -a src q && cp -a src o").exit_code, 0);
  }

  // Runs `args` with qemu-img in q/ or with qcow2-img in o/ (`ours`), after
  // `wrapper` (a command prefix). It must succeed.
  void Run(bool ours, const std::string& args, const std::string& wrapper = "") const {
    const std::string tool = ours ? Ours() : "qemu-img";
    const RunResult r = In(Sub(ours ? "o" : "q"), wrapper + tool + " " + args);
    ASSERT_EQ(r.exit_code, 0) << tool << " " << args << ": " << r.err;
  }

  // Runs `args` (as Run) under strace and returns the images it opened with
  // O_DIRECT, each as "NAME rw" or "NAME ro".
  std::set<std::string> DirectOpens(bool ours, const std::string& args) const {
    const std::string trace = Sub("strace.out");
    Run(ours, args, "strace -f -qq -e trace=openat -o " + Quote(trace) + " ");
    std::set<std::string> opens;
    std::istringstream lines(ReadFile(trace));
    const std::string call = "openat(AT_FDCWD, \"";
    for (std::string line; std::getline(lines, line);) {
      const size_t at = line.find(call);
      if (at == std::string::npos || line.find(") = -1") != std::string::npos) continue;
      // O_DIRECT, not O_DIRECTORY.
      if (line.find("O_DIRECT|") == std::string::npos &&
          line.find("O_DIRECT)") == std::string::npos) {
        continue;
      }
      const size_t start = at + call.size();
      std::string name = line.substr(start, line.find('"', start) - start);
      if (name.rfind("./", 0) == 0) name = name.substr(2);
      if (name.find('/') != std::string::npos) continue;  // not an image here
      opens.insert(name + (line.find("O_RDWR") != std::string::npos ? " rw" : " ro"));
    }
    return opens;
  }

  // Runs `args` (as Run) under perf stat and returns the flushes it made.
  int Flushes(bool ours, const std::string& args) const {
    const std::string csv = Sub("perf.csv");
    Run(ours, args, std::string(kPerfStat) + Quote(csv) + " -- ");
    const int flushes = SumCounts(ReadFile(csv));
    EXPECT_GE(flushes, 0) << ReadFile(csv);
    return flushes;
  }

  // Runs `args` in fresh copies with each tool and checks that qcow2-img
  // opens the same images with O_DIRECT as qemu-img, and `direct` among
  // them; that it flushes where qemu-img does and not at all when
  // `unsafe`; and that the results compare equal.
  void ExpectLikeQemuImg(const std::string& args, const std::set<std::string>& direct,
                         bool unsafe) const {
    SCOPED_TRACE(args);
    FreshCopies();
    if (strace_) {
      const std::set<std::string> theirs = DirectOpens(false, args);
      const std::set<std::string> ours = DirectOpens(true, args);
      EXPECT_EQ(ours, theirs);
      for (const std::string& d : direct) {
        EXPECT_EQ(ours.count(d), 1u) << d;
      }
      if (direct.empty()) {
        EXPECT_TRUE(ours.empty());
      }
    } else {
      Run(false, args);
      Run(true, args);
    }
    ExpectSameImages();
    if (!perf_) return;
    FreshCopies();
    const int theirs = Flushes(false, args);
    const int ours = Flushes(true, args);
    EXPECT_EQ(theirs == 0, unsafe) << "qemu-img flushed " << theirs << " times";
    EXPECT_EQ(ours == 0, unsafe) << "qcow2-img flushed " << ours << " times";
  }

  // Every image compares equal between q/ and o/ and passes qemu-img check
  // in o/.
  void ExpectSameImages() const {
    for (const char* f : {"base.qcow2", "top.qcow2", "other.qcow2"}) {
      SCOPED_TRACE(f);
      const RunResult compare = RunCommand("qemu-img compare " + Quote(Sub("q") + "/" + f) + " " +
                                           Quote(Sub("o") + "/" + f));
      EXPECT_EQ(compare.exit_code, 0) << compare.out << compare.err;
      const RunResult check = RunCommand("qemu-img check " + Quote(Sub("o") + "/" + f));
      EXPECT_EQ(check.exit_code, 0) << check.out << check.err;
    }
  }

  // Runs `command` in `sub` while qemu-io holds the image `held` there open
  // for writing (it sleeps with the image open; the command starts once the
  // image's locks show in /proc/locks).
  RunResult WhileHeld(const std::string& sub, const std::string& held,
                      const std::string& command) const {
    const std::string image = Quote(held);
    return In(Sub(sub),
              "{ qemu-io -c 'sleep 20000' " + image + " >/dev/null 2>&1 & } ; pid=$!; " +
                  "ino=$(stat -c %i " + image + "); for i in $(seq 100); do " +
                  "grep -q \":$ino \" /proc/locks && break; sleep 0.1; done; sleep 0.2; " +
                  command + "; rc=$?; kill $pid; wait; exit $rc");
  }

  TempDir dir_;
  bool strace_ = false;
  bool perf_ = false;
};

TEST_F(ChainOptionsTest, CommitCacheModes) {
  const std::set<std::string> direct = {"top.qcow2 rw", "base.qcow2 rw", "base.qcow2 ro"};
  ExpectLikeQemuImg("commit -q top.qcow2", {}, false);  // writeback
  ExpectLikeQemuImg("commit -q -t writeback top.qcow2", {}, false);
  ExpectLikeQemuImg("commit -q -t none top.qcow2", direct, false);
  ExpectLikeQemuImg("commit -q -t unsafe top.qcow2", {}, true);
  ExpectLikeQemuImg("commit -q -d -t unsafe top.qcow2", {}, true);
  ExpectLikeQemuImg("commit -q -b base.qcow2 -t none top.qcow2", direct, false);
}

TEST_F(ChainOptionsTest, RebaseCacheModes) {
  const std::string onto = " -b other.qcow2 -F qcow2 top.qcow2";
  ExpectLikeQemuImg("rebase" + onto, {}, false);
  ExpectLikeQemuImg("rebase -t writeback -T writeback" + onto, {}, false);
  // -t: the image and the old backing chain it reads through; -T: the new.
  ExpectLikeQemuImg("rebase -t none" + onto, {"top.qcow2 rw", "base.qcow2 ro"}, false);
  ExpectLikeQemuImg("rebase -T none" + onto, {"other.qcow2 ro"}, false);
  ExpectLikeQemuImg("rebase -t unsafe" + onto, {}, true);
  ExpectLikeQemuImg("rebase -t unsafe -T unsafe" + onto, {}, true);
  ExpectLikeQemuImg("rebase -t none -b '' top.qcow2", {"top.qcow2 rw", "base.qcow2 ro"}, false);
  // -u rewrites the header alone, in the cache mode asked.
  ExpectLikeQemuImg("rebase -u" + onto, {}, false);
  ExpectLikeQemuImg("rebase -u -t none" + onto, {"top.qcow2 rw"}, false);
  ExpectLikeQemuImg("rebase -u -t unsafe" + onto, {}, true);
}

// -r: a commit of D bytes of data at R bytes per second takes D / R seconds
// at least (a lower bound only: a loaded machine may take longer).
TEST_F(ChainOptionsTest, CommitRateLimit) {
  constexpr double kDataBytes = (1 << 20) + (100 << 10);  // top's data; zeros do not count
  constexpr double kRate = 512 << 10;
  FreshCopies();
  const auto start = std::chrono::steady_clock::now();
  Run(true, "commit -q -r 512k top.qcow2");
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("commit -r 512k of %.0f bytes: %.2f s\n", kDataBytes, seconds);
  EXPECT_GE(seconds, 0.95 * kDataBytes / kRate);
  Run(false, "commit -q -r 512k top.qcow2");
  ExpectSameImages();
}

// -U: the new backing file is opened without its lock, so rebase works while
// another process writes it; the image and its old backing file are locked
// still (qemu-img refuses those the same way).
TEST_F(ChainOptionsTest, RebaseForceShare) {
  const std::string onto = " -b other.qcow2 -F qcow2 top.qcow2";
  FreshCopies();
  const std::string before = ReadFile(Sub("o") + "/top.qcow2");
  const RunResult refused = WhileHeld("o", "other.qcow2", Ours() + " rebase" + onto);
  EXPECT_EQ(refused.exit_code, 1) << refused.err;
  EXPECT_EQ(refused.err.find('\n'), refused.err.size() - 1) << refused.err;
  EXPECT_NE(refused.err.find("Failed to get shared \"write\" lock"), std::string::npos)
      << refused.err;
  EXPECT_TRUE(ReadFile(Sub("o") + "/top.qcow2") == before);

  for (const std::string& sub : {std::string("q"), std::string("o")}) {
    const std::string tool = sub == "o" ? Ours() : "qemu-img";
    const RunResult r = WhileHeld(sub, "other.qcow2", tool + " rebase -U" + onto);
    EXPECT_EQ(r.exit_code, 0) << tool << ": " << r.err;
  }
  ExpectSameImages();

  for (const auto& [held, lock] : std::vector<std::pair<std::string, std::string>>{
           {"top.qcow2", "Failed to get \"write\" lock"},
           {"base.qcow2", "Failed to get shared \"write\" lock"}}) {
    SCOPED_TRACE(held);
    FreshCopies();
    const RunResult theirs = WhileHeld("q", held, "qemu-img rebase -U" + onto);
    EXPECT_EQ(theirs.exit_code, 1) << theirs.err;
    const std::string unchanged = ReadFile(Sub("o") + "/top.qcow2");
    const RunResult ours = WhileHeld("o", held, Ours() + " rebase -U" + onto);
    EXPECT_EQ(ours.exit_code, 1) << ours.err;
    EXPECT_EQ(ours.err.find('\n'), ours.err.size() - 1) << ours.err;
    EXPECT_NE(ours.err.find(lock), std::string::npos) << ours.err;
    EXPECT_TRUE(ReadFile(Sub("o") + "/top.qcow2") == unchanged);
  }
}

}  // namespace
}  // namespace uq::interop
