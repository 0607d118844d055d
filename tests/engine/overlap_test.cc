// Metadata overlap checks (issue 12, point 4): crafted images whose table
// entries aim a write at metadata. Each write is refused with EIO, the image
// is marked corrupt, and the file's bytes are unchanged apart from the
// header's feature word (the corrupt bit). Covers guest data writes (the
// COPIED overwrite fast path, the slow path, multi-cluster requests), the
// allocator handing out a metadata cluster whose refcount lies (data, a new
// L2 table, a refcount block over the header), an L1 entry naming the
// refcount table (the L2 cache's write-back), and a discard that would free
// and punch the L1 table.
#include <gtest/gtest.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "format/create.h"
#include "format/endian.h"
#include "format/header.h"
#include "format/tables.h"
#include "src/engine/image.h"
#include "src/io/mem_file.h"
#include "src/io/run_sync.h"
#include "tests/engine/test_util.h"

namespace uq::engine {
namespace {

constexpr uint32_t kBits = 12;
constexpr uint64_t kCluster = uint64_t{1} << kBits;
constexpr uint64_t kDisk = 8 << 20;
constexpr uint64_t kPerTable = kCluster / 8;  // guest clusters per L2 table
constexpr uint64_t kFeaturesAt = format::kHeaderIncompatibleFeaturesAt;

uint64_t Be64(const io::MemFile& f, uint64_t at) { return format::LoadBE64(f.data().data() + at); }
void SetBe64(io::MemFile& f, uint64_t at, uint64_t v) {
  format::StoreBE64(f.data().data() + at, v);
}

struct Image {
  std::unique_ptr<io::MemFile> file;
  uint64_t l1 = 0;
  uint64_t reftable = 0;
  uint64_t refblock = 0;
  uint64_t l2[2] = {};  // the L2 tables of L1 entries 0 and 1

