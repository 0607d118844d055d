// Where the engine puts bytes in the host files: compressed clusters that
// share a sector, data clusters in an external data file at their guest
// offsets, whole-cluster writes into new clusters as one contiguous run (told
// to a caller before their data goes out), and file space reserved ahead of
// the allocator on O_DIRECT files.
#include <gtest/gtest.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "format/endian.h"
#include "format/header.h"
#include "format/tables.h"
#include "src/engine/check.h"
#include "src/engine/qcow2_image.h"
#include "src/io/event_loop.h"
#include "src/io/uring_file.h"
#include "tests/engine/test_util.h"

namespace uq::engine {
namespace {

using testing::ExpectClean;
using testing::MakeImage;
using testing::OpenQcow2;
using testing::OpenSync;
using testing::ReadSync;
using testing::WriteSync;

Task<void> ReadTask(Device* d, uint64_t off, std::vector<std::byte>* buf, std::optional<int>* r) {
  iovec v{buf->data(), buf->size()};
  r->emplace(co_await d->Read(off, std::span<const iovec>(&v, 1)));
}

Task<void> CompressedTask(Qcow2Image* img, uint64_t off, const std::vector<std::byte>* buf,
                          std::optional<int>* r) {
  r->emplace(co_await img->WriteCompressed(off, *buf));
}

// Compressed clusters are packed at byte granularity and read back by whole
// sectors, so a read of one reads the sector where the next one starts. A
// compressed store into that sector waits until the read is done: the file
// never sees a write into bytes a read is copying (on a real file the tail
// bytes would be ignored; in the threaded TSan runs it was a data race).
TEST(HostLayoutTest, CompressedStoreWaitsForReadOfTheSectorItStartsIn) {
  auto file = MakeImage(testing::Qcow2Options(1 << 20));
  auto img = OpenQcow2(file.get());
  ASSERT_NE(img, nullptr);
  std::vector<std::byte> a(65536), b(65536);
  for (size_t i = 0; i < a.size(); ++i) {
    a[i] = std::byte("qcow2 "[i % 6]);
    b[i] = std::byte("ublk "[i % 5]);
  }
  ASSERT_EQ(io::RunSync(nullptr, img->WriteCompressed(0, a)), 0);

  file->set_mode(io::MemFile::Mode::kDeferred);
  std::vector<std::byte> got(65536);
  std::optional<int> read_result, store_result;
  Spawn(ReadTask(img.get(), 0, &got, &read_result));
  ASSERT_EQ(file->pending_count(), 1u);  // the compressed bytes (L2 table cached)
  const io::MemFile::PendingOp read = file->pending(0);
  ASSERT_EQ(read.kind, io::OpKind::kRead);
  Spawn(CompressedTask(img.get(), 65536, &b, &store_result));
  // Everything the store issues before the read completes, completed in turn.
  for (size_t i = 1; i < file->pending_count();) {
    const io::MemFile::PendingOp op = file->pending(i);
    ASSERT_FALSE(op.kind == io::OpKind::kWrite &&
                 op.offset_bytes < read.offset_bytes + read.length_bytes &&
                 read.offset_bytes < op.offset_bytes + op.length_bytes)
        << "write [" << op.offset_bytes << ", +" << op.length_bytes << ") during read ["
        << read.offset_bytes << ", +" << read.length_bytes << ")";
    file->RunOne(i);
  }
  EXPECT_FALSE(store_result.has_value());
  file->RunAll();
  ASSERT_EQ(read_result, 0);
  ASSERT_EQ(store_result, 0);
  EXPECT_EQ(got, a);
  file->set_mode(io::MemFile::Mode::kImmediate);
  ASSERT_EQ(ReadSync(*img, 65536, got), 0);
  EXPECT_EQ(got, b);
  ASSERT_TRUE(io::RunSync(nullptr, img->Close()).ok());
  // The case the test is about: the second cluster's bytes start inside the
  // range the first one's read covered.
  const uint64_t l1_offset = format::LoadBE64(&file->data()[40]);
  const uint64_t l2_offset = format::LoadBE64(&file->data()[l1_offset]) & format::kOffsetMask;
  const format::CompressedDescriptor second =
      format::DecodeCompressedDescriptor(format::LoadBE64(&file->data()[l2_offset + 8]), 16);
  EXPECT_GT(second.host_offset, read.offset_bytes);
  EXPECT_LT(second.host_offset, read.offset_bytes + read.length_bytes);
}

// With an external data file a data cluster's host offset is its guest
// offset. An L2 entry naming host offset 0 (valid only for guest cluster 0)
// on another cluster is corruption: reading, writing or discarding it would
// act on guest cluster 0's bytes (the image fuzzer found a discard doing so).
TEST(HostLayoutTest, DataFileEntryAliasingClusterZeroIsCorrupt) {
  format::CreateOptions o = testing::Qcow2Options(1 << 20);
  o.data_file = "data";
  auto file = MakeImage(o);
  io::MemFile data;
  testing::FileSet files;
  files.files = {{"data", &data}};
  const std::vector<std::byte> first(65536, std::byte{0x0a}), fourth(65536, std::byte{0x0d});
  {
    OpenOptions opts;
    opts.opener = files.Opener();
    auto d = OpenSync(file.get(), std::move(opts));
    ASSERT_TRUE(d.ok()) << d.status();
    ASSERT_EQ(WriteSync(**d, 0, first), 0);
    ASSERT_EQ(WriteSync(**d, 3 * 65536, fourth), 0);
    ASSERT_TRUE(io::RunSync(nullptr, (*d)->Close()).ok());
  }
  const uint64_t l1_offset = format::LoadBE64(&file->data()[40]);
  const uint64_t l2_offset = format::LoadBE64(&file->data()[l1_offset]) & format::kOffsetMask;
  format::StoreBE64(&file->data()[l2_offset + 3 * 8], format::kOflagCopied);  // host offset 0

  OpenOptions opts;
  opts.opener = files.Opener();
  auto d = OpenSync(file.get(), std::move(opts));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(io::RunSync(nullptr, (*d)->Discard(3 * 65536, 65536)), -EIO);
  std::vector<std::byte> got(65536);
  EXPECT_EQ(ReadSync(**d, 3 * 65536, got), -EIO);
  EXPECT_EQ(WriteSync(**d, 3 * 65536, fourth), -EIO);
  ASSERT_EQ(ReadSync(**d, 0, got), 0);
  EXPECT_EQ(got, first);
  EXPECT_TRUE(std::equal(first.begin(), first.end(), data.data().begin()));
  (void)io::RunSync(nullptr, (*d)->Close());
  EXPECT_TRUE(format::LoadBE64(&file->data()[format::kHeaderIncompatibleFeaturesAt]) &
              format::kIncompatCorrupt);
}

std::vector<std::byte> Pattern(size_t n, unsigned seed) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = std::byte((i / 512 * 31 + i + seed) & 0xff);
  return v;
}

// A write of whole clusters none of which has a host cluster yet (convert's
// chunks, a guest's streaming write) allocates them as one contiguous run
// and writes the run with one I/O, as qemu's qcow2 driver does; before, each
// cluster was its own write, and convert -O qcow2 waited on 16 of them per
// MiB.
TEST(HostLayoutTest, WholeClusterWriteIntoNewClustersIsOneWrite) {
  auto file = MakeImage(testing::Qcow2Options(16 << 20));
  auto img = OpenQcow2(file.get());
  ASSERT_NE(img, nullptr);
  const std::vector<std::byte> first = Pattern(65536, 1);
  ASSERT_EQ(WriteSync(*img, 0, first), 0);  // marks the image dirty, loads the L2 table
  // Guest clusters 4..19: one unallocated, one zero entry among them.
  ASSERT_EQ(io::RunSync(nullptr, img->WriteZeroes(9 * 65536, 65536, /*may_unmap=*/true)), 0);
  const std::vector<std::byte> run = Pattern(1 << 20, 2);
  file->ResetCounters();
  const uint64_t allocated_before = img->stats().clusters_allocated;
  ASSERT_EQ(WriteSync(*img, 4 * 65536, run), 0);
  EXPECT_EQ(file->counters().writes, 1u);
  EXPECT_EQ(file->counters().bytes_written, run.size());
  EXPECT_EQ(img->stats().clusters_allocated - allocated_before, 16u);
  std::vector<std::byte> got(run.size());
  ASSERT_EQ(ReadSync(*img, 4 * 65536, got), 0);
  EXPECT_EQ(got, run);
  // Over clusters that already hold data the write goes where they are.
  const std::vector<std::byte> again = Pattern(2 * 65536, 3);
  ASSERT_EQ(WriteSync(*img, 0, again), 0);
  std::vector<std::byte> both(again.size());
  ASSERT_EQ(ReadSync(*img, 0, both), 0);
  EXPECT_EQ(both, again);
  ASSERT_TRUE(io::RunSync(nullptr, img->Close()).ok());
  ExpectClean(*file);
}

Task<void> TellingTask(Device* d, uint64_t off, const std::vector<std::byte>* buf,
                       AllocationNotice* allocated, std::optional<int>* r) {
  iovec v{const_cast<std::byte*>(buf->data()), buf->size()};
  r->emplace(co_await d->WriteTelling(off, std::span<const iovec>(&v, 1), false, *allocated));
}

// WriteTelling (convert's in-order writes): a write of whole new clusters
// tells once its host clusters are chosen, while its data write is still
// pending, so the next write can be allocated right after it; a write
// within one cluster tells when it completes.
TEST(HostLayoutTest, WholeClusterWriteTellsWhenAllocatedBeforeItsData) {
  auto file = MakeImage(testing::Qcow2Options(16 << 20));
  auto img = OpenQcow2(file.get());
  ASSERT_NE(img, nullptr);
  ASSERT_EQ(WriteSync(*img, 0, Pattern(65536, 8)), 0);  // dirty bit, L2 table loaded
  file->set_mode(io::MemFile::Mode::kDeferred);
  const std::vector<std::byte> first = Pattern(4 * 65536, 9);
  const std::vector<std::byte> second = Pattern(2 * 65536, 10);
  AllocationNotice first_allocated, second_allocated;
  std::optional<int> first_result, second_result;
  Spawn(TellingTask(img.get(), 4 * 65536, &first, &first_allocated, &first_result));
  EXPECT_TRUE(first_allocated.told());
  EXPECT_FALSE(first_result.has_value());
  ASSERT_EQ(file->pending_count(), 1u);
  const io::MemFile::PendingOp first_data = file->pending(0);
  EXPECT_EQ(first_data.kind, io::OpKind::kWrite);
  EXPECT_EQ(first_data.length_bytes, first.size());
  // The next write, issued now, is placed right behind the first.
  Spawn(TellingTask(img.get(), 8 * 65536, &second, &second_allocated, &second_result));
  EXPECT_TRUE(second_allocated.told());
  ASSERT_EQ(file->pending_count(), 2u);
  EXPECT_EQ(file->pending(1).offset_bytes, first_data.offset_bytes + first.size());
  file->RunAll();
  ASSERT_EQ(first_result, 0);
  ASSERT_EQ(second_result, 0);

  // Inside one cluster: told only when the write is done.
  const std::vector<std::byte> small = Pattern(4096, 11);
  AllocationNotice small_allocated;
  std::optional<int> small_result;
  Spawn(TellingTask(img.get(), 20 * 65536, &small, &small_allocated, &small_result));
  EXPECT_FALSE(small_allocated.told());
  file->RunAll();
  EXPECT_TRUE(small_allocated.told());
  ASSERT_EQ(small_result, 0);

  file->set_mode(io::MemFile::Mode::kImmediate);
  std::vector<std::byte> got(first.size());
  ASSERT_EQ(ReadSync(*img, 4 * 65536, got), 0);
  EXPECT_EQ(got, first);
  got.resize(second.size());
  ASSERT_EQ(ReadSync(*img, 8 * 65536, got), 0);
  EXPECT_EQ(got, second);
  ASSERT_TRUE(io::RunSync(nullptr, img->Close()).ok());
  ExpectClean(*file);
}

// Runs are cut to a quarter of what one refcount block counts, and shorter
// where a refcount block goes: with 512-byte clusters and 64-bit refcounts a
// block counts 64 clusters, so a 64 KiB write (128 clusters) is several
// runs, and the allocator places new refcount blocks between them.
TEST(HostLayoutTest, WholeClusterRunsLongerThanARefcountBlockAreSplit) {
  format::CreateOptions o = testing::Qcow2Options(4 << 20, /*cluster_bits=*/9);
  o.refcount_order = 6;
  auto file = MakeImage(o);
  auto img = OpenQcow2(file.get());
  ASSERT_NE(img, nullptr);
  const std::vector<std::byte> data = Pattern(1 << 20, 4);
  for (uint64_t at = 0; at < data.size(); at += 65536) {
    ASSERT_EQ(WriteSync(*img, at, std::span(data).subspan(at, 65536)), 0) << at;
  }
  std::vector<std::byte> got(data.size());
  ASSERT_EQ(ReadSync(*img, 0, got), 0);
  EXPECT_EQ(got, data);
  ASSERT_TRUE(io::RunSync(nullptr, img->Close()).ok());
  ExpectClean(*file);
  auto reopened = OpenQcow2(file.get());
  ASSERT_NE(reopened, nullptr);
  std::fill(got.begin(), got.end(), std::byte{0});
  ASSERT_EQ(ReadSync(*reopened, 0, got), 0);
  EXPECT_EQ(got, data);
  (void)io::RunSync(nullptr, reopened->Close());
}

// A long write fills the space up to the next refcount block and goes on
// behind it, instead of leaving that space and searching past the block:
// with 4 KiB clusters (a block counts 2048 clusters, 8 MiB) a stream of
// 2 MiB writes left a quarter of the file unused (qemu-img convert of a
// 1 GiB disk: 1.43 GB against QEMU's 1.08 GB).
TEST(HostLayoutTest, LongWritesLeaveNoSpaceBesideRefcountBlocks) {
  auto file = MakeImage(testing::Qcow2Options(64 << 20, /*cluster_bits=*/12));
  auto img = OpenQcow2(file.get());
  ASSERT_NE(img, nullptr);
  constexpr uint64_t kChunk = 2 << 20;
  constexpr uint64_t kData = 40 << 20;  // five blocks' worth of clusters
  std::vector<std::byte> data = Pattern(kData, 12);
  for (uint64_t at = 0; at < kData; at += kChunk) {
    ASSERT_EQ(WriteSync(*img, at, std::span(data).subspan(at, kChunk)), 0) << at;
  }
  ASSERT_TRUE(io::RunSync(nullptr, img->Close()).ok());
  ExpectClean(*file);
  // Data, 20 L2 tables, 6 refcount blocks, the header, L1 and refcount
  // tables: nothing else.
  EXPECT_LE(file->size_bytes(), kData + 32 * 4096);
  auto reopened = OpenQcow2(file.get());
  ASSERT_NE(reopened, nullptr);
  std::vector<std::byte> got(kData);
  ASSERT_EQ(ReadSync(*reopened, 0, got), 0);
  EXPECT_EQ(got, data);
  (void)io::RunSync(nullptr, reopened->Close());
}

// A run whose data write fails gives its clusters back: the request fails,
// no entry points at them, and nothing leaks. (The clusters it takes are
// ones a discard freed, inside the file, where the check counts them.)
TEST(HostLayoutTest, FailedRunWriteGivesItsClustersBack) {
  auto file = MakeImage(testing::Qcow2Options(16 << 20));
  auto img = OpenQcow2(file.get());
  ASSERT_NE(img, nullptr);
  ASSERT_EQ(WriteSync(*img, 0, Pattern(65536, 5)), 0);
  ASSERT_EQ(WriteSync(*img, 8 * 65536, Pattern(4 * 65536, 6)), 0);
  ASSERT_EQ(io::RunSync(nullptr, img->Discard(8 * 65536, 4 * 65536)), 0);
  ASSERT_EQ(io::RunSync(nullptr, img->Flush()), 0);
  file->set_read_only(true);
  EXPECT_EQ(WriteSync(*img, 4 * 65536, Pattern(4 * 65536, 7)), -EROFS);
  file->set_read_only(false);
  std::vector<std::byte> got(4 * 65536);
  ASSERT_EQ(ReadSync(*img, 4 * 65536, got), 0);
  EXPECT_TRUE(std::all_of(got.begin(), got.end(), [](std::byte b) { return b == std::byte{0}; }));
  ASSERT_TRUE(io::RunSync(nullptr, img->Close()).ok());
  ExpectClean(*file);
}

// On a real O_DIRECT file, allocation reserves file space ahead of the
// clusters it hands out (new clusters are then written inside the file, not
// past its end), and a clean close cuts what was not used: the file ends
// where its last cluster does, as qemu-img leaves it.
TEST(HostLayoutTest, ReservesAheadOnARealFileAndTrimsAtClose) {
  char dir[] = "/tmp/uq_reserve_test.XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const std::string path = std::string(dir) + "/image.qcow2";
  {
    auto mem = MakeImage(testing::Qcow2Options(64 << 20));
    std::FILE* out = std::fopen(path.c_str(), "wb");
    ASSERT_NE(out, nullptr);
    ASSERT_EQ(std::fwrite(mem->data().data(), 1, mem->data().size(), out), mem->data().size());
    std::fclose(out);
  }
  auto loop = io::EventLoop::Create(64);
  ASSERT_TRUE(loop.ok()) << loop.status();
  auto file = io::UringFile::Open(loop->get(), path, {.direct = true});
  ASSERT_TRUE(file.ok()) << file.status();
  if (!(*file)->direct()) GTEST_SKIP() << (*file)->open_note();
  io::UringFile* raw = file->get();
  OpenOptions options;
  options.file_alignment_bytes = io::UringFile::kDirectAlignmentBytes;
  auto dev = io::RunSync(loop->get(), OpenImage(std::move(*file), std::move(options)));
  ASSERT_TRUE(dev.ok()) << dev.status();
  std::unique_ptr<std::byte, decltype(&std::free)> data(
      static_cast<std::byte*>(std::aligned_alloc(4096, 65536)), &std::free);
  for (size_t i = 0; i < 65536; ++i) data.get()[i] = std::byte(i * 7 + 1);
  constexpr uint64_t kWritten = 4 << 20;
  for (uint64_t at = 0; at < kWritten; at += 65536) {
    iovec v{data.get(), 65536};
    ASSERT_EQ(io::RunSync(loop->get(), (*dev)->Write(at, std::span<const iovec>(&v, 1), false)), 0);
  }
  const uint64_t open_size = raw->size_bytes();
  ASSERT_TRUE(io::RunSync(loop->get(), (*dev)->Close()).ok());
  const uint64_t closed_size = std::filesystem::file_size(path);
  auto check_file = io::UringFile::Open(loop->get(), path, {.read_only = true});
  ASSERT_TRUE(check_file.ok());
  auto check = io::RunSync(loop->get(), CheckImage(**check_file));
  ASSERT_TRUE(check.ok()) << check.status();
  EXPECT_EQ(check->corruptions, 0u);
  EXPECT_EQ(check->leaks, 0u);
  EXPECT_GE(check->image_end_offset, kWritten);
  // Reserved ahead while open (in steps of at least 1 MiB), cut back to the
  // last cluster in use at close.
  EXPECT_GT(open_size, check->image_end_offset);
  EXPECT_EQ(closed_size, check->image_end_offset);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace uq::engine
