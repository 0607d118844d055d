// Targeted engine tests: concurrency, header bits, corruption handling
// (codec tests: tests/unit/engine/codec_test.cc).
#include "src/engine/qcow2_image.h"

#include <gtest/gtest.h>

#include <optional>
#include <random>

#include "format/endian.h"
#include "src/engine/check.h"
#include "tests/engine/test_util.h"

namespace uq::engine {
namespace {

using testing::MakeImage;
using testing::OpenQcow2;
using testing::OpenSync;
using testing::ReadSync;
using testing::WriteSync;

Task<void> WriteTask(Device* d, uint64_t off, std::vector<std::byte>* buf, std::optional<int>* r) {
  iovec v{buf->data(), buf->size()};
  r->emplace(co_await d->Write(off, std::span<const iovec>(&v, 1), false));
}

TEST(Qcow2ImageTest, ConcurrentWritesToOneUnallocatedClusterAllocateOnce) {
  auto file = MakeImage(testing::Qcow2Options(4 << 20));
  auto img = OpenQcow2(file.get());
  ASSERT_NE(img, nullptr);
  std::vector<std::byte> first(512, std::byte{1});
  ASSERT_EQ(WriteSync(*img, 0, first), 0);  // allocates the L2 table too
  const uint64_t before = img->stats().clusters_allocated;

  file->set_mode(io::MemFile::Mode::kDeferred);
  std::vector<std::byte> a(4096, std::byte{0xaa}), b(4096, std::byte{0xbb});
  std::optional<int> ra, rb;
  Spawn(WriteTask(img.get(), 65536 * 3, &a, &ra));
  Spawn(WriteTask(img.get(), 65536 * 3 + 32768, &b, &rb));
  std::mt19937_64 rng(1);
  file->RunRandom(rng);
  ASSERT_EQ(ra, 0);
  ASSERT_EQ(rb, 0);
  file->set_mode(io::MemFile::Mode::kImmediate);
  EXPECT_EQ(img->stats().clusters_allocated - before, 1u);
  std::vector<std::byte> got(65536);
  ASSERT_EQ(ReadSync(*img, 65536 * 3, got), 0);
  EXPECT_EQ(got[0], std::byte{0xaa});
  EXPECT_EQ(got[32768], std::byte{0xbb});
  EXPECT_EQ(got[8192], std::byte{0});
  ASSERT_TRUE(io::RunSync(nullptr, img->Close()).ok());
  testing::ExpectClean(*file);
}

TEST(Qcow2ImageTest, QueueDepth128InFlight) {
  auto file = MakeImage(testing::Qcow2Options(64 << 20));
  auto img = OpenQcow2(file.get());
  ASSERT_NE(img, nullptr);
  file->set_mode(io::MemFile::Mode::kDeferred);
  constexpr int kDepth = 128;
  std::vector<std::vector<std::byte>> bufs(kDepth);
  std::vector<std::optional<int>> results(kDepth);
  for (int i = 0; i < kDepth; ++i) {
    bufs[i].assign(8192, std::byte(i + 1));
    // Pairs of requests share a cluster.
    Spawn(
        WriteTask(img.get(), uint64_t(i / 2) * 65536 * 5 + (i % 2) * 16384, &bufs[i], &results[i]));
  }
  std::mt19937_64 rng(2);
  size_t max_pending = 0;
  while (file->pending_count() > 0) {
    max_pending = std::max(max_pending, file->pending_count());
    file->RunRandomOne(rng);
  }
  // The second write of each pair waits for its cluster's allocation.
  EXPECT_GE(max_pending, 64u) << "requests must really be in flight together";
  for (int i = 0; i < kDepth; ++i) ASSERT_EQ(results[i], 0) << i;
  file->set_mode(io::MemFile::Mode::kImmediate);
  for (int i = 0; i < kDepth; ++i) {
    std::vector<std::byte> got(8192);
    ASSERT_EQ(ReadSync(*img, uint64_t(i / 2) * 65536 * 5 + (i % 2) * 16384, got), 0);
    ASSERT_EQ(got, bufs[i]) << i;
  }
  ASSERT_TRUE(io::RunSync(nullptr, img->Close()).ok());
}

TEST(Qcow2ImageTest, ReadOnlyRejectsWrites) {
  auto file = MakeImage(testing::Qcow2Options(1 << 20));
  OpenOptions o;
  o.read_only = true;
  auto img = OpenQcow2(file.get(), o);
  ASSERT_NE(img, nullptr);
  std::vector<std::byte> buf(512);
  EXPECT_EQ(WriteSync(*img, 0, buf), -EROFS);
  EXPECT_EQ(io::RunSync(nullptr, img->Discard(0, 512)), -EROFS);
  EXPECT_EQ(ReadSync(*img, 0, buf), 0);
}

TEST(Qcow2ImageTest, RejectsMisalignedAndOutOfRange) {
  auto file = MakeImage(testing::Qcow2Options(1 << 20));
  auto img = OpenQcow2(file.get());
  ASSERT_NE(img, nullptr);
  std::vector<std::byte> buf(512);
  EXPECT_EQ(ReadSync(*img, 100, buf), -EINVAL);
  EXPECT_EQ(ReadSync(*img, 1 << 20, buf), -EINVAL);
  EXPECT_EQ(WriteSync(*img, (1 << 20) - 256, std::span(buf).first(256)), -EINVAL);
}

TEST(Qcow2ImageTest, UnknownAutoclearBitsClearedOnWritableOpenOnly) {
  auto file = MakeImage(testing::Qcow2Options(1 << 20));
  file->data()[95] = std::byte{0x20};  // autoclear bit 5 (unknown)
  {
    OpenOptions o;
    o.read_only = true;
    auto img = OpenQcow2(file.get(), o);
    ASSERT_NE(img, nullptr);
    EXPECT_EQ(file->data()[95], std::byte{0x20});
  }
  auto img = OpenQcow2(file.get());
  ASSERT_NE(img, nullptr);
  EXPECT_EQ(file->data()[95], std::byte{0});
}

TEST(Qcow2ImageTest, LazyRefcountsDirtyBitLifecycle) {
  auto file = MakeImage(testing::Qcow2Options(1 << 20, 16, true));
  auto dirty = [&] { return (static_cast<uint8_t>(file->data()[79]) & 1) != 0; };
  auto img = OpenQcow2(file.get());
  ASSERT_NE(img, nullptr);
  EXPECT_FALSE(dirty());
  std::vector<std::byte> buf(4096, std::byte{9});
  ASSERT_EQ(WriteSync(*img, 0, buf), 0);
  EXPECT_TRUE(dirty()) << "set before the first write's metadata";
  ASSERT_TRUE(io::RunSync(nullptr, img->Close()).ok());
  EXPECT_FALSE(dirty()) << "cleared by a clean close";
}

TEST(Qcow2ImageTest, CorruptL2EntryFailsRequestAndMarksImageCorrupt) {
  auto file = MakeImage(testing::Qcow2Options(1 << 20));
  uint64_t l2_offset = 0;
  {
    auto img = OpenQcow2(file.get());
    ASSERT_NE(img, nullptr);
    std::vector<std::byte> buf(512, std::byte{1});
    ASSERT_EQ(WriteSync(*img, 0, buf), 0);
    ASSERT_TRUE(io::RunSync(nullptr, img->Close()).ok());
    const uint64_t l1_offset = format::LoadBE64(&file->data()[40]);
    l2_offset = format::LoadBE64(&file->data()[l1_offset]) & format::kOffsetMask;
  }
  // Reserved bits 1..8 set in guest cluster 0's L2 entry.
  file->data()[l2_offset + 7] |= std::byte{0x02};
  auto img = OpenQcow2(file.get());
  ASSERT_NE(img, nullptr);
  std::vector<std::byte> buf(512);
  EXPECT_EQ(ReadSync(*img, 0, buf), -EIO);
  EXPECT_TRUE(img->corrupt());
  EXPECT_TRUE(static_cast<uint8_t>(file->data()[79]) & 2) << "corrupt bit written";
  EXPECT_EQ(WriteSync(*img, 65536, buf), -EIO) << "no writes to a corrupt image";
  EXPECT_EQ(ReadSync(*img, 65536, buf), 0) << "other clusters stay readable";
}

TEST(Qcow2ImageTest, IncompressibleClusterStoredUncompressed) {
  auto file = MakeImage(testing::Qcow2Options(1 << 20));
  auto img = OpenQcow2(file.get());
  ASSERT_NE(img, nullptr);
  std::vector<std::byte> noise(65536);
  std::mt19937_64 rng(3);
  for (auto& b : noise) b = std::byte(rng() & 0xff);
  std::vector<std::byte> text(65536);
  for (size_t i = 0; i < text.size(); ++i) text[i] = std::byte("qcow2 "[i % 6]);
  ASSERT_EQ(io::RunSync(nullptr, img->WriteCompressed(0, noise)), 0);
  ASSERT_EQ(io::RunSync(nullptr, img->WriteCompressed(65536, text)), 0);
  ASSERT_EQ(io::RunSync(nullptr, img->Flush()), 0);
  const uint64_t l1_offset = format::LoadBE64(&file->data()[40]);
  const uint64_t l2_offset = format::LoadBE64(&file->data()[l1_offset]) & format::kOffsetMask;
  EXPECT_FALSE(format::LoadBE64(&file->data()[l2_offset]) & format::kOflagCompressed);
  EXPECT_TRUE(format::LoadBE64(&file->data()[l2_offset + 8]) & format::kOflagCompressed);
  std::vector<std::byte> got(65536);
  ASSERT_EQ(ReadSync(*img, 0, got), 0);
  EXPECT_EQ(got, noise);
  ASSERT_EQ(ReadSync(*img, 65536, got), 0);
  EXPECT_EQ(got, text);
  ASSERT_TRUE(io::RunSync(nullptr, img->Close()).ok());
}

// Write-zeroes that starts in an unallocated subcluster and ends partway into
// an allocated one must zero the allocated part too (it once skipped the
// last, partly covered subcluster when checking whether the range already
// read as zero). 128 KiB and 64 KiB clusters, as reported.
TEST(Qcow2ImageTest, WriteZeroesIntoPartlyCoveredAllocatedSubcluster) {
  struct Case {
    uint32_t cluster_bits;
    uint64_t zero_offset;
    uint64_t zero_bytes;
  };
  for (const Case& c : {Case{17, 449536, 4096}, Case{16, 450048, 2048}}) {
    SCOPED_TRACE(c.cluster_bits);
    format::CreateOptions o = testing::Qcow2Options(1 << 20, c.cluster_bits);
    o.extended_l2 = true;
    auto file = MakeImage(o);
    auto img = OpenQcow2(file.get());
    ASSERT_NE(img, nullptr);
    std::vector<std::byte> data(4096, std::byte{0x82});
    ASSERT_EQ(WriteSync(*img, 450560, data), 0);
    ASSERT_EQ(io::RunSync(nullptr, img->WriteZeroes(c.zero_offset, c.zero_bytes, false)), 0);
    std::vector<std::byte> back(450560 + 4096 - c.zero_offset);
    ASSERT_EQ(ReadSync(*img, c.zero_offset, back), 0);
    for (uint64_t i = 0; i < back.size(); ++i) {
      const std::byte want = i < c.zero_bytes ? std::byte{0} : std::byte{0x82};
      ASSERT_EQ(back[i], want) << "byte " << c.zero_offset + i;
    }
    ASSERT_TRUE(io::RunSync(nullptr, img->Close()).ok());
  }
}

// MakeEmpty (qemu-img commit's emptying): every cluster, data, zero
// (allocated or not), compressed or partly written, becomes unallocated and
// its host cluster is freed, in v2, v3 and extended L2 images alike.
TEST(Qcow2ImageTest, MakeEmptyUnallocatesEveryCluster) {
  struct Case {
    uint32_t version;
    bool extended_l2;
  };
  for (const Case& c : {Case{3, false}, Case{2, false}, Case{3, true}}) {
    SCOPED_TRACE(::testing::Message() << "v" << c.version << " extended_l2 " << c.extended_l2);
    constexpr uint64_t kCluster = 64 << 10;
    format::CreateOptions o = testing::Qcow2Options(4 << 20);
    o.version = c.version;
    o.extended_l2 = c.extended_l2;
    auto file = MakeImage(o);
    auto img = OpenQcow2(file.get());
    ASSERT_NE(img, nullptr);
    std::vector<std::byte> data(3 * kCluster + 4096, std::byte{0x6b});
    ASSERT_EQ(WriteSync(*img, kCluster, data), 0);
    ASSERT_EQ(WriteSync(*img, 50 * kCluster - 4096, std::span(data).first(4096)), 0);
    ASSERT_EQ(io::RunSync(nullptr, img->WriteZeroes(2 * kCluster, kCluster, false)), 0);
    std::vector<std::byte> cluster(kCluster, std::byte{0x11});
    ASSERT_EQ(io::RunSync(nullptr, img->WriteCompressed(10 * kCluster, cluster)), 0);
    ASSERT_EQ(io::RunSync(nullptr, img->MakeEmpty()), 0);
    std::vector<std::byte> back(4 << 20, std::byte{1});
    ASSERT_EQ(ReadSync(*img, 0, back), 0);
    for (uint64_t i = 0; i < back.size(); ++i) ASSERT_EQ(back[i], std::byte{0}) << "byte " << i;
    ASSERT_TRUE(io::RunSync(nullptr, img->Close()).ok());
    auto check = io::RunSync(nullptr, CheckImage(*file));
    ASSERT_TRUE(check.ok()) << check.status();
    EXPECT_EQ(check->corruptions, 0u);
    EXPECT_EQ(check->leaks, 0u);
    EXPECT_EQ(check->allocated_clusters, 0u);
  }
}

// An allocating 4 KiB write writes its 4 KiB, not a cluster of zeros around
// it: a fresh cluster (past the end of the file) already reads as zero, and a
// reused one is zeroed with one write-zeroes (fallocate) first.
TEST(Qcow2ImageTest, AllocatingWriteWritesOnlyTheRequest) {
  auto file = MakeImage(testing::Qcow2Options(4 << 20));
  auto img = OpenQcow2(file.get());
  ASSERT_NE(img, nullptr);
  constexpr uint64_t kCluster = 64 << 10;
  std::vector<std::byte> data(4096, std::byte{0x5a});
  ASSERT_EQ(WriteSync(*img, 0, data), 0);  // the L2 table exists from here on
  std::vector<std::byte> old(kCluster, std::byte{0x77});
  ASSERT_EQ(WriteSync(*img, 5 * kCluster, old), 0);
  ASSERT_EQ(io::RunSync(nullptr, img->Flush()), 0);

  file->ResetCounters();
  ASSERT_EQ(WriteSync(*img, 7 * kCluster + 8192, data), 0);  // fresh cluster
  EXPECT_EQ(file->counters().writes, 1u);
  EXPECT_EQ(file->counters().bytes_written, 4096u);
  EXPECT_EQ(file->counters().write_zeroes, 0u);

  // Free cluster 5's host cluster, then allocate again: it is reused.
  ASSERT_EQ(io::RunSync(nullptr, img->Discard(5 * kCluster, kCluster)), 0);
  ASSERT_EQ(io::RunSync(nullptr, img->Flush()), 0);
  const uint64_t allocated = img->stats().clusters_allocated;
  file->ResetCounters();
  ASSERT_EQ(WriteSync(*img, 9 * kCluster + 8192, data), 0);
  EXPECT_EQ(img->stats().clusters_allocated, allocated + 1);
  EXPECT_EQ(file->counters().write_zeroes, 1u);
  EXPECT_EQ(file->counters().writes, 1u);
  EXPECT_EQ(file->counters().bytes_written, 4096u);

  for (uint64_t c : {7, 9}) {
    std::vector<std::byte> back(kCluster);
    ASSERT_EQ(ReadSync(*img, c * kCluster, back), 0);
    for (uint64_t i = 0; i < kCluster; ++i) {
      const bool written = i >= 8192 && i < 8192 + 4096;
      ASSERT_EQ(back[i], written ? std::byte{0x5a} : std::byte{0})
          << "cluster " << c << " byte " << i;
    }
  }
  ASSERT_TRUE(io::RunSync(nullptr, img->Close()).ok());
}

// A request over physically contiguous data clusters is one I/O, not one per
// cluster; a gap in the host layout splits it.
TEST(Qcow2ImageTest, ContiguousClustersAreOneIo) {
  for (bool extended : {false, true}) {
    SCOPED_TRACE(extended ? "extended L2" : "standard L2");
    format::CreateOptions o = testing::Qcow2Options(8 << 20);
    o.extended_l2 = extended;
    auto file = MakeImage(o);
    auto img = OpenQcow2(file.get());
    ASSERT_NE(img, nullptr);
    constexpr uint64_t kMiB = 1 << 20;
    std::vector<std::byte> data(kMiB);
    for (size_t i = 0; i < data.size(); ++i) data[i] = std::byte(i * 7 / 4096);
    ASSERT_EQ(WriteSync(*img, 0, data), 0);  // allocates 16 clusters in order

    file->ResetCounters();
    std::vector<std::byte> back(kMiB);
    ASSERT_EQ(ReadSync(*img, 0, back), 0);
    EXPECT_EQ(back, data);
    EXPECT_EQ(file->counters().reads, 1u);

    file->ResetCounters();
    ASSERT_EQ(WriteSync(*img, 4096, std::span(data).first(kMiB - 8192)), 0);
    EXPECT_EQ(file->counters().writes, 1u);

    // A cluster elsewhere in the host file breaks the run in two.
    ASSERT_EQ(io::RunSync(nullptr, img->Discard(5 << 16, 1 << 16)), 0);
    ASSERT_EQ(WriteSync(*img, 2 * kMiB, std::span(data).first(1 << 16)), 0);
    ASSERT_EQ(WriteSync(*img, 5 << 16, std::span(data).first(1 << 16)), 0);
    file->ResetCounters();
    ASSERT_EQ(ReadSync(*img, 0, back), 0);
    EXPECT_EQ(file->counters().reads, 3u);
    ASSERT_TRUE(io::RunSync(nullptr, img->Close()).ok());
  }
}

TEST(OpenImageTest, ProbesRawAndHonoursForcedFormats) {
  io::MemFile raw(io::MemFile::Mode::kImmediate, std::vector<std::byte>(8192, std::byte{3}));
  auto d = OpenSync(&raw, {});
  ASSERT_TRUE(d.ok());
  EXPECT_EQ((*d)->size_bytes(), 8192u);
  EXPECT_EQ(dynamic_cast<Qcow2Image*>(d->get()), nullptr);
  OpenOptions q;
  q.format = ImageFormat::kQcow2;
  EXPECT_FALSE(OpenSync(&raw, q).ok());
  OpenOptions ro;
  ro.read_only = true;
  auto raw_ro = OpenSync(&raw, ro);
  ASSERT_TRUE(raw_ro.ok());
  EXPECT_TRUE((*raw_ro)->read_only());
  std::vector<std::byte> buf(512);
  EXPECT_EQ(WriteSync(**raw_ro, 0, buf), -EROFS);
  auto file = MakeImage(testing::Qcow2Options(1 << 20));
  OpenOptions r;
  r.format = ImageFormat::kRaw;
  auto as_raw = OpenSync(file.get(), r);
  ASSERT_TRUE(as_raw.ok());
  EXPECT_EQ((*as_raw)->size_bytes(), file->size_bytes());
}

}  // namespace
}  // namespace uq::engine
