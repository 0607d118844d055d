// FileWrapper (the forwarding base) and the decorators that only override
// part of it: ReadOnlyFile and AlignedFile.
#include "src/io/file_wrapper.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <random>

#include "src/io/aligned_file.h"
#include "src/io/mem_file.h"
#include "src/io/read_only_file.h"
#include "src/io/run_sync.h"
#include "tests/unit/io/test_util.h"

namespace uq::io {
namespace {

using testing::AllZero;
using testing::Pattern;
using testing::StrictAlignFile;

// Records its own destruction, to tell owning wrappers from borrowing ones.
class TracedFile final : public FileWrapper {
 public:
  TracedFile(BlockFile* base, bool* destroyed) : FileWrapper(base), destroyed_(destroyed) {}
  ~TracedFile() override { *destroyed_ = true; }

 private:
  bool* destroyed_;
};

TEST(FileWrapperTest, ForwardsEveryOperation) {
  MemFile mem;
  FileWrapper w(&mem);
  auto data = Pattern(1, 100);
  EXPECT_EQ(RunSync(nullptr, w.Write(10, data)), 100);
  std::vector<std::byte> back(100);
  EXPECT_EQ(RunSync(nullptr, w.Read(10, back)), 100);
  EXPECT_EQ(back, data);
  EXPECT_EQ(RunSync(nullptr, w.Flush()), 0);
  EXPECT_EQ(RunSync(nullptr, w.Discard(10, 10)), 0);
  EXPECT_EQ(RunSync(nullptr, w.WriteZeroes(20, 10)), 0);
  EXPECT_TRUE(AllZero(mem.data().data() + 10, 20));
  EXPECT_EQ(RunSync(nullptr, w.Truncate(50)), 0);
  EXPECT_EQ(w.size_bytes(), 50u);
  EXPECT_FALSE(w.read_only());
  mem.set_read_only(true);
  EXPECT_TRUE(w.read_only());
  const MemFile::Counters& c = mem.counters();
  EXPECT_EQ(c.reads, 1u);
  EXPECT_EQ(c.writes, 1u);
  EXPECT_EQ(c.flushes, 1u);
  EXPECT_EQ(c.discards, 1u);
  EXPECT_EQ(c.write_zeroes, 1u);
  EXPECT_EQ(c.truncates, 1u);
  EXPECT_EQ(w.base(), &mem);
}

TEST(FileWrapperTest, OwnsOrBorrows) {
  MemFile mem;
  bool destroyed = false;
  {
    TracedFile traced(&mem, &destroyed);
    FileWrapper borrowing(&traced);
  }
  EXPECT_TRUE(destroyed);  // by its own scope, not twice by the wrapper
  destroyed = false;
  { FileWrapper owning(std::make_unique<TracedFile>(&mem, &destroyed)); }
  EXPECT_TRUE(destroyed);
}

TEST(ReadOnlyFileTest, RefusesMutationsBeforeTheBase) {
  MemFile mem(MemFile::Mode::kImmediate, Pattern(2, 64));
  ReadOnlyFile ro(&mem);
  EXPECT_TRUE(ro.read_only());
  std::vector<std::byte> buf(64);
  EXPECT_EQ(RunSync(nullptr, ro.Read(0, buf)), 64);
  EXPECT_EQ(buf, mem.data());
  EXPECT_EQ(RunSync(nullptr, ro.Write(0, buf)), -EROFS);
  EXPECT_EQ(RunSync(nullptr, ro.Discard(0, 8)), -EROFS);
  EXPECT_EQ(RunSync(nullptr, ro.WriteZeroes(0, 8)), -EROFS);
  EXPECT_EQ(RunSync(nullptr, ro.Truncate(8)), -EROFS);
  EXPECT_EQ(RunSync(nullptr, ro.Flush()), 0);
  EXPECT_EQ(ro.size_bytes(), 64u);
  const MemFile::Counters& c = mem.counters();
  EXPECT_EQ(c.writes + c.discards + c.write_zeroes + c.truncates + c.flushes, 0u);
  EXPECT_EQ(mem.data(), Pattern(2, 64));
}

constexpr uint32_t kAlign = 4096;

struct FreeDeleter {
  void operator()(std::byte* p) const { std::free(p); }
};

// AlignedFile over a StrictAlignFile over a MemFile: the strict layer fails
// the test if a misaligned request gets through.
class AlignedFileTest : public ::testing::Test {
 protected:
  AlignedFileTest() : mem_(MemFile::Mode::kImmediate, Pattern(3, 4 * kAlign)) {
    aligned_.emplace(std::make_unique<StrictAlignFile>(&mem_, kAlign), kAlign);
  }
  // A 4 KiB aligned buffer of `n` bytes.
  static std::unique_ptr<std::byte[], FreeDeleter> AlignedBuffer(size_t n) {
    return std::unique_ptr<std::byte[], FreeDeleter>(
        static_cast<std::byte*>(std::aligned_alloc(kAlign, n)));
  }

