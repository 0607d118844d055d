#include "src/io/uring_file.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>

#include "src/io/run_sync.h"
#include "tests/unit/io/test_util.h"

namespace uq::io {
namespace {

using testing::AllZero;
using testing::Pattern;

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
using AlignedBuf = std::unique_ptr<std::byte, FreeDeleter>;
AlignedBuf AlignedAlloc(size_t n) {
  return AlignedBuf(static_cast<std::byte*>(std::aligned_alloc(4096, n)));
}

class UringFileTest : public ::testing::Test {
 protected:
  virtual std::filesystem::path BaseDir() { return std::filesystem::temp_directory_path(); }
  void SetUp() override {
    std::string tmpl = (BaseDir() / "uq_io_test.XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    auto loop = EventLoop::Create(32);
    ASSERT_TRUE(loop.ok()) << loop.status();
    loop_ = std::move(*loop);
    path_ = dir_ + "/image";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::unique_ptr<UringFile> OpenFile(OpenFlags flags) {
    auto f = UringFile::Open(loop_.get(), path_, flags);
    EXPECT_TRUE(f.ok()) << f.status();
    return f.ok() ? std::move(*f) : nullptr;
  }
  // Writes `bytes` to path_ with plain syscalls (outside the code under test).
  void WriteFileDirectly(const std::vector<std::byte>& bytes) {
    int fd = open(path_.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(pwrite(fd, bytes.data(), bytes.size(), 0), static_cast<ssize_t>(bytes.size()));
    close(fd);
  }
  uint64_t StatSize() {
    struct stat st {};
    EXPECT_EQ(stat(path_.c_str(), &st), 0);
    return static_cast<uint64_t>(st.st_size);
  }
  template <typename T>
  T Run(Task<T> t) {
    return RunSync(loop_.get(), std::move(t));
  }

  std::string dir_;
  std::string path_;
  std::unique_ptr<EventLoop> loop_;
};

TEST_F(UringFileTest, OpenErrors) {
  auto missing = UringFile::Open(loop_.get(), dir_ + "/missing", {});
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound) << missing.status();
  auto ro_create = UringFile::Open(loop_.get(), path_, {.read_only = true, .create = true});
  EXPECT_EQ(ro_create.status().code(), absl::StatusCode::kInvalidArgument);
  auto dir = UringFile::Open(loop_.get(), dir_, {.read_only = true});
  EXPECT_FALSE(dir.ok());
}

TEST_F(UringFileTest, WriteReadRoundTripAndSize) {
  auto f = OpenFile({.create = true});
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->size_bytes(), 0u);
  EXPECT_FALSE(f->read_only());
  auto data = Pattern(1, 10000);
  EXPECT_EQ(Run(f->Write(123, data)), 10000);
  EXPECT_EQ(f->size_bytes(), 10123u);
  EXPECT_EQ(StatSize(), 10123u);
  std::vector<std::byte> back(10000);
  EXPECT_EQ(Run(f->Read(123, back)), 10000);
  EXPECT_EQ(back, data);
  EXPECT_EQ(Run(f->Flush()), 0);
  // Writing inside the file does not change the size.
  EXPECT_EQ(Run(f->Write(0, std::span(data).first(100))), 100);
  EXPECT_EQ(f->size_bytes(), 10123u);
}

TEST_F(UringFileTest, ReopenSeesSizeAndContents) {
  auto data = Pattern(2, 777);
  WriteFileDirectly(data);
  auto f = OpenFile({.read_only = true});
  ASSERT_NE(f, nullptr);
  EXPECT_TRUE(f->read_only());
  EXPECT_EQ(f->size_bytes(), 777u);
  std::vector<std::byte> back(777);
  EXPECT_EQ(Run(f->Read(0, back)), 777);
  EXPECT_EQ(back, data);
  EXPECT_EQ(Run(f->Write(0, data)), -EROFS);
  EXPECT_EQ(Run(f->Discard(0, 1)), -EROFS);
  EXPECT_EQ(Run(f->WriteZeroes(0, 1)), -EROFS);
  EXPECT_EQ(Run(f->Truncate(0)), -EROFS);
  EXPECT_EQ(Run(f->Flush()), 0);
}

TEST_F(UringFileTest, ReadsPastEofAreZeroFilled) {
  auto data = Pattern(3, 100);
  WriteFileDirectly(data);
  auto f = OpenFile({});
  ASSERT_NE(f, nullptr);
  std::vector<std::byte> buf(4096, std::byte{0xee});
  EXPECT_EQ(Run(f->Read(0, buf)), 4096);
  EXPECT_EQ(std::memcmp(buf.data(), data.data(), 100), 0);
  EXPECT_TRUE(AllZero(buf.data() + 100, 4096 - 100));
  std::fill(buf.begin(), buf.end(), std::byte{0xee});
  EXPECT_EQ(Run(f->Read(1 << 20, buf)), 4096);
  EXPECT_TRUE(AllZero(buf.data(), buf.size()));
}

TEST_F(UringFileTest, VectoredIoWithEmptyAndManyEntries) {
  auto f = OpenFile({.create = true});
  ASSERT_NE(f, nullptr);
  // More entries than IOV_MAX (1024) forces chunked submission.
  constexpr size_t kEntries = 1500;
  auto data = Pattern(4, kEntries * 8);
  std::vector<iovec> iov;
  for (size_t i = 0; i < kEntries; ++i) {
    iov.push_back({data.data() + 8 * i, 8});
    if (i % 100 == 0) iov.push_back({nullptr, 0});
  }
  EXPECT_EQ(Run(f->WriteV(4096, iov)), static_cast<int64_t>(data.size()));
  EXPECT_EQ(f->size_bytes(), 4096 + data.size());
  std::vector<std::byte> back(data.size());
  std::vector<iovec> riov;
  for (size_t i = 0; i < kEntries; ++i) riov.push_back({back.data() + 8 * i, 8});
  EXPECT_EQ(Run(f->ReadV(4096, riov)), static_cast<int64_t>(back.size()));
  EXPECT_EQ(back, data);
}

TEST_F(UringFileTest, ShortReadResumesMidIovec) {
  // The file shrinks behind the UringFile's back, so its tracked size is
  // stale: the read comes back short in the middle of the second iovec and
  // must resume from there (then hit EOF and zero-fill).
  auto data = Pattern(5, 10000);
  WriteFileDirectly(data);
  auto f = OpenFile({});
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(truncate(path_.c_str(), 5000), 0);
  std::vector<std::byte> a(3000, std::byte{0xee}), b(3000, std::byte{0xee});
  iovec iov[2] = {{a.data(), a.size()}, {b.data(), b.size()}};
  EXPECT_EQ(Run(f->ReadV(0, iov)), 6000);
  EXPECT_EQ(std::memcmp(a.data(), data.data(), 3000), 0);
  EXPECT_EQ(std::memcmp(b.data(), data.data() + 3000, 2000), 0);
  EXPECT_TRUE(AllZero(b.data() + 2000, 1000));
}

TEST_F(UringFileTest, ShortWriteIsRetriedThenReportsError) {
  // RLIMIT_FSIZE makes the kernel write only up to the limit (short write);
  // the retry then fails with EFBIG, which must be reported, and the size
  // must reflect the bytes that did land.
  auto f = OpenFile({.create = true});
  ASSERT_NE(f, nullptr);
  rlimit old_limit{};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  rlimit limit = old_limit;
  limit.rlim_cur = 6000;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &limit), 0);
  auto data = Pattern(6, 8192);
  int64_t r = Run(f->Write(0, data));
  setrlimit(RLIMIT_FSIZE, &old_limit);
  std::signal(SIGXFSZ, old_handler);
  EXPECT_EQ(r, -EFBIG);
  EXPECT_EQ(f->size_bytes(), 6000u);
  EXPECT_EQ(StatSize(), 6000u);
}

TEST_F(UringFileTest, DiscardReadsZeroKeepsSize) {
  auto data = Pattern(7, 64 * 1024);
  WriteFileDirectly(data);
  auto f = OpenFile({});
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(Run(f->Discard(4096, 8192)), 0);
  EXPECT_EQ(f->size_bytes(), 64u * 1024);
  EXPECT_EQ(StatSize(), 64u * 1024);
  std::vector<std::byte> back(64 * 1024);
  EXPECT_EQ(Run(f->Read(0, back)), 64 * 1024);
  EXPECT_EQ(std::memcmp(back.data(), data.data(), 4096), 0);
  EXPECT_TRUE(AllZero(back.data() + 4096, 8192));
  EXPECT_EQ(std::memcmp(back.data() + 12288, data.data() + 12288, 64 * 1024 - 12288), 0);
  // A discard past EOF changes nothing.
  EXPECT_EQ(Run(f->Discard(1 << 20, 4096)), 0);
  EXPECT_EQ(f->size_bytes(), 64u * 1024);
  EXPECT_EQ(StatSize(), 64u * 1024);
}

TEST_F(UringFileTest, WriteZeroesInsideAndPastEof) {
  auto data = Pattern(8, 16384);
  WriteFileDirectly(data);
  auto f = OpenFile({});
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(Run(f->WriteZeroes(100, 1000)), 0);
  EXPECT_EQ(f->size_bytes(), 16384u);
  // Extends the file.
  EXPECT_EQ(Run(f->WriteZeroes(16000, 10000)), 0);
  EXPECT_EQ(f->size_bytes(), 26000u);
  EXPECT_EQ(StatSize(), 26000u);
  std::vector<std::byte> back(26000, std::byte{0xee});
  EXPECT_EQ(Run(f->Read(0, back)), 26000);
  EXPECT_EQ(std::memcmp(back.data(), data.data(), 100), 0);
  EXPECT_TRUE(AllZero(back.data() + 100, 1000));
  EXPECT_EQ(std::memcmp(back.data() + 1100, data.data() + 1100, 16000 - 1100), 0);
  EXPECT_TRUE(AllZero(back.data() + 16000, 10000));
}

TEST_F(UringFileTest, ReserveKeepsBytesAndExtends) {
  auto data = Pattern(10, 16384);
  WriteFileDirectly(data);
  auto f = OpenFile({.direct = true});
  ASSERT_NE(f, nullptr);
  if (!f->direct()) GTEST_SKIP() << f->open_note();
  // Over existing bytes and past the end: nothing already there changes.
  ASSERT_EQ(Run(f->Reserve(8192, 1 << 20)), 0);
  EXPECT_EQ(f->size_bytes(), 8192u + (1 << 20));
  EXPECT_EQ(StatSize(), 8192u + (1 << 20));
  struct stat st {};
  ASSERT_EQ(stat(path_.c_str(), &st), 0);
  EXPECT_GE(static_cast<uint64_t>(st.st_blocks) * 512, uint64_t{1} << 20);  // allocated
  AlignedBuf buf = AlignedAlloc(32768);
  std::memset(buf.get(), 0xee, 32768);
  EXPECT_EQ(Run(f->Read(0, std::span(buf.get(), 32768))), 32768);
  EXPECT_EQ(std::memcmp(buf.get(), data.data(), data.size()), 0);
  EXPECT_TRUE(AllZero(buf.get() + 16384, 16384));
  // Inside the file: no change at all.
  EXPECT_EQ(Run(f->Reserve(0, 4096)), 0);
  EXPECT_EQ(f->size_bytes(), 8192u + (1 << 20));
}

// Buffered files do not reserve: writes past their end cost little there,
// and on tmpfs the reserved pages would be memory.
TEST_F(UringFileTest, ReserveOnlyForDirectIo) {
  WriteFileDirectly(Pattern(12, 4096));
  auto f = OpenFile({});
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(Run(f->Reserve(0, 1 << 20)), -EOPNOTSUPP);
  EXPECT_EQ(StatSize(), 4096u);
}

TEST_F(UringFileTest, ReserveRefusedReadOnly) {
  WriteFileDirectly(Pattern(11, 4096));
  auto f = OpenFile({.read_only = true});
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(Run(f->Reserve(0, 1 << 20)), -EROFS);
  EXPECT_EQ(StatSize(), 4096u);
}

TEST_F(UringFileTest, TruncateShrinksAndGrows) {
  auto f = OpenFile({.create = true});
  ASSERT_NE(f, nullptr);
  auto data = Pattern(9, 8192);
  ASSERT_EQ(Run(f->Write(0, data)), 8192);
  EXPECT_EQ(Run(f->Truncate(1000)), 0);
  EXPECT_EQ(f->size_bytes(), 1000u);
  EXPECT_EQ(StatSize(), 1000u);
  EXPECT_EQ(Run(f->Truncate(1 << 20)), 0);
  EXPECT_EQ(f->size_bytes(), 1u << 20);
  EXPECT_EQ(StatSize(), 1u << 20);
  std::vector<std::byte> back(2000);
  EXPECT_EQ(Run(f->Read(0, back)), 2000);
  EXPECT_EQ(std::memcmp(back.data(), data.data(), 1000), 0);
  EXPECT_TRUE(AllZero(back.data() + 1000, 1000));  // the truncated tail stays gone
}

TEST_F(UringFileTest, DirectIoAlignedRoundTripAndShortFile) {
  auto data = Pattern(10, 5000);  // not a multiple of the sector size
  WriteFileDirectly(data);
  auto f = OpenFile({.direct = true});
  ASSERT_NE(f, nullptr);
  if (!f->direct()) GTEST_SKIP() << f->open_note();
  EXPECT_EQ(f->alignment_bytes(), 4096u);
  EXPECT_TRUE(f->open_note().empty());

  // Read spanning EOF: the kernel returns 5000 bytes, the rest is zeros.
  AlignedBuf buf = AlignedAlloc(8192);
  std::memset(buf.get(), 0xee, 8192);
  EXPECT_EQ(Run(f->Read(0, std::span(buf.get(), 8192))), 8192);
  EXPECT_EQ(std::memcmp(buf.get(), data.data(), 5000), 0);
  EXPECT_TRUE(AllZero(buf.get() + 5000, 8192 - 5000));

  auto block = Pattern(11, 8192);
  std::memcpy(buf.get(), block.data(), 8192);
  EXPECT_EQ(Run(f->Write(8192, std::span(buf.get(), 8192))), 8192);
  EXPECT_EQ(f->size_bytes(), 16384u);
  std::memset(buf.get(), 0, 8192);
  EXPECT_EQ(Run(f->Read(8192, std::span(buf.get(), 8192))), 8192);
  EXPECT_EQ(std::memcmp(buf.get(), block.data(), 8192), 0);
  EXPECT_EQ(Run(f->Flush()), 0);

  // Misaligned buffers are the caller's bug; the kernel says EINVAL.
  EXPECT_EQ(Run(f->Read(0, std::span(buf.get() + 1, 4096))), -EINVAL);
}

TEST_F(UringFileTest, ManyConcurrentOpsOnOneLoop) {
  // 128 requests in flight on a 32-entry ring: exercises SQ-full submission
  // and CQ overflow handling.
  auto f = OpenFile({.create = true});
  ASSERT_NE(f, nullptr);
  constexpr int kOps = 128;
  constexpr size_t kBlock = 4096;
  std::vector<std::vector<std::byte>> bufs;
  for (int i = 0; i < kOps; ++i) bufs.push_back(Pattern(100 + i, kBlock));
  std::vector<Task<int64_t>> writes;
  // Interleave so completions are not in offset order.
  for (int i = 0; i < kOps; ++i) {
    int block = (i * 37) % kOps;
    writes.push_back(f->Write(block * kBlock, bufs[block]));
  }
  auto wr = Run(WhenAll(std::move(writes)));
  for (int64_t r : wr) ASSERT_EQ(r, static_cast<int64_t>(kBlock));
  EXPECT_EQ(f->size_bytes(), kOps * kBlock);
  EXPECT_EQ(loop_->in_flight(), 0u);

  std::vector<std::vector<std::byte>> back(kOps, std::vector<std::byte>(kBlock));
  std::vector<Task<int64_t>> reads;
  for (int i = 0; i < kOps; ++i) reads.push_back(f->Read(i * kBlock, back[i]));
  auto rr = Run(WhenAll(std::move(reads)));
  for (int i = 0; i < kOps; ++i) {
    ASSERT_EQ(rr[i], static_cast<int64_t>(kBlock)) << i;
    ASSERT_EQ(back[i], bufs[i]) << i;
  }
}

// tmpfs has no FALLOC_FL_ZERO_RANGE: WriteZeroes and Discard must fall back
// and still read as zero with the right size.
class UringFileTmpfsTest : public UringFileTest {
 protected:
  std::filesystem::path BaseDir() override { return "/dev/shm"; }
  void SetUp() override {
    if (!std::filesystem::is_directory("/dev/shm")) GTEST_SKIP() << "no /dev/shm";
    UringFileTest::SetUp();
  }
};

TEST_F(UringFileTmpfsTest, ZeroesAndDiscardFallBack) {
  auto data = Pattern(12, 16384);
  WriteFileDirectly(data);
  auto f = OpenFile({});
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(Run(f->WriteZeroes(100, 1000)), 0);
  EXPECT_EQ(Run(f->WriteZeroes(16000, 10000)), 0);
  EXPECT_EQ(Run(f->Discard(8192, 4096)), 0);
  EXPECT_EQ(f->size_bytes(), 26000u);
  EXPECT_EQ(StatSize(), 26000u);
  std::vector<std::byte> back(26000, std::byte{0xee});
  EXPECT_EQ(Run(f->Read(0, back)), 26000);
  std::vector<std::byte> expect = data;
  expect.resize(26000);
  std::memset(expect.data() + 100, 0, 1000);
  std::memset(expect.data() + 8192, 0, 4096);
  std::memset(expect.data() + 16000, 0, 384);
  EXPECT_EQ(back, expect);
  // Repeat now that the unsupported mode is remembered.
  EXPECT_EQ(Run(f->WriteZeroes(0, 50)), 0);
  EXPECT_EQ(Run(f->Read(0, back)), 26000);
  EXPECT_TRUE(AllZero(back.data(), 50));
  EXPECT_EQ(back[50], data[50]);
}

}  // namespace
}  // namespace uq::io
