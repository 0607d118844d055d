#include "format/header.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "format/endian.h"
#include "format/status_macros.h"

namespace uq::format {
namespace {

// QEMU's limit (block/qcow2.h): at most 65536 snapshots.
constexpr uint32_t kMaxSnapshots = 65536;
constexpr uint32_t kSnapshotHeaderBytes = 40;
constexpr uint32_t kMaxBackingFileNameBytes = 1023;
// QEMU keeps the backing format in a 16-byte buffer including the NUL.
constexpr uint32_t kMaxBackingFormatBytes = 15;
constexpr uint32_t kFeatureEntryBytes = 48;
constexpr uint32_t kFeatureNameBytes = 46;
constexpr uint32_t kCryptoExtBytes = 16;
// The header QEMU (and EncodeHeader) writes for version 3: 104 bytes of fields,
// the compression type byte and 7 bytes of padding.
constexpr uint32_t kHeaderV3WriteLength = 112;

struct KnownFeature {
  uint8_t type;
  uint8_t bit;
  const char* name;
};
// Names as QEMU writes them into the feature name table.
constexpr KnownFeature kKnownFeatures[] = {
    {0, 0, "dirty bit"},        {0, 1, "corrupt bit"},         {0, 2, "external data file"},
    {0, 3, "compression type"}, {0, 4, "extended L2 entries"}, {1, 0, "lazy refcounts"},
    {2, 0, "bitmaps"},          {2, 1, "raw external data"},
};

std::string Hex(uint64_t v) { return absl::StrFormat("0x%x", v); }

absl::Status Invalid(std::string msg) { return absl::InvalidArgumentError(std::move(msg)); }

// A table of `bytes` bytes at `offset_bytes` must be cluster aligned, must
// not overflow, and must lie inside the image file (QEMU's
// validate_table_offset plus the end-of-file check).
absl::Status ValidateTable(const char* offset_field, uint64_t offset_bytes, uint64_t bytes,
                           uint64_t cluster_size, uint64_t file_size_bytes) {
  if (offset_bytes & (cluster_size - 1)) {
    return Invalid(absl::StrCat(offset_field, " ", Hex(offset_bytes),
                                " is not aligned to the cluster size ", cluster_size));
  }
  if (bytes == 0) return absl::OkStatus();
  if (offset_bytes > UINT64_MAX - bytes || offset_bytes + bytes > (1ull << 56)) {
    return Invalid(absl::StrCat(offset_field, " ", Hex(offset_bytes), " plus the table size ",
                                bytes, " overflows"));
  }
  if (file_size_bytes != 0 && offset_bytes + bytes > file_size_bytes) {
    return Invalid(absl::StrCat(offset_field, " ", Hex(offset_bytes), " with ", bytes,
                                " bytes of table is past the end of the file (", file_size_bytes,
                                " bytes)"));
  }
  return absl::OkStatus();
}

bool Overlaps(uint64_t a, uint64_t a_len, uint64_t b, uint64_t b_len) {
  return a_len != 0 && b_len != 0 && a < b + b_len && b < a + a_len;
}

std::string ReadString(std::span<const std::byte> data) {
  std::string s(reinterpret_cast<const char*>(data.data()), data.size());
  return s;
}

absl::Status ParseExtensions(std::span<const std::byte> buf, uint64_t start, uint64_t end,
                             Header& h) {
  uint64_t offset = start;
  end = std::min<uint64_t>(end, buf.size());
  while (offset < end) {
    if (end - offset < 8) {
      return Invalid(absl::StrCat("header extension at offset ", offset, " is truncated (",
                                  end - offset, " bytes left)"));
    }
    const uint32_t type = LoadBE32(buf.data() + offset);
    const uint32_t len = LoadBE32(buf.data() + offset + 4);
    offset += 8;
    if (type == kExtEnd) return absl::OkStatus();
    if (len > end - offset) {
      return Invalid(absl::StrCat("header extension ", Hex(type), " length ", len,
                                  " runs past the end of the extension area (", end - offset,
                                  " bytes left)"));
    }
    std::span<const std::byte> data = buf.subspan(offset, len);
    switch (type) {
      case kExtBackingFormat:
        if (len > kMaxBackingFormatBytes) {
          return Invalid(absl::StrCat("backing format extension length ", len,
                                      " is too large (max ", kMaxBackingFormatBytes, ")"));
        }
        h.backing_format = ReadString(data);
        break;
      case kExtFeatureTable:
        for (uint32_t i = 0; i + kFeatureEntryBytes <= len; i += kFeatureEntryBytes) {
          FeatureName f;
          f.type = static_cast<uint8_t>(data[i]);
          f.bit = static_cast<uint8_t>(data[i + 1]);
          std::string name = ReadString(data.subspan(i + 2, kFeatureNameBytes));
          name.resize(strnlen(name.c_str(), name.size()));
          f.name = std::move(name);
          h.feature_names.push_back(std::move(f));
        }
        break;
      case kExtCrypto:
        if (len != kCryptoExtBytes) {
          return Invalid(absl::StrCat("full disk encryption extension length ", len, " is not 16"));
        }
        h.has_crypto_extension = true;
        break;
      case kExtDataFile:
        h.data_file = ReadString(data);
        break;
      default:  // kExtBitmaps and unknown extensions survive a rewrite verbatim.
        h.opaque_extensions.push_back({type, std::vector<std::byte>(data.begin(), data.end())});
        break;
    }
    const uint64_t padded = (uint64_t{len} + 7) & ~uint64_t{7};
    offset += std::min<uint64_t>(padded, end - offset);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<uint64_t> HeaderReadSize(std::span<const std::byte> first_bytes) {
  if (first_bytes.size() < 24) {
    return Invalid(absl::StrCat("file is truncated: ", first_bytes.size(),
                                " bytes, a qcow2 header needs at least ", kHeaderV2Length));
  }
  const uint32_t magic = LoadBE32(first_bytes.data());
  if (magic != kQcowMagic) {
    return Invalid(absl::StrCat("magic ", Hex(magic), " is not qcow2 (", Hex(kQcowMagic), ")"));
  }
  const uint32_t cluster_bits = LoadBE32(first_bytes.data() + 20);
  if (cluster_bits < kMinClusterBits || cluster_bits > kMaxClusterBits) {
    return Invalid(absl::StrCat("cluster_bits ", cluster_bits, " is out of range (",
                                kMinClusterBits, "..", kMaxClusterBits, ")"));
  }
  return uint64_t{1} << cluster_bits;
}

absl::StatusOr<Header> DecodeHeader(std::span<const std::byte> buf, const DecodeLimits& limits) {
  if (buf.size() < 8) {
    return Invalid(absl::StrCat("file is truncated: ", buf.size(),
                                " bytes, a qcow2 header needs at least ", kHeaderV2Length));
  }
  const std::byte* p = buf.data();
  const uint32_t magic = LoadBE32(p);
  if (magic != kQcowMagic) {
    return Invalid(absl::StrCat("magic ", Hex(magic), " is not qcow2 (", Hex(kQcowMagic), ")"));
  }
  Header h;
  h.version = LoadBE32(p + 4);
  if (h.version != 2 && h.version != 3) {
    return absl::UnimplementedError(
        absl::StrCat("version ", h.version, " is not supported (2 or 3)"));
  }
  const uint32_t fixed_bytes = h.version == 2 ? kHeaderV2Length : kHeaderV3MinLength;
  if (buf.size() < fixed_bytes) {
    return Invalid(absl::StrCat("file is truncated: ", buf.size(), " bytes, a version ", h.version,
                                " header needs ", fixed_bytes));
  }
  h.backing_file_offset = LoadBE64(p + 8);
  h.backing_file_size = LoadBE32(p + 16);
  h.cluster_bits = LoadBE32(p + 20);
  h.size_bytes = LoadBE64(p + 24);
  h.crypt_method = LoadBE32(p + 32);
  h.l1_size = LoadBE32(p + 36);
  h.l1_table_offset = LoadBE64(p + 40);
  h.refcount_table_offset = LoadBE64(p + 48);
  h.refcount_table_clusters = LoadBE32(p + 56);
  h.nb_snapshots = LoadBE32(p + 60);
  h.snapshots_offset = LoadBE64(p + 64);
  if (h.version == 2) {
    h.incompatible_features = 0;
    h.compatible_features = 0;
    h.autoclear_features = 0;
    h.refcount_order = 4;
    h.header_length = kHeaderV2Length;
  } else {
    h.incompatible_features = LoadBE64(p + 72);
    h.compatible_features = LoadBE64(p + 80);
    h.autoclear_features = LoadBE64(p + 88);
    h.refcount_order = LoadBE32(p + 96);
    h.header_length = LoadBE32(p + 100);
  }

  if (h.cluster_bits < kMinClusterBits || h.cluster_bits > kMaxClusterBits) {
    return Invalid(absl::StrCat("cluster_bits ", h.cluster_bits, " is out of range (",
                                kMinClusterBits, "..", kMaxClusterBits, ")"));
  }
  const uint64_t cluster_size = h.cluster_size();
  if (h.version == 3) {
    if (h.header_length < kHeaderV3MinLength) {
      return Invalid(absl::StrCat("header_length ", h.header_length, " is too small (minimum ",
                                  kHeaderV3MinLength, ")"));
    }
    if (h.header_length % 8 != 0) {
      return Invalid(absl::StrCat("header_length ", h.header_length, " is not a multiple of 8"));
    }
    if (h.header_length > cluster_size) {
      return Invalid(absl::StrCat("header_length ", h.header_length, " exceeds the cluster size ",
                                  cluster_size));
    }
    if (h.header_length > buf.size()) {
      return Invalid(absl::StrCat("file is truncated: ", buf.size(), " bytes, header_length is ",
                                  h.header_length));
    }
    if (h.header_length > kHeaderV3MinLength) {
      const uint8_t type = static_cast<uint8_t>(p[104]);
      if (type > 1) {
        return absl::UnimplementedError(
            absl::StrCat("compression_type ", type, " is not supported (0 zlib, 1 zstd)"));
      }
      h.compression_type = static_cast<CompressionType>(type);
    }
  }
  if (h.refcount_order > 6) {
    return Invalid(absl::StrCat("refcount_order ", h.refcount_order, " is out of range (0..6)"));
  }
  if (h.crypt_method != 0) {
    return absl::UnimplementedError(
        absl::StrCat("crypt_method ", h.crypt_method, ": encrypted images are not supported"));
  }

  // Backing file name: inside the first cluster, after the header fields.
  if (h.backing_file_offset != 0) {
    if (h.backing_file_offset < h.header_length || h.backing_file_offset > cluster_size) {
      return Invalid(absl::StrCat("backing_file_offset ", h.backing_file_offset,
                                  " is outside the header cluster area (", h.header_length, "..",
                                  cluster_size, ")"));
    }
    if (h.backing_file_size > kMaxBackingFileNameBytes ||
        h.backing_file_size > cluster_size - h.backing_file_offset) {
      return Invalid(absl::StrCat("backing_file_size ", h.backing_file_size, " is too long (max ",
                                  kMaxBackingFileNameBytes, " bytes, inside the first cluster)"));
    }
    if (h.backing_file_offset + h.backing_file_size > buf.size()) {
      return Invalid(absl::StrCat("file is truncated: ", buf.size(),
                                  " bytes, the backing file name ends at ",
                                  h.backing_file_offset + h.backing_file_size));
    }
    h.backing_file = ReadString(buf.subspan(h.backing_file_offset, h.backing_file_size));
  } else if (h.backing_file_size != 0) {
    // QEMU ignores the size when the offset is 0; so do we.
    h.backing_file_size = 0;
  }

  UQ_RETURN_IF_ERROR(ParseExtensions(
      buf, h.header_length, h.backing_file_offset ? h.backing_file_offset : cluster_size, h));

  // Feature bits (after the extensions, so unknown bits can be named).
  const uint64_t unknown_incompat = h.incompatible_features & ~kIncompatKnownMask;
  if (unknown_incompat) {
    std::vector<std::string> bits;
    for (int bit = 0; bit < 64; ++bit) {
      if (!(unknown_incompat & (1ull << bit))) continue;
      std::string name = FeatureBitName(h, 0, static_cast<uint8_t>(bit));
      bits.push_back(name.empty() ? absl::StrCat(bit) : absl::StrCat(bit, " (", name, ")"));
    }
    return absl::UnimplementedError(absl::StrCat(
        "incompatible_features bit ", absl::StrJoin(bits, ", bit "), " is not supported"));
  }
  const bool compression_bit = h.incompatible_features & kIncompatCompression;
  if (h.compression_type == CompressionType::kZstd && !compression_bit) {
    return Invalid("compression_type 1 (zstd) requires incompatible_features bit 3");
  }
  if (h.compression_type == CompressionType::kZlib && compression_bit) {
    return Invalid("incompatible_features bit 3 (compression type) is set with compression_type 0");
  }
  if (h.extended_l2() && h.cluster_bits < 14) {
    return Invalid(absl::StrCat("cluster_bits ", h.cluster_bits,
                                " is too small for extended L2 entries (minimum 14)"));
  }
  if ((h.autoclear_features & kAutoclearDataFileRaw) && !h.has_data_file()) {
    return Invalid(
        "autoclear_features bit 1 (raw external data) is set without an external data file");
  }
  if (h.has_crypto_extension) {
    return absl::UnimplementedError(
        "full disk encryption extension present: encrypted images are not supported");
  }

  // Tables.
  if (h.refcount_table_clusters == 0) {
    return Invalid("refcount_table_clusters 0: the image has no refcount table");
  }
  if (uint64_t{h.refcount_table_clusters} > kMaxRefcountTableBytes / cluster_size) {
    return Invalid(absl::StrCat("refcount_table_clusters ", h.refcount_table_clusters,
                                " is too large (max ", kMaxRefcountTableBytes / cluster_size, ")"));
  }
  const uint64_t reftable_bytes = uint64_t{h.refcount_table_clusters} << h.cluster_bits;
  UQ_RETURN_IF_ERROR(ValidateTable("refcount_table_offset", h.refcount_table_offset, reftable_bytes,
                                   cluster_size, limits.file_size_bytes));

  if (h.nb_snapshots > kMaxSnapshots) {
    return Invalid(
        absl::StrCat("nb_snapshots ", h.nb_snapshots, " is too large (max ", kMaxSnapshots, ")"));
  }
  const uint64_t snapshot_min_bytes = uint64_t{h.nb_snapshots} * kSnapshotHeaderBytes;
  UQ_RETURN_IF_ERROR(ValidateTable("snapshots_offset", h.snapshots_offset, snapshot_min_bytes,
                                   cluster_size, limits.file_size_bytes));

  if (uint64_t{h.l1_size} > kMaxL1Bytes / 8) {
    return Invalid(
        absl::StrCat("l1_size ", h.l1_size, " is too large (max ", kMaxL1Bytes / 8, " entries)"));
  }
  const uint64_t bytes_per_l1_entry = cluster_size * h.l2_entries_per_table();
  const uint64_t l1_needed =
      h.size_bytes / bytes_per_l1_entry + (h.size_bytes % bytes_per_l1_entry != 0);
  if (l1_needed > kMaxL1Bytes / 8) {
    return Invalid(absl::StrCat("size ", h.size_bytes, " is too large for cluster_bits ",
                                h.cluster_bits, " (needs ", l1_needed, " L1 entries)"));
  }
  if (h.l1_size < l1_needed) {
    return Invalid(absl::StrCat("l1_size ", h.l1_size, " is too small for size ", h.size_bytes,
                                " (needs ", l1_needed, ")"));
  }
  const uint64_t l1_bytes = uint64_t{h.l1_size} * 8;
  UQ_RETURN_IF_ERROR(ValidateTable("l1_table_offset", h.l1_table_offset, l1_bytes, cluster_size,
                                   limits.file_size_bytes));

  if (Overlaps(0, cluster_size, h.refcount_table_offset, reftable_bytes)) {
    return Invalid(absl::StrCat("refcount_table_offset ", Hex(h.refcount_table_offset),
                                " overlaps the header cluster"));
  }
  if (Overlaps(0, cluster_size, h.l1_table_offset, l1_bytes)) {
    return Invalid(
        absl::StrCat("l1_table_offset ", Hex(h.l1_table_offset), " overlaps the header cluster"));
  }
  if (Overlaps(0, cluster_size, h.snapshots_offset, snapshot_min_bytes)) {
    return Invalid(
        absl::StrCat("snapshots_offset ", Hex(h.snapshots_offset), " overlaps the header cluster"));
  }
  if (Overlaps(h.l1_table_offset, l1_bytes, h.refcount_table_offset, reftable_bytes)) {
    return Invalid(absl::StrCat("l1_table_offset ", Hex(h.l1_table_offset),
                                " overlaps the refcount table at ", Hex(h.refcount_table_offset)));
  }
  return h;
}

absl::Status EncodeHeader(const Header& h, std::span<std::byte> out) {
  if (h.version != 2 && h.version != 3) {
    return Invalid(absl::StrCat("version ", h.version, " cannot be written (2 or 3)"));
  }
  if (h.cluster_bits < kMinClusterBits || h.cluster_bits > kMaxClusterBits) {
    return Invalid(absl::StrCat("cluster_bits ", h.cluster_bits, " is out of range (",
                                kMinClusterBits, "..", kMaxClusterBits, ")"));
  }
  if (out.size() != h.cluster_size()) {
    return Invalid(absl::StrCat("header buffer is ", out.size(), " bytes, not one cluster (",
                                h.cluster_size(), ")"));
  }
  if (h.version == 2 && (h.incompatible_features || h.compatible_features || h.autoclear_features ||
                         h.refcount_order != 4 || h.compression_type != CompressionType::kZlib)) {
    return Invalid("version 2 cannot carry feature bits, refcount_order other than 4 or zstd");
  }
  if (h.backing_file.size() > kMaxBackingFileNameBytes) {
    return Invalid(absl::StrCat("backing file name is ", h.backing_file.size(), " bytes (max ",
                                kMaxBackingFileNameBytes, ")"));
  }
  std::fill(out.begin(), out.end(), std::byte{0});
  const uint32_t header_length = h.version == 2 ? kHeaderV2Length : kHeaderV3WriteLength;

  // Extensions are assembled first so the backing file offset is known.
  std::vector<std::byte> ext;
  auto add_ext = [&ext](uint32_t type, std::span<const std::byte> data) {
    const size_t at = ext.size();
    ext.resize(at + 8 + ((data.size() + 7) & ~size_t{7}), std::byte{0});
    StoreBE32(ext.data() + at, type);
    StoreBE32(ext.data() + at + 4, static_cast<uint32_t>(data.size()));
    std::copy(data.begin(), data.end(), ext.begin() + at + 8);
  };
  auto as_bytes = [](const std::string& s) {
    return std::span<const std::byte>(reinterpret_cast<const std::byte*>(s.data()), s.size());
  };
  if (h.backing_format) add_ext(kExtBackingFormat, as_bytes(*h.backing_format));
  if (h.data_file) add_ext(kExtDataFile, as_bytes(*h.data_file));
  // QEMU 7.2 (qcow2_update_header) leaves the feature table out at 4 KiB
  // clusters and below, where it would crowd out the backing file name.
  if (h.version == 3 && h.cluster_size() > 4096) {
    std::vector<std::byte> table(std::size(kKnownFeatures) * kFeatureEntryBytes, std::byte{0});
    size_t i = 0;
    for (const KnownFeature& f : kKnownFeatures) {
      std::byte* e = table.data() + i * kFeatureEntryBytes;
      e[0] = std::byte{f.type};
      e[1] = std::byte{f.bit};
      std::memcpy(e + 2, f.name, std::min<size_t>(strlen(f.name), kFeatureNameBytes));
      ++i;
    }
    add_ext(kExtFeatureTable, table);
  }
  for (const HeaderExtension& e : h.opaque_extensions) add_ext(e.type, e.data);
  add_ext(kExtEnd, {});

  const uint64_t backing_offset = h.backing_file.empty() ? 0 : header_length + ext.size();
  const uint64_t used = header_length + ext.size() + h.backing_file.size();
  if (used > out.size()) {
    return Invalid(absl::StrCat("header, extensions and backing file name need ", used,
                                " bytes, more than one cluster (", out.size(), ")"));
  }

  std::byte* p = out.data();
  StoreBE32(p, kQcowMagic);
  StoreBE32(p + 4, h.version);
  StoreBE64(p + 8, backing_offset);
  StoreBE32(p + 16, static_cast<uint32_t>(h.backing_file.size()));
  StoreBE32(p + 20, h.cluster_bits);
  StoreBE64(p + 24, h.size_bytes);
  StoreBE32(p + 32, h.crypt_method);
  StoreBE32(p + 36, h.l1_size);
  StoreBE64(p + 40, h.l1_table_offset);
  StoreBE64(p + 48, h.refcount_table_offset);
  StoreBE32(p + 56, h.refcount_table_clusters);
  StoreBE32(p + 60, h.nb_snapshots);
  StoreBE64(p + 64, h.snapshots_offset);
  if (h.version == 3) {
    StoreBE64(p + 72, h.incompatible_features);
    StoreBE64(p + 80, h.compatible_features);
    StoreBE64(p + 88, h.autoclear_features);
    StoreBE32(p + 96, h.refcount_order);
    StoreBE32(p + 100, header_length);
    p[104] = static_cast<std::byte>(h.compression_type);
  }
  std::copy(ext.begin(), ext.end(), out.begin() + header_length);
  std::memcpy(out.data() + header_length + ext.size(), h.backing_file.data(),
              h.backing_file.size());
  return absl::OkStatus();
}

bool ClearUnknownAutoclear(Header& h) {
  const uint64_t cleared = h.autoclear_features & kAutoclearKnownMask;
  const bool changed = cleared != h.autoclear_features;
  h.autoclear_features = cleared;
  return changed;
}

std::string FeatureBitName(const Header& h, uint8_t type, uint8_t bit) {
  for (const KnownFeature& f : kKnownFeatures) {
    if (f.type == type && f.bit == bit) return f.name;
  }
  for (const FeatureName& f : h.feature_names) {
    if (f.type == type && f.bit == bit) return f.name;
  }
  return "";
}

}  // namespace uq::format
