// Image locking between qcow2-img and QEMU (the same byte-range locks):
//  - while qemu-io has an image open for writing, every qcow2-img command
//    that writes it refuses with qemu-img's 'Failed to get "write" lock',
//    every one that reads it refuses with 'Failed to get shared "write"
//    lock' unless given -U, and -U makes the read-only ones work;
//  - while qemu-io has it open read-only, readers work and writers refuse;
//  - while qcow2-img writes an image, qemu-img info refuses it (and info -U
//    works).
// A refusal is one line on stderr and a non-zero exit, and leaves the image
// untouched.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "tests/interop/interop_util.h"

namespace uq::interop {
namespace {

std::string Qcow2Img() {
  const char* env = std::getenv("UQ_QCOW2_IMG");
  return env && *env ? env : QCOW2_IMG_PATH;
}

// A command running in the background (sh -c "exec ..."), killed by its
// process id when the test ends.
class Background {
 public:
  Background(const std::string& dir, const std::string& command) {
    pid_ = fork();
    if (pid_ == 0) {
      const int null = open("/dev/null", O_RDWR);
      dup2(null, 0);
      dup2(null, 1);
      dup2(null, 2);
      const std::string full = "cd " + Quote(dir) + " && exec " + command;
      execl("/bin/sh", "sh", "-c", full.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
  }
  ~Background() {
    if (pid_ <= 0) return;
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  // Reaps the command if it has exited (so the destructor never signals a
  // recycled process id).
  bool running() {
    if (pid_ <= 0) return false;
    if (waitpid(pid_, nullptr, WNOHANG) == 0) return true;
    pid_ = -1;
    return false;
  }

 private:
  pid_t pid_ = -1;
};

class LockTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HaveTool("qemu-img") || !HaveTool("qemu-io")) GTEST_SKIP() << "QEMU tools not installed";
    const RunResult r =
        In("qemu-img create -q -f qcow2 img.qcow2 64M && qemu-io -c 'write -P 0x5a 0 1M' img.qcow2 "
           ">/dev/null && qemu-img create -q -f qcow2 other.qcow2 64M");
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }

  RunResult In(const std::string& command) const {
    return RunCommand("cd " + Quote(dir_.path()) + " && " + command);
  }
  RunResult Ours(const std::string& args) const { return In(Quote(Qcow2Img()) + " " + args); }