  MemFile mem_;
  std::optional<AlignedFile> aligned_;
};

TEST_F(AlignedFileTest, AlignedRequestsPassStraightThrough) {
  auto buf = AlignedBuffer(kAlign);
  std::span<std::byte> s(buf.get(), kAlign);
  EXPECT_EQ(RunSync(nullptr, aligned_->Read(kAlign, s)), kAlign);
  EXPECT_EQ(std::memcmp(s.data(), mem_.data().data() + kAlign, kAlign), 0);
  EXPECT_EQ(RunSync(nullptr, aligned_->Write(2 * kAlign, s)), kAlign);
  EXPECT_EQ(aligned_->bounced_ops(), 0u);
  EXPECT_EQ(mem_.counters().bytes_read, kAlign);
}

TEST_F(AlignedFileTest, UnalignedReadReturnsTheExactBytes) {
  const std::vector<std::byte> before = mem_.data();
  std::vector<std::byte> a(100), b(5000);
  iovec v[2] = {{a.data(), a.size()}, {b.data(), b.size()}};
  EXPECT_EQ(RunSync(nullptr, aligned_->ReadV(kAlign - 50, v)), 5100);
  EXPECT_EQ(std::memcmp(a.data(), before.data() + kAlign - 50, 100), 0);
  EXPECT_EQ(std::memcmp(b.data(), before.data() + kAlign + 50, 5000), 0);
  EXPECT_EQ(aligned_->bounced_ops(), 1u);
}

TEST_F(AlignedFileTest, UnalignedWriteKeepsItsNeighbours) {
  std::vector<std::byte> expect = mem_.data();
  auto data = Pattern(4, 6000);
  EXPECT_EQ(RunSync(nullptr, aligned_->Write(kAlign - 7, data)), 6000);
  std::memcpy(expect.data() + kAlign - 7, data.data(), data.size());
  EXPECT_EQ(mem_.data(), expect);
}

TEST_F(AlignedFileTest, ZeroingAndDiscardZeroEdgesAndPassTheMiddle) {
  std::vector<std::byte> expect = mem_.data();
  // Partial head block, one whole block, partial tail block.
  EXPECT_EQ(RunSync(nullptr, aligned_->Discard(kAlign - 10, kAlign + 30)), 0);
  std::memset(expect.data() + kAlign - 10, 0, kAlign + 30);
  EXPECT_EQ(mem_.data(), expect);
  EXPECT_EQ(mem_.counters().discards, 1u);
  // Inside one block: zeroed by read-modify-write, no WriteZeroes reaches the base.
  EXPECT_EQ(RunSync(nullptr, aligned_->WriteZeroes(3 * kAlign + 1, 100)), 0);
  std::memset(expect.data() + 3 * kAlign + 1, 0, 100);
  EXPECT_EQ(mem_.data(), expect);
  EXPECT_EQ(mem_.counters().write_zeroes, 0u);
}

Task<void> WriteInto(BlockFile* f, uint64_t offset, std::span<const std::byte> data,
                     std::optional<int64_t>* result) {
  result->emplace(co_await f->Write(offset, data));
}

// Two read-modify-writes of different bytes of one block, their I/O completed
// in every random order: both updates survive because the second waits for
// the first (an unserialised pair would write back a stale copy of the block).
TEST_F(AlignedFileTest, OverlappingReadModifyWritesAreSerialised) {
  for (uint64_t seed = 0; seed < 50; ++seed) {
    std::mt19937_64 rng(seed);
    std::vector<std::byte> expect = mem_.data();
    auto x = Pattern(seed * 2, 10);
    auto y = Pattern(seed * 2 + 1, 10);
    mem_.set_mode(MemFile::Mode::kDeferred);
    std::optional<int64_t> rx, ry;
    Spawn(WriteInto(&*aligned_, 100, x, &rx));
    Spawn(WriteInto(&*aligned_, 2000, y, &ry));
    mem_.RunRandom(rng);
    mem_.set_mode(MemFile::Mode::kImmediate);
    ASSERT_EQ(rx, 10);
    ASSERT_EQ(ry, 10);
    std::memcpy(expect.data() + 100, x.data(), 10);
    std::memcpy(expect.data() + 2000, y.data(), 10);
    ASSERT_EQ(mem_.data(), expect) << "seed " << seed;
  }
}

}  // namespace
}  // namespace uq::io
