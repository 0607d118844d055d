#include "format/bitmaps.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "format/endian.h"

namespace uq::format {
namespace {

// QEMU's limits (block/qcow2-bitmap.c).
constexpr uint32_t kMaxBitmaps = 65535;
constexpr uint64_t kMaxDirectoryBytes = 64ull << 20;
constexpr uint32_t kMaxNameBytes = 1023;
constexpr uint32_t kMinGranularityBits = 9;
constexpr uint32_t kMaxGranularityBits = 31;
constexpr size_t kEntryFixedBytes = 24;

absl::Status Invalid(std::string msg) { return absl::InvalidArgumentError(std::move(msg)); }

}  // namespace

absl::StatusOr<std::optional<BitmapsExtension>> FindBitmapsExtension(const Header& h) {
  if (!(h.autoclear_features & kAutoclearBitmaps)) return std::nullopt;
  for (const HeaderExtension& e : h.opaque_extensions) {
    if (e.type != kExtBitmaps) continue;
    if (e.data.size() != 24) {
      return Invalid(absl::StrCat("bitmaps extension length ", e.data.size(), " is not 24"));
    }
    BitmapsExtension ext;
    ext.nb_bitmaps = LoadBE32(e.data.data());
    const uint32_t reserved = LoadBE32(e.data.data() + 4);
    ext.directory_size_bytes = LoadBE64(e.data.data() + 8);
    ext.directory_offset = LoadBE64(e.data.data() + 16);
    if (reserved != 0) {
      return Invalid(absl::StrCat("bitmaps extension reserved field ", reserved, " is not 0"));
    }
    if (ext.nb_bitmaps == 0 || ext.nb_bitmaps > kMaxBitmaps) {
      return Invalid(absl::StrCat("bitmaps extension nb_bitmaps ", ext.nb_bitmaps,
                                  " is out of range (1..", kMaxBitmaps, ")"));
    }
    if (ext.directory_size_bytes > kMaxDirectoryBytes ||
        ext.directory_size_bytes < ext.nb_bitmaps * kEntryFixedBytes) {
      return Invalid(absl::StrCat("bitmap_directory_size ", ext.directory_size_bytes,
                                  " is out of range for ", ext.nb_bitmaps, " bitmaps"));
    }
    if (ext.directory_offset & (h.cluster_size() - 1) || ext.directory_offset == 0) {
      return Invalid(absl::StrCat("bitmap_directory_offset ", ext.directory_offset,
                                  " is not a cluster-aligned offset past the header"));
    }
    return ext;
  }
  return std::nullopt;
}

absl::StatusOr<std::vector<BitmapInfo>> DecodeBitmapDirectory(std::span<const std::byte> dir,
                                                              const BitmapsExtension& ext,
                                                              uint32_t cluster_bits) {
  std::vector<BitmapInfo> out;
  size_t offset = 0;
  const uint64_t cluster_mask = (uint64_t{1} << cluster_bits) - 1;
  for (uint32_t i = 0; i < ext.nb_bitmaps; ++i) {
    if (dir.size() - offset < kEntryFixedBytes) {
      return Invalid(absl::StrCat("bitmap ", i, " at directory offset ", offset,
                                  " is truncated (directory is ", dir.size(), " bytes)"));
    }
    const std::byte* p = dir.data() + offset;
    BitmapInfo b;
    b.table_offset = LoadBE64(p);
    b.table_size = LoadBE32(p + 8);
    b.flags = LoadBE32(p + 12);
    b.type = static_cast<uint8_t>(p[16]);
    b.granularity_bits = static_cast<uint8_t>(p[17]);
    const uint16_t name_size = LoadBE16(p + 18);
    const uint32_t extra_size = LoadBE32(p + 20);
    if (b.type != 1) {
      return Invalid(absl::StrCat("bitmap ", i, " type ", b.type, " is not supported (1)"));
    }
    if (b.granularity_bits < kMinGranularityBits || b.granularity_bits > kMaxGranularityBits) {
      return Invalid(absl::StrCat("bitmap ", i, " granularity_bits ", b.granularity_bits,
                                  " is out of range (", kMinGranularityBits, "..",
                                  kMaxGranularityBits, ")"));
    }
    if (name_size == 0 || name_size > kMaxNameBytes) {
      return Invalid(absl::StrCat("bitmap ", i, " name_size ", name_size, " is out of range (1..",
                                  kMaxNameBytes, ")"));
    }
    if (b.table_offset & cluster_mask) {
      return Invalid(absl::StrCat("bitmap ", i, " bitmap_table_offset ", b.table_offset,
                                  " is not cluster aligned"));
    }
    const uint64_t size = kEntryFixedBytes + uint64_t{extra_size} + name_size;
    if (size > dir.size() - offset) {
      return Invalid(absl::StrCat("bitmap ", i, " needs ", size, " bytes at directory offset ",
                                  offset, ", past the directory end ", dir.size()));
    }
    const std::byte* q = p + kEntryFixedBytes;
    b.extra_data.assign(q, q + extra_size);
    b.name.assign(reinterpret_cast<const char*>(q + extra_size), name_size);
    offset = std::min<uint64_t>(dir.size(), offset + ((size + 7) & ~uint64_t{7}));
    out.push_back(std::move(b));
  }
  return out;
}

}  // namespace uq::format
