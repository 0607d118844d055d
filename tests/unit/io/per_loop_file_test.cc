// PerLoopFile and UringFile::Clone: one file served from several event loops
// on several threads, each through its own descriptor and ring; and
// AlignedFile shared by those threads.
#include "src/io/per_loop_file.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "src/io/aligned_file.h"
#include "src/io/run_sync.h"
#include "tests/unit/io/test_util.h"

namespace uq::io {
namespace {

using testing::AllZero;
using testing::Pattern;

class PerLoopFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (std::filesystem::temp_directory_path() / "uq_plf.XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/f";
    for (auto& l : loops_) {
      auto loop = EventLoop::Create(64);
      ASSERT_TRUE(loop.ok()) << loop.status();
      l = std::move(*loop);
    }
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::unique_ptr<UringFile> OpenFirst() {
    OpenFlags f;
    f.create = true;
    auto file = UringFile::Open(loops_[0].get(), path_, f);
    EXPECT_TRUE(file.ok()) << file.status();
    return file.ok() ? std::move(*file) : nullptr;
  }
  std::vector<EventLoop*> Loops() { return {loops_[0].get(), loops_[1].get()}; }

  std::string dir_, path_;
  std::unique_ptr<EventLoop> loops_[2];
};

TEST_F(PerLoopFileTest, ClonesShareTheSizeAndOwnTheirDescriptor) {
  std::unique_ptr<UringFile> a = OpenFirst();
  ASSERT_NE(a, nullptr);
  auto b = a->Clone(loops_[1].get());
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_NE((*b)->fd(), a->fd());
  EXPECT_EQ((*b)->loop(), loops_[1].get());

  // A write past the end through one clone is the size of both.
  std::vector<std::byte> data = Pattern(1, 8192);
  ASSERT_EQ(RunSync(loops_[1].get(), (*b)->Write(1 << 20, data)), 8192);
  EXPECT_EQ(a->size_bytes(), (1u << 20) + 8192);
  // So a discard through the other clone sees the range as inside the file.
  ASSERT_EQ(RunSync(loops_[0].get(), a->Discard(1 << 20, 8192)), 0);
  std::vector<std::byte> back(8192);
  ASSERT_EQ(RunSync(loops_[1].get(), (*b)->Read(1 << 20, back)), 8192);
  EXPECT_TRUE(AllZero(back.data(), back.size()));
  // Truncate through one clone is seen by the other.
  ASSERT_EQ(RunSync(loops_[1].get(), (*b)->Truncate(4096)), 0);
  EXPECT_EQ(a->size_bytes(), 4096u);
}

// Each thread's operations go to its own loop: RunSync on that loop aborts
// ("nothing in flight") if an operation went to the other loop's ring.
TEST_F(PerLoopFileTest, EachThreadUsesItsOwnLoop) {
  auto file = PerLoopFile::Create(OpenFirst(), Loops());
  ASSERT_TRUE(file.ok()) << file.status();
  constexpr int kBlocks = 200;
  auto worker = [&](int t) {
    loops_[t]->MakeCurrent();
    for (int i = 0; i < kBlocks; ++i) {
      std::vector<std::byte> data = Pattern(t * 1000 + i, 4096);
      uint64_t off = (uint64_t{2} * i + t) * 4096;
      EXPECT_EQ(RunSync(loops_[t].get(), (*file)->Write(off, data)), 4096);
    }
    EXPECT_EQ(RunSync(loops_[t].get(), (*file)->Flush()), 0);
    Executor::SetCurrent(nullptr);
  };
  std::thread t0(worker, 0), t1(worker, 1);
  t0.join();
  t1.join();
  EXPECT_EQ((*file)->size_bytes(), uint64_t{2} * kBlocks * 4096);
  int fd = ::open(path_.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  for (int i = 0; i < 2 * kBlocks; ++i) {
    std::vector<std::byte> back(4096);
    ASSERT_EQ(::pread(fd, back.data(), 4096, i * 4096), 4096);
    EXPECT_EQ(back, Pattern((i % 2) * 1000 + i / 2, 4096)) << "block " << i;
  }
  ::close(fd);
}

// Two threads write alternate 512-byte sectors of the same 4 KiB blocks
// through one AlignedFile: every write is a read-modify-write of a block the
// other thread is writing too. Without serialisation across threads one
// thread's sector would be lost.
TEST_F(PerLoopFileTest, AlignedFileSerialisesReadModifyWritesAcrossThreads) {
  auto spread = PerLoopFile::Create(OpenFirst(), Loops());
  ASSERT_TRUE(spread.ok()) << spread.status();
  AlignedFile file(std::move(*spread), 4096);
  constexpr int kSectors = 8 * 64;  // 64 blocks of 8 sectors
  auto worker = [&](int t) {
    loops_[t]->MakeCurrent();
    // Several writes in flight at once, so parked writes are woken by the
    // other thread too.
    for (int round = 0; round < 4; ++round) {
      std::vector<std::vector<std::byte>> bufs;
      std::vector<Task<int64_t>> writes;
      for (int s = t; s < kSectors; s += 2) bufs.push_back(Pattern(round * 10000 + s, 512));
      for (size_t k = 0; k < bufs.size(); ++k) {
        writes.push_back(file.Write((2 * k + t) * 512, bufs[k]));
      }
      for (int64_t r : RunSync(loops_[t].get(), WhenAll(std::move(writes)))) EXPECT_EQ(r, 512);
    }
    Executor::SetCurrent(nullptr);
  };
  std::thread t0(worker, 0), t1(worker, 1);
  t0.join();
  t1.join();
  EXPECT_GT(file.bounced_ops(), 0u);
  int fd = ::open(path_.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  for (int s = 0; s < kSectors; ++s) {
    std::vector<std::byte> back(512);
    ASSERT_EQ(::pread(fd, back.data(), 512, s * 512), 512);
    EXPECT_EQ(back, Pattern(3 * 10000 + s, 512)) << "sector " << s;
  }
  ::close(fd);
}

}  // namespace
}  // namespace uq::io
