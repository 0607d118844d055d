#include "src/io/file_lock.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <string>
#include <thread>

namespace uq::io {
namespace {

class FileLockTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (std::filesystem::temp_directory_path() / "uq_lock_test.XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/image.raw";
    int fd = open(path_.c_str(), O_CREAT | O_RDWR, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(ftruncate(fd, 1 << 20), 0);
    close(fd);
  }
  void TearDown() override {
    for (int fd : fds_) close(fd);
    std::filesystem::remove_all(dir_);
  }
  int OpenFd() {
    int fd = open(path_.c_str(), O_RDWR | O_CLOEXEC);
    EXPECT_GE(fd, 0);
    fds_.push_back(fd);
    return fd;
  }

  std::string dir_;
  std::string path_;
  std::vector<int> fds_;
};

bool IsLockedError(const absl::Status& s) {
  return s.code() == absl::StatusCode::kFailedPrecondition &&
         s.message().find("image is locked by another process") != absl::string_view::npos;
}

TEST_F(FileLockTest, SecondExclusiveLockIsRefused) {
  int a = OpenFd(), b = OpenFd();
  ASSERT_TRUE(LockImage(a, true).ok());
  absl::Status s = LockImage(b, true);
  EXPECT_TRUE(IsLockedError(s)) << s;
  // A reader is refused too: the writer does not share "write".
  s = LockImage(b, false);
  EXPECT_TRUE(IsLockedError(s)) << s;
  // The refused attempt left nothing behind: once `a` unlocks, `b` succeeds.
  ASSERT_TRUE(UnlockImage(a).ok());
  EXPECT_TRUE(LockImage(b, true).ok());
  EXPECT_TRUE(IsLockedError(LockImage(a, false)));
}

TEST_F(FileLockTest, ReadersShareButBlockWriters) {
  int a = OpenFd(), b = OpenFd(), c = OpenFd();
  ASSERT_TRUE(LockImage(a, false).ok());
  ASSERT_TRUE(LockImage(b, false).ok());
  absl::Status s = LockImage(c, true);
  EXPECT_TRUE(IsLockedError(s)) << s;
  EXPECT_NE(s.message().find("write"), absl::string_view::npos) << s;
}

TEST_F(FileLockTest, SameDescriptionCanSwitchModesAndCloseReleases) {
  int a = OpenFd();
  ASSERT_TRUE(LockImage(a, false).ok());
  ASSERT_TRUE(LockImage(a, true).ok());  // upgrade: own locks never conflict
  int dup_a = dup(a);
  ASSERT_GE(dup_a, 0);
  EXPECT_TRUE(LockImage(dup_a, true).ok());  // same open file description
  close(dup_a);
  int b = open(path_.c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(b, 0);
  EXPECT_FALSE(LockImage(b, true).ok());
  close(a);
  fds_.erase(fds_.begin());
  EXPECT_TRUE(LockImage(b, true).ok());  // closing the last fd released it
  close(b);
}

// QEMU compatibility: our writer lock must make qemu-img refuse the image,
// and a running qemu-io must make us refuse it.
TEST_F(FileLockTest, InteroperatesWithQemu) {
  if (access("/usr/bin/qemu-img", X_OK) != 0 || access("/usr/bin/qemu-io", X_OK) != 0) {
    GTEST_SKIP() << "qemu-img / qemu-io not installed";
  }
  // QEMU only unshares writes on format nodes with metadata: use qcow2.
  std::string create = "/usr/bin/qemu-img create -q -f qcow2 '" + path_ + "' 1M";
  ASSERT_EQ(std::system(create.c_str()), 0);
  int a = OpenFd();
  ASSERT_TRUE(LockImage(a, true).ok());
  std::string cmd = "/usr/bin/qemu-img info '" + path_ + "' >/dev/null 2>&1";
  EXPECT_NE(std::system(cmd.c_str()), 0) << "qemu-img opened an image we hold";
  ASSERT_TRUE(UnlockImage(a).ok());
  EXPECT_EQ(std::system(cmd.c_str()), 0);

  // qemu-io keeps the image open read-write while it sleeps.
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    execl("/usr/bin/qemu-io", "qemu-io", "-f", "qcow2", "-c", "sleep 3000", path_.c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  // Wait until qemu-io holds its lock (or give up after ~2.5 s).
  absl::Status s;
  for (int i = 0; i < 50; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    s = LockImage(a, true);
    if (!s.ok()) break;
    ASSERT_TRUE(UnlockImage(a).ok());
  }
  EXPECT_TRUE(IsLockedError(s)) << s;
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(LockImage(a, true).ok());
}

}  // namespace
}  // namespace uq::io