  // Starts `command` (which locks the image) in the background and waits
  // until the shell command `probe` sees the lock; nullptr after about 30 s.
  // The probe opens the image too, so a holder that starts while a probe has
  // it open cannot take its lock and exits: it is then started again.
  std::unique_ptr<Background> StartHolder(const std::string& command,
                                          const std::string& probe) const {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (std::chrono::steady_clock::now() < deadline) {
      auto holder = std::make_unique<Background>(dir_.path(), command);
      while (holder->running() && std::chrono::steady_clock::now() < deadline) {
        if (In(probe).exit_code == 0 && holder->running()) return holder;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    }
    return nullptr;
  }

  // `args` must be refused: the exit status, one stderr line naming
  // `lock_words`, and the image bytes unchanged.
  void ExpectRefused(const std::string& args, const std::string& lock_words, int exit_code = 1) {
    SCOPED_TRACE(args);
    const std::string before = ReadFile(dir_.File("img.qcow2"));
    const RunResult r = Ours(args);
    EXPECT_EQ(r.exit_code, exit_code) << r.out << r.err;
    ASSERT_FALSE(r.err.empty());
    EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << "not one line: " << r.err;
    EXPECT_NE(r.err.find(lock_words), std::string::npos) << r.err;
    EXPECT_TRUE(ReadFile(dir_.File("img.qcow2")) == before) << "the held image changed";
  }

  void ExpectWorks(const std::string& args) {
    SCOPED_TRACE(args);
    const RunResult r = Ours(args);
    EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  }

  TempDir dir_;
};

const char kWriteLock[] = "Failed to get \"write\" lock";
const char kSharedLock[] = "Failed to get shared \"write\" lock";

const std::vector<std::string>& WritingCommands() {
  static const std::vector<std::string> commands = {
      "create -q -f qcow2 img.qcow2 1M",
      "create -q -f raw img.qcow2 1M",
      "check -r all img.qcow2",
      "check -r leaks img.qcow2",
      "io -c 'write -P 1 0 4k' img.qcow2",
      "bench -w -c 1 img.qcow2",
      "convert -O qcow2 other.qcow2 img.qcow2",
      "convert -O raw other.qcow2 img.qcow2",
  };
  return commands;
}

TEST_F(LockTest, QemuIoWritingRefusesOurWritersAndLockingReaders) {
  const std::unique_ptr<Background> holder = StartHolder(
      "qemu-io -c 'sleep 60000' img.qcow2", "! qemu-img info img.qcow2 >/dev/null 2>&1");
  ASSERT_NE(holder, nullptr) << "qemu-io took no lock";
  for (const std::string& args : WritingCommands()) ExpectRefused(args, kWriteLock);
  for (const char* args : {"info img.qcow2", "check img.qcow2", "map img.qcow2",
                           "measure -O qcow2 img.qcow2", "convert -O raw img.qcow2 out.raw",
                           "io -r -c 'read 0 4k' img.qcow2", "bench -c 1 img.qcow2"}) {
    ExpectRefused(args, kSharedLock);
  }
  ExpectRefused("compare img.qcow2 other.qcow2", kSharedLock, /*exit_code=*/2);
  ExpectRefused("compare other.qcow2 img.qcow2", kSharedLock, /*exit_code=*/2);
  // -U: read without the lock.
  for (const char* args :
       {"info -U img.qcow2", "check -U img.qcow2", "map -U img.qcow2",
        "compare -U img.qcow2 img.qcow2", "measure -U -O qcow2 img.qcow2",
        "convert -U -O raw img.qcow2 out.raw", "io -r -U -c 'read -P 0x5a 0 4k' img.qcow2",
        "bench -U -c 1 img.qcow2"}) {
    ExpectWorks(args);
  }
  // -U cannot make a writer share.
  ExpectRefused("check -U -r all img.qcow2", "force-share=on can only be used with read-only");
  ExpectRefused("io -U -c 'write 0 4k' img.qcow2",
                "force-share=on can only be used with read-only");
  EXPECT_TRUE(holder->running());
}

TEST_F(LockTest, QemuIoReadingRefusesOurWritersOnly) {
  const std::unique_ptr<Background> holder =
      StartHolder("qemu-io -r -c 'sleep 60000' img.qcow2",
                  "! qemu-io -c 'read 0 512' img.qcow2 >/dev/null 2>&1");
  ASSERT_NE(holder, nullptr) << "qemu-io took no lock";
  for (const std::string& args : WritingCommands()) ExpectRefused(args, kWriteLock);
  for (const char* args :
       {"info img.qcow2", "check img.qcow2", "map img.qcow2", "compare img.qcow2 img.qcow2",
        "measure -O qcow2 img.qcow2", "io -r -c 'read -P 0x5a 0 4k' img.qcow2"}) {
    ExpectWorks(args);
  }
  EXPECT_TRUE(holder->running());
}

TEST_F(LockTest, OurWriterRefusesQemuImg) {
  // A long bench run writes the image until the test kills it. It writes
  // zeros (its default pattern) over bytes that are zero data already, so the
  // image stays byte-identical while it runs: otherwise its first pass, still
  // allocating clusters, could change the file between the two reads of
  // ExpectRefused (it did, on a machine where that pass takes 2 s).
  ASSERT_EQ(In("qemu-io -c 'write -P 0 0 64M' img.qcow2 >/dev/null").exit_code, 0);
  const std::unique_ptr<Background> writer =
      StartHolder(Quote(Qcow2Img()) + " bench -w -q -c 2000000000 -d 1 img.qcow2",
                  "! qemu-img info img.qcow2 >/dev/null 2>&1");
  ASSERT_NE(writer, nullptr) << "qcow2-img bench took no lock";
  RunResult r = In("qemu-img info img.qcow2");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find(kSharedLock), std::string::npos) << r.err;
  r = In("qemu-img check -r all img.qcow2");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find(kWriteLock), std::string::npos) << r.err;
  r = In("qemu-img info -U img.qcow2");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  // And our own readers refuse it too, as a second qemu-img would.
  ExpectRefused("info img.qcow2", kSharedLock);
  EXPECT_TRUE(writer->running());
}

TEST_F(LockTest, OurConvertDestinationRefusesQemuImg) {
  // A destination being written by a long convert: a 16 GiB source with one
  // sector of data in every MiB, so that no chunk can be skipped as zeros.
  ASSERT_EQ(In("qemu-img create -q -f raw big.raw 16G && "
               "qemu-img bench -q -w -f raw -c 16384 -d 64 -s 512 -S 1M --pattern=1 big.raw")
                .exit_code,
            0);
  const std::unique_ptr<Background> writer = StartHolder(
      Quote(Qcow2Img()) + " convert -f raw -O qcow2 -o cluster_size=4k big.raw dst.qcow2",
      "test -e dst.qcow2 && ! qemu-img info dst.qcow2 >/dev/null 2>&1");
  ASSERT_NE(writer, nullptr) << "qcow2-img convert took no lock";
  const RunResult r = In("qemu-img info dst.qcow2");
  EXPECT_NE(r.err.find(kSharedLock), std::string::npos) << r.err;
}

}  // namespace
}  // namespace uq::interop
