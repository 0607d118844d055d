#include "format/tables.h"

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "format/endian.h"

namespace uq::format {
namespace {

// L1 entries use bits 9..55 (offset) and 63 (COPIED); the rest is reserved.
constexpr uint64_t kL1ReservedMask = ~(kOffsetMask | kOflagCopied);
// Standard L2 descriptors: bits 1..8 and 56..61 are reserved.
constexpr uint64_t kL2StandardReservedMask = 0x3f000000000001feull;
constexpr uint64_t kRefcountTableReservedMask = 0x1ffull;

// Bit position x where the sector count starts in a compressed descriptor.
uint32_t CompressedOffsetBits(uint32_t cluster_bits) { return 62 - (cluster_bits - 8); }

}  // namespace

absl::StatusOr<L1Entry> DecodeL1Entry(uint64_t raw) {
  if (raw & kL1ReservedMask) {
    return absl::InvalidArgumentError(
        absl::StrFormat("L1 entry 0x%016x has reserved bits 0x%x set", raw, raw & kL1ReservedMask));
  }
  return L1Entry{.l2_offset = raw & kOffsetMask, .copied = (raw & kOflagCopied) != 0};
}

uint64_t EncodeL1Entry(const L1Entry& e) {
  return (e.l2_offset & kOffsetMask) | (e.copied ? kOflagCopied : 0);
}

absl::StatusOr<L2Entry> DecodeL2Entry(uint64_t raw, uint64_t bitmap, uint32_t cluster_bits,
                                      bool extended_l2, bool external_data_file) {
  L2Entry e;
  if (raw & kOflagCompressed) {
    if (extended_l2 && bitmap != 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "compressed L2 entry 0x%016x has a non-zero subcluster bitmap 0x%016x", raw, bitmap));
    }
    const CompressedDescriptor d = DecodeCompressedDescriptor(raw, cluster_bits);
    e.type = ClusterType::kCompressed;
    e.copied = (raw & kOflagCopied) != 0;
    e.compressed_offset = d.host_offset;
    e.compressed_length = CompressedReadLength(d);
    return e;
  }
  uint64_t reserved = raw & kL2StandardReservedMask;
  // With extended L2 entries bit 0 (zero flag) is reserved: the bitmap says it.
  if (extended_l2) reserved |= raw & kOflagZero;
  if (reserved) {
    return absl::InvalidArgumentError(
        absl::StrFormat("L2 entry 0x%016x has reserved bits 0x%x set", raw, reserved));
  }
  e.copied = (raw & kOflagCopied) != 0;
  e.host_offset = raw & kOffsetMask;
  const uint64_t cluster_mask = (uint64_t{1} << cluster_bits) - 1;
  if (e.host_offset & cluster_mask) {
    return absl::InvalidArgumentError(
        absl::StrFormat("L2 entry 0x%016x: host offset 0x%x is not aligned to cluster_bits %u", raw,
                        e.host_offset, cluster_bits));
  }
  const bool allocated = e.host_offset != 0 || (external_data_file && e.copied);
  if (extended_l2) {
    e.alloc_bitmap = static_cast<uint32_t>(bitmap);
    e.zero_bitmap = static_cast<uint32_t>(bitmap >> 32);
    if (e.alloc_bitmap & e.zero_bitmap) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "extended L2 entry 0x%016x: bitmap 0x%016x marks subclusters 0x%x both allocated and "
          "zero",
          raw, bitmap, e.alloc_bitmap & e.zero_bitmap));
    }
    if (!allocated && e.alloc_bitmap != 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "extended L2 entry 0x%016x: bitmap 0x%016x allocates subclusters without a host "
          "cluster",
          raw, bitmap));
    }
    e.type = allocated ? ClusterType::kNormal : ClusterType::kUnallocated;
    return e;
  }
  if (raw & kOflagZero) {
    e.type = e.host_offset ? ClusterType::kZeroAlloc : ClusterType::kZeroPlain;
  } else {
    e.type = allocated ? ClusterType::kNormal : ClusterType::kUnallocated;
  }
  return e;
}

