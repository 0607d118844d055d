#include "format/tables.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <random>
#include <string>
#include <vector>

namespace uq::format {
namespace {

uint32_t Seed() {
  const uint32_t seed = std::random_device{}();
  std::printf("random seed: %u\n", seed);
  return seed;
}

TEST(L1EntryTest, RoundTripAndReservedBits) {
  const L1Entry e{.l2_offset = 0x00ab'cdef'0000ull, .copied = true};
  const uint64_t raw = EncodeL1Entry(e);
  EXPECT_EQ(raw, 0x8000'00ab'cdef'0000ull);
  absl::StatusOr<L1Entry> d = DecodeL1Entry(raw);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->l2_offset, e.l2_offset);
  EXPECT_TRUE(d->copied);
  for (int bit : {0, 8, 56, 62}) {
    absl::StatusOr<L1Entry> bad = DecodeL1Entry(raw | (1ull << bit));
    ASSERT_FALSE(bad.ok()) << "bit " << bit;
    EXPECT_NE(std::string(bad.status().message()).find("reserved"), std::string::npos);
  }
  ASSERT_TRUE(DecodeL1Entry(0).ok());
  EXPECT_EQ(DecodeL1Entry(0)->l2_offset, 0u);
}

TEST(RefcountTableEntryTest, ReservedBits) {
  EXPECT_EQ(*DecodeRefcountTableEntry(0x30000), 0x30000u);
  EXPECT_FALSE(DecodeRefcountTableEntry(0x30001).ok());
  EXPECT_FALSE(DecodeRefcountTableEntry(0x30100).ok());
}

// Standard and extended L2 entries for every cluster size.
TEST(L2EntryTest, StandardRoundTripEveryClusterBits) {
  for (uint32_t bits = 9; bits <= 21; ++bits) {
    const uint64_t host = 0x1234ull << 21;  // aligned for every cluster size
    for (ClusterType type : {ClusterType::kUnallocated, ClusterType::kZeroPlain,
                             ClusterType::kZeroAlloc, ClusterType::kNormal}) {
      L2Entry e;
      e.type = type;
      const bool has_host = type == ClusterType::kZeroAlloc || type == ClusterType::kNormal;
      e.host_offset = has_host ? host : 0;
      e.copied = has_host;
      const EncodedL2 enc = EncodeL2Entry(e, bits, false);
      EXPECT_EQ(enc.bitmap, 0u);
      EXPECT_EQ(enc.entry & 1, type == ClusterType::kZeroPlain || type == ClusterType::kZeroAlloc);
      absl::StatusOr<L2Entry> d = DecodeL2Entry(enc.entry, 0, bits, false);
      ASSERT_TRUE(d.ok()) << d.status();
      EXPECT_EQ(d->type, type) << "bits " << bits;
      EXPECT_EQ(d->host_offset, e.host_offset);
      EXPECT_EQ(d->copied, e.copied);
    }
    // An offset not aligned to this cluster size is rejected (when the
    // cluster is bigger than 512 bytes, 0x200 is misaligned).
    if (bits > 9) {
      absl::StatusOr<L2Entry> bad = DecodeL2Entry(host | 0x200, 0, bits, false);
      ASSERT_FALSE(bad.ok());
      EXPECT_NE(std::string(bad.status().message()).find("not aligned"), std::string::npos);
    }
    // Reserved bits 1..8 and 56..61.
    for (int bit : {1, 8, 56, 61}) {
      EXPECT_FALSE(DecodeL2Entry(host | (1ull << bit), 0, bits, false).ok()) << bit;
    }
  }
}

TEST(L2EntryTest, ExtendedRoundTripEveryClusterBits) {
  std::mt19937_64 rng(Seed());
  for (uint32_t bits = 14; bits <= 21; ++bits) {
    for (int i = 0; i < 100; ++i) {
      L2Entry e;
      const uint32_t alloc = static_cast<uint32_t>(rng());
      const uint32_t zero = static_cast<uint32_t>(rng()) & ~alloc;
      const bool allocated = (i % 3) != 0;
      e.type = allocated ? ClusterType::kNormal : ClusterType::kUnallocated;
      e.host_offset = allocated ? (rng() & 0xffffull) << 21 : 0;
      if (allocated && e.host_offset == 0) e.host_offset = 1ull << 21;
      e.copied = allocated;
      e.alloc_bitmap = allocated ? alloc : 0;
      e.zero_bitmap = zero;
      const EncodedL2 enc = EncodeL2Entry(e, bits, true);
      EXPECT_EQ(enc.bitmap, (uint64_t{e.zero_bitmap} << 32) | e.alloc_bitmap);
      absl::StatusOr<L2Entry> d = DecodeL2Entry(enc.entry, enc.bitmap, bits, true);
      ASSERT_TRUE(d.ok()) << d.status();
      EXPECT_EQ(d->type, e.type);
      EXPECT_EQ(d->host_offset, e.host_offset);
      EXPECT_EQ(d->alloc_bitmap, e.alloc_bitmap);
      EXPECT_EQ(d->zero_bitmap, e.zero_bitmap);
    }
  }
}

TEST(L2EntryTest, OffsetZeroWithExternalDataFile) {
  // COPIED with offset 0: cluster 0 of the data file, but only with one.
  const uint64_t raw = kOflagCopied;
  EXPECT_EQ(DecodeL2Entry(raw, 0, 16, false, true)->type, ClusterType::kNormal);
  EXPECT_EQ(DecodeL2Entry(raw, 0, 16, false, false)->type, ClusterType::kUnallocated);
  EXPECT_EQ(DecodeL2Entry(0, 0, 16, false, true)->type, ClusterType::kUnallocated);
  EXPECT_EQ(DecodeL2Entry(raw, 1, 16, true, true)->type, ClusterType::kNormal);
  EXPECT_FALSE(DecodeL2Entry(raw, 1, 16, true, false).ok());
  // The encoder writes exactly that word for a normal cluster at 0.
  L2Entry e{.type = ClusterType::kNormal, .copied = true};
  EXPECT_EQ(EncodeL2Entry(e, 16, false).entry, raw);
}

TEST(L2EntryTest, ExtendedRejectsInvalidBitmaps) {
  const uint64_t host = 1ull << 21;
  // Subcluster 3 both allocated and zero.
  EXPECT_FALSE(DecodeL2Entry(host, (1ull << 35) | (1ull << 3), 16, true).ok());
  // Allocated subclusters without a host cluster.
  EXPECT_FALSE(DecodeL2Entry(0, 1, 16, true).ok());
  // Bit 0 is reserved with extended L2.
  EXPECT_FALSE(DecodeL2Entry(host | 1, 0, 16, true).ok());
  // Compressed clusters must have a zero bitmap.
  const uint64_t compressed = EncodeCompressedDescriptor({.host_offset = 4096}, 16);
  EXPECT_TRUE(DecodeL2Entry(compressed, 0, 16, true).ok());
  EXPECT_FALSE(DecodeL2Entry(compressed, 1, 16, true).ok());
}

TEST(CompressedDescriptorTest, RoundTripEveryClusterBits) {
  std::mt19937_64 rng(Seed());
  for (uint32_t bits = 9; bits <= 21; ++bits) {
    const uint32_t x = 62 - (bits - 8);
    const uint64_t max_sectors = (1ull << (bits - 8)) - 1;
    for (int i = 0; i < 200; ++i) {
      CompressedDescriptor d;
      d.host_offset = rng() & ((1ull << std::min(x, 56u)) - 1);
      d.extra_sectors = rng() % (max_sectors + 1);
      if (i == 0) d.extra_sectors = max_sectors;
      const uint64_t raw = EncodeCompressedDescriptor(d, bits);
      EXPECT_TRUE(raw & kOflagCompressed);
      EXPECT_FALSE(raw & kOflagCopied);
      // The fields sit where the spec puts them.
      EXPECT_EQ(raw & ((1ull << x) - 1), d.host_offset);
      EXPECT_EQ((raw >> x) & max_sectors, d.extra_sectors);
      const CompressedDescriptor back = DecodeCompressedDescriptor(raw, bits);
      EXPECT_EQ(back.host_offset, d.host_offset) << "cluster_bits " << bits;
      EXPECT_EQ(back.extra_sectors, d.extra_sectors) << "cluster_bits " << bits;
      EXPECT_EQ(CompressedReadLength(back), (d.extra_sectors + 1) * 512 - (d.host_offset & 511));

      // Through the L2 codec: offset and length survive, and re-encoding
      // gives back the same word.
      absl::StatusOr<L2Entry> e = DecodeL2Entry(raw, 0, bits, false);
      ASSERT_TRUE(e.ok());
      EXPECT_EQ(e->type, ClusterType::kCompressed);
      EXPECT_EQ(e->compressed_offset, d.host_offset);
      EXPECT_EQ(e->compressed_length, CompressedReadLength(d));
      EXPECT_EQ(EncodeL2Entry(*e, bits, false).entry, raw);
    }
  }
}

TEST(CompressedDescriptorTest, LengthFromL2EntryCountsSpannedSectors) {
  // 100 bytes starting 10 bytes before a sector boundary span two sectors.
  L2Entry e;
  e.type = ClusterType::kCompressed;
  e.compressed_offset = 0x10000 + 502;
  e.compressed_length = 100;
  const CompressedDescriptor d = DecodeCompressedDescriptor(EncodeL2Entry(e, 16, false).entry, 16);
  EXPECT_EQ(d.host_offset, e.compressed_offset);
  EXPECT_EQ(d.extra_sectors, 1u);
}

// Reference model: refcount i lives in bits [i*w, (i+1)*w) of the block,
// LSB-first within a byte for w < 8, big-endian for w >= 8.
uint64_t ModelGet(const std::vector<std::byte>& block, uint32_t order, uint64_t index) {
  const uint32_t w = 1u << order;
  if (w < 8) {
    const uint64_t bit = index * w;
    return (static_cast<uint8_t>(block[bit / 8]) >> (bit % 8)) & ((1u << w) - 1);
  }
  uint64_t v = 0;
  for (uint32_t b = 0; b < w / 8; ++b)
    v = (v << 8) | static_cast<uint8_t>(block[index * w / 8 + b]);
  return v;
}

TEST(RefcountTest, GetSetEveryOrderLeavesNeighboursUntouched) {
  std::mt19937_64 rng(Seed());
  for (uint32_t order = 0; order <= 6; ++order) {
    const uint64_t max = MaxRefcount(order);
    EXPECT_EQ(max, order == 6 ? ~0ull : (1ull << (1u << order)) - 1);
    std::vector<std::byte> block(512);
    for (auto& b : block) b = std::byte(static_cast<uint8_t>(rng()));
    const uint64_t entries = block.size() * 8 >> order;
    for (int i = 0; i < 2000; ++i) {
      const uint64_t index = rng() % entries;
      const uint64_t value = (i % 7 == 0) ? max : rng() & max;
      const std::vector<std::byte> before = block;
      SetRefcount(block, order, index, value);
      ASSERT_EQ(GetRefcount(block, order, index), value) << "order " << order;
      ASSERT_EQ(ModelGet(block, order, index), value) << "order " << order;
      for (uint64_t j = 0; j < entries; ++j) {
        if (j == index) continue;
        ASSERT_EQ(ModelGet(block, order, j), ModelGet(before, order, j))
            << "order " << order << ": setting " << index << " changed " << j;
      }
    }
  }
}

TEST(RefcountTest, KnownLayouts) {
  std::vector<std::byte> block(16);
  SetRefcount(block, 0, 9, 1);  // byte 1, bit 1
  EXPECT_EQ(block[1], std::byte{0x02});
  SetRefcount(block, 2, 1, 0xa);  // byte 0, high nibble
  EXPECT_EQ(block[0], std::byte{0xa0});
  SetRefcount(block, 4, 2, 0x1234);  // bytes 4..5, big-endian
  EXPECT_EQ(block[4], std::byte{0x12});
  EXPECT_EQ(block[5], std::byte{0x34});
  SetRefcount(block, 6, 1, 0x0102030405060708ull);
  EXPECT_EQ(block[8], std::byte{0x01});
  EXPECT_EQ(block[15], std::byte{0x08});
}

}  // namespace
}  // namespace uq::format