  uint64_t EntryAt(uint64_t guest_cluster) const {
    return l2[guest_cluster / kPerTable] + guest_cluster % kPerTable * 8;
  }
  // Sets a refcount (refcount_order 4: 16-bit big-endian entries).
  void SetRefcount(uint64_t cluster, uint16_t value) {
    std::byte* p = file->data().data() + refblock + cluster * 2;
    p[0] = std::byte(value >> 8);
    p[1] = std::byte(value & 0xff);
  }
  bool corrupt() const { return (Be64(*file, kFeaturesAt) & format::kIncompatCorrupt) != 0; }
  // The file without the incompatible feature word.
  std::vector<std::byte> BytesButFeatures() const {
    std::vector<std::byte> b = file->data();
    std::memset(b.data() + kFeaturesAt, 0, 8);
    return b;
  }
};

// 8 MiB, 4 KiB clusters; guest clusters 0, 1 and kPerTable written with 0x11
// and closed cleanly: L1 entries 0 and 1 name L2 tables, the rest none.
Image Written() {
  format::CreateOptions o;
  o.size_bytes = kDisk;
  o.cluster_bits = kBits;
  Image im;
  im.file = testing::MakeImage(o);
  auto d = testing::OpenSync(im.file.get(), {});
  EXPECT_TRUE(d.ok()) << d.status();
  std::vector<std::byte> buf(kCluster, std::byte{0x11});
  for (uint64_t g : {uint64_t{0}, uint64_t{1}, kPerTable}) {
    EXPECT_EQ(testing::WriteSync(**d, g * kCluster, buf), 0);
  }
  EXPECT_TRUE(io::RunSync(nullptr, (*d)->Close()).ok());
  im.l1 = Be64(*im.file, 40);
  im.reftable = Be64(*im.file, 48);
  im.refblock = Be64(*im.file, im.reftable);
  im.l2[0] = Be64(*im.file, im.l1) & format::kOffsetMask;
  im.l2[1] = Be64(*im.file, im.l1 + 8) & format::kOffsetMask;
  EXPECT_NE(im.l2[0], 0u);
  EXPECT_NE(im.l2[1], 0u);
  return im;
}

struct Refused {
  int result = 0;
  std::string err;
};

// Opens `im` writable, runs `op` on it, and returns its result and stderr;
// the file's bytes are compared before Close (which would write back caches).
template <typename Op>
Refused RunOn(Image& im, Op op, std::vector<std::byte>* after = nullptr) {
  auto d = testing::OpenSync(im.file.get(), {});
  EXPECT_TRUE(d.ok()) << d.status();
  if (!d.ok()) return {};
  ::testing::internal::CaptureStderr();
  Refused r;
  r.result = op(**d);
  r.err = ::testing::internal::GetCapturedStderr();
  if (after) *after = im.BytesButFeatures();
  // A corrupt image refuses every later write.
  std::vector<std::byte> buf(kCluster, std::byte{0x22});
  EXPECT_EQ(testing::WriteSync(**d, 0, buf), -EIO);
  (void)io::RunSync(nullptr, (*d)->Close());
  return r;
}

// (An L2 entry cannot aim at the header: host offset 0 reads as unallocated.
// The allocator can, below.)
enum class Aim { kRefcountTable, kL1Table, kOtherL2Table, kOwnL2Table, kRefcountBlock };

struct AimCase {
  Aim aim;
  bool copied;  // COPIED set: the overwrite fast path; clear: the slow path
};

class GuestWriteOverMetadata : public ::testing::TestWithParam<AimCase> {};

uint64_t TargetOf(const Image& im, Aim aim) {
  switch (aim) {
    case Aim::kRefcountTable:
      return im.reftable;
    case Aim::kL1Table:
      return im.l1;
    case Aim::kOtherL2Table:
      return im.l2[1];
    case Aim::kOwnL2Table:
      return im.l2[0];
    case Aim::kRefcountBlock:
      return im.refblock;
  }
  return 0;
}

const char* KindOf(Aim aim) {
  switch (aim) {
    case Aim::kRefcountTable:
      return "overlaps the refcount table";
    case Aim::kL1Table:
      return "overlaps the active L1 table";
    case Aim::kOtherL2Table:
    case Aim::kOwnL2Table:
      return "overlaps the active L2 table";
    case Aim::kRefcountBlock:
      return "overlaps the refcount block";
  }
  return "";
}

TEST_P(GuestWriteOverMetadata, IsRefusedAndMarksCorrupt) {
  Image im = Written();
  const uint64_t target = TargetOf(im, GetParam().aim);
  SetBe64(*im.file, im.EntryAt(1), target | (GetParam().copied ? format::kOflagCopied : 0));
  const std::vector<std::byte> before = im.BytesButFeatures();
  std::vector<std::byte> after;
  const Refused r = RunOn(
      im,
      [](Device& d) {
        std::vector<std::byte> buf(512, std::byte{0x5a});
        return testing::WriteSync(d, kCluster + 1024, buf);
      },
      &after);
  EXPECT_EQ(r.result, -EIO);
  EXPECT_NE(r.err.find(KindOf(GetParam().aim)), std::string::npos) << r.err;
  EXPECT_TRUE(im.corrupt());
  EXPECT_TRUE(after == before) << "the file changed";
}

std::string AimName(const ::testing::TestParamInfo<AimCase>& info) {
  static const char* const kNames[] = {"RefcountTable", "L1Table", "OtherL2Table", "OwnL2Table",
                                       "RefcountBlock"};
  return std::string(kNames[static_cast<int>(info.param.aim)]) +
         (info.param.copied ? "Copied" : "NotCopied");
}

INSTANTIATE_TEST_SUITE_P(
    Aims, GuestWriteOverMetadata,
    ::testing::Values(AimCase{Aim::kRefcountTable, true}, AimCase{Aim::kRefcountTable, false},
                      AimCase{Aim::kL1Table, true}, AimCase{Aim::kL1Table, false},
                      AimCase{Aim::kOtherL2Table, true}, AimCase{Aim::kOtherL2Table, false},
                      AimCase{Aim::kOwnL2Table, true}, AimCase{Aim::kOwnL2Table, false},
                      AimCase{Aim::kRefcountBlock, true}, AimCase{Aim::kRefcountBlock, false}),
    AimName);

// A two-cluster write whose second cluster aims at the L1 table writes
// neither cluster (the first is plain data and would go out in one I/O).
TEST(OverlapTest, MultiClusterWriteWritesNothing) {
  Image im = Written();
  SetBe64(*im.file, im.EntryAt(1), im.l1 | format::kOflagCopied);
  const std::vector<std::byte> before = im.BytesButFeatures();
  std::vector<std::byte> after;
  const Refused r = RunOn(
      im,
      [](Device& d) {
        std::vector<std::byte> buf(2 * kCluster, std::byte{0x5a});
        return testing::WriteSync(d, 0, buf);
      },
      &after);
  EXPECT_EQ(r.result, -EIO);
  EXPECT_NE(r.err.find("overlaps the active L1 table"), std::string::npos) << r.err;
  EXPECT_TRUE(im.corrupt());
  EXPECT_TRUE(after == before) << "the file changed";
}

// The L1 table's refcount says free: the allocator hands its cluster out,
// for a data cluster or for a new L2 table, and the write is refused.
TEST(OverlapTest, AllocationOverTheL1TableIsRefused) {
  for (const uint64_t guest_cluster : {uint64_t{2}, 2 * kPerTable}) {
    SCOPED_TRACE(guest_cluster == 2 ? "data cluster" : "L2 table");
    Image im = Written();
    im.SetRefcount(im.l1 / kCluster, 0);
    const std::vector<std::byte> before = im.BytesButFeatures();
    std::vector<std::byte> after;
    const Refused r = RunOn(
        im,
        [&](Device& d) {
          std::vector<std::byte> buf(kCluster, std::byte{0x5a});
          return testing::WriteSync(d, guest_cluster * kCluster, buf);
        },
        &after);
    EXPECT_EQ(r.result, -EIO);
    EXPECT_NE(r.err.find("overlaps the active L1 table"), std::string::npos) << r.err;
    EXPECT_TRUE(im.corrupt());
    EXPECT_TRUE(after == before) << "the file changed";
  }
}

// No refcount block covers the first clusters: a new one would be placed
// at cluster 0, over the header. The allocator now refuses such an image
// before the overlap check sees the write (the header cluster must be
// counted); either refusal leaves the file as it was.
TEST(OverlapTest, RefcountBlockOverTheHeaderIsRefused) {
  Image im = Written();
  SetBe64(*im.file, im.reftable, 0);
  const std::vector<std::byte> before = im.BytesButFeatures();
  std::vector<std::byte> after;
  const Refused r = RunOn(
      im,
      [](Device& d) {
        std::vector<std::byte> buf(kCluster, std::byte{0x5a});
        return testing::WriteSync(d, 2 * kCluster, buf);
      },
      &after);
  EXPECT_EQ(r.result, -EIO);
  EXPECT_TRUE(r.err.find("overlaps the qcow2_header") != std::string::npos ||
              r.err.find("the header cluster has refcount 0") != std::string::npos)
      << r.err;
  EXPECT_TRUE(im.corrupt());
  EXPECT_TRUE(after == before) << "the file changed";
}

// An L1 entry names the refcount table as an L2 table: a write maps through
// it (entry 1 reads as unallocated) and the new L2 entry would be written
// back into the refcount table at the flush.
TEST(OverlapTest, L2WriteBackIntoTheRefcountTableIsRefused) {
  Image im = Written();
  SetBe64(*im.file, im.l1 + 16, im.reftable | format::kOflagCopied);
  const std::vector<std::byte> table(im.file->data().begin() + im.reftable,
                                     im.file->data().begin() + im.reftable + kCluster);
  const Refused r = RunOn(im, [](Device& d) {
    std::vector<std::byte> buf(kCluster, std::byte{0x5a});
    int w = testing::WriteSync(d, (2 * kPerTable + 1) * kCluster, buf);
    if (w < 0) return w;
    return io::RunSync(nullptr, d.Flush());
  });
  EXPECT_EQ(r.result, -EIO);
  EXPECT_NE(r.err.find("overlaps the refcount table"), std::string::npos) << r.err;
  EXPECT_TRUE(im.corrupt());
  EXPECT_TRUE(std::equal(table.begin(), table.end(), im.file->data().begin() + im.reftable))
      << "the refcount table changed";
}

// A data entry aims at the L1 table; discarding that guest cluster drops
// the L1 table's refcount to 0. The flush must not punch the L1 table out.
TEST(OverlapTest, FreeingTheL1TableDoesNotDiscardIt) {
  Image im = Written();
  SetBe64(*im.file, im.EntryAt(1), im.l1 | format::kOflagCopied);
  const std::vector<std::byte> l1(im.file->data().begin() + im.l1,
                                  im.file->data().begin() + im.l1 + kCluster);
  const Refused r = RunOn(im, [](Device& d) {
    int z = io::RunSync(nullptr, d.Discard(kCluster, kCluster));
    if (z < 0) return z;
    return io::RunSync(nullptr, d.Flush());
  });
  EXPECT_EQ(r.result, -EIO);
  EXPECT_NE(r.err.find("holds the active L1 table"), std::string::npos) << r.err;
  EXPECT_TRUE(im.corrupt());
  EXPECT_TRUE(std::equal(l1.begin(), l1.end(), im.file->data().begin() + im.l1))
      << "the L1 table changed";
}

}  // namespace
}  // namespace uq::engine