EncodedL2 EncodeL2Entry(const L2Entry& e, uint32_t cluster_bits, bool extended_l2) {
  EncodedL2 out{0, 0};
  const uint64_t copied = e.copied ? kOflagCopied : 0;
  switch (e.type) {
    case ClusterType::kCompressed: {
      // Sectors spanned by [offset, offset + length), minus the first one.
      const uint64_t first_sector = e.compressed_offset >> 9;
      const uint64_t last_sector =
          (e.compressed_offset + (e.compressed_length ? e.compressed_length : 1) - 1) >> 9;
      out.entry = EncodeCompressedDescriptor(
          {.host_offset = e.compressed_offset, .extra_sectors = last_sector - first_sector},
          cluster_bits);
      return out;  // bitmap stays 0: reserved for compressed clusters
    }
    case ClusterType::kUnallocated:
      out.entry = 0;
      break;
    case ClusterType::kZeroPlain:
      out.entry = extended_l2 ? 0 : kOflagZero;
      break;
    case ClusterType::kZeroAlloc:
      out.entry = (e.host_offset & kOffsetMask) | copied | (extended_l2 ? 0 : kOflagZero);
      break;
    case ClusterType::kNormal:
      out.entry = (e.host_offset & kOffsetMask) | copied;
      break;
  }
  if (extended_l2) out.bitmap = (uint64_t{e.zero_bitmap} << 32) | e.alloc_bitmap;
  return out;
}

uint64_t EncodeCompressedDescriptor(const CompressedDescriptor& d, uint32_t cluster_bits) {
  const uint32_t x = CompressedOffsetBits(cluster_bits);
  const uint64_t offset_mask = (uint64_t{1} << x) - 1;
  const uint64_t sectors_mask = (uint64_t{1} << (62 - x)) - 1;
  return kOflagCompressed | (d.host_offset & offset_mask) | ((d.extra_sectors & sectors_mask) << x);
}

CompressedDescriptor DecodeCompressedDescriptor(uint64_t raw, uint32_t cluster_bits) {
  const uint32_t x = CompressedOffsetBits(cluster_bits);
  const uint64_t offset_mask = (uint64_t{1} << x) - 1;
  const uint64_t sectors_mask = (uint64_t{1} << (62 - x)) - 1;
  return {.host_offset = raw & offset_mask, .extra_sectors = (raw >> x) & sectors_mask};
}

uint64_t CompressedReadLength(const CompressedDescriptor& d) {
  return (d.extra_sectors + 1) * 512 - (d.host_offset & 511);
}

absl::StatusOr<uint64_t> DecodeRefcountTableEntry(uint64_t raw) {
  if (raw & kRefcountTableReservedMask) {
    return absl::InvalidArgumentError(
        absl::StrFormat("refcount table entry 0x%016x has reserved bits 0x%x set", raw,
                        raw & kRefcountTableReservedMask));
  }
  return raw;
}

uint64_t GetRefcount(std::span<const std::byte> block, uint32_t refcount_order, uint64_t index) {
  const uint32_t width_bits = 1u << refcount_order;
  if (width_bits < 8) {
    const uint64_t bit = index << refcount_order;
    const uint8_t byte = static_cast<uint8_t>(block[bit / 8]);
    return (byte >> (bit % 8)) & ((1u << width_bits) - 1);
  }
  const std::byte* p = block.data() + index * (width_bits / 8);
  switch (width_bits) {
    case 8:
      return static_cast<uint8_t>(p[0]);
    case 16:
      return LoadBE16(p);
    case 32:
      return LoadBE32(p);
    default:
      return LoadBE64(p);
  }
}

void SetRefcount(std::span<std::byte> block, uint32_t refcount_order, uint64_t index,
                 uint64_t value) {
  const uint32_t width_bits = 1u << refcount_order;
  if (width_bits < 8) {
    const uint64_t bit = index << refcount_order;
    const uint8_t mask = static_cast<uint8_t>(((1u << width_bits) - 1) << (bit % 8));
    uint8_t byte = static_cast<uint8_t>(block[bit / 8]);
    byte = static_cast<uint8_t>((byte & ~mask) | ((value << (bit % 8)) & mask));
    block[bit / 8] = std::byte{byte};
    return;
  }
  std::byte* p = block.data() + index * (width_bits / 8);
  switch (width_bits) {
    case 8:
      p[0] = std::byte(static_cast<uint8_t>(value));
      break;
    case 16:
      StoreBE16(p, static_cast<uint16_t>(value));
      break;
    case 32:
      StoreBE32(p, static_cast<uint32_t>(value));
      break;
    default:
      StoreBE64(p, value);
      break;
  }
}

}  // namespace uq::format
