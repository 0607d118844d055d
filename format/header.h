// The qcow2 image header and its extensions (docs/interop/qcow2.txt,
// "Header" and "Header extensions"), as host-order values.
//
// DecodeHeader validates every field against QEMU's limits (qcow2_do_open) and
// names the field and value in each rejection; it never asserts on disk data.
// EncodeHeader writes header + extensions + backing file name into the first
// cluster, preserving opaque extensions (bitmaps, unknown ones).
#ifndef UQ_FORMAT_HEADER_H_
#define UQ_FORMAT_HEADER_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace uq::format {

inline constexpr uint32_t kQcowMagic = 0x514649fb;  // "QFI\xfb"
inline constexpr uint32_t kHeaderV2Length = 72;
inline constexpr uint32_t kHeaderV3MinLength = 104;
inline constexpr uint32_t kMinClusterBits = 9;
inline constexpr uint32_t kMaxClusterBits = 21;
// QEMU's limits (block/qcow2.h): an L1 table (active or a snapshot's) takes
// at most 32 MiB, the refcount table at most 8 MiB.
inline constexpr uint64_t kMaxL1Bytes = 32ull << 20;
inline constexpr uint64_t kMaxRefcountTableBytes = 8ull << 20;

// Byte offsets of header fields that are updated in place (a write of just
// that field, as QEMU does, never a re-encode of the whole first cluster).
inline constexpr uint64_t kHeaderSizeAt = 24;
inline constexpr uint64_t kHeaderL1SizeAt = 36;               // + l1_table_offset at 40
inline constexpr uint64_t kHeaderRefcountTableOffsetAt = 48;  // + refcount_table_clusters at 56
inline constexpr uint64_t kHeaderNbSnapshotsAt = 60;          // + snapshots_offset at 64
inline constexpr uint64_t kHeaderIncompatibleFeaturesAt = 72;
inline constexpr uint64_t kHeaderAutoclearFeaturesAt = 88;

// Incompatible feature bits.
inline constexpr uint64_t kIncompatDirty = 1ull << 0;
inline constexpr uint64_t kIncompatCorrupt = 1ull << 1;
inline constexpr uint64_t kIncompatDataFile = 1ull << 2;
inline constexpr uint64_t kIncompatCompression = 1ull << 3;
inline constexpr uint64_t kIncompatExtendedL2 = 1ull << 4;
inline constexpr uint64_t kIncompatKnownMask = 0x1f;
// Compatible feature bits.
inline constexpr uint64_t kCompatLazyRefcounts = 1ull << 0;
// Autoclear feature bits.
inline constexpr uint64_t kAutoclearBitmaps = 1ull << 0;
inline constexpr uint64_t kAutoclearDataFileRaw = 1ull << 1;
inline constexpr uint64_t kAutoclearKnownMask = 0x3;

// Header extension types.
inline constexpr uint32_t kExtEnd = 0;
inline constexpr uint32_t kExtBackingFormat = 0xe2792aca;
inline constexpr uint32_t kExtFeatureTable = 0x6803f857;
inline constexpr uint32_t kExtBitmaps = 0x23852875;
inline constexpr uint32_t kExtCrypto = 0x0537be77;
inline constexpr uint32_t kExtDataFile = 0x44415441;

enum class CompressionType : uint8_t { kZlib = 0, kZstd = 1 };

struct FeatureName {
  uint8_t type = 0;  // 0 incompatible, 1 compatible, 2 autoclear
  uint8_t bit = 0;
  std::string name;  // up to 46 bytes
};

struct HeaderExtension {
  uint32_t type = 0;
  std::vector<std::byte> data;
};

struct Header {
  uint32_t version = 3;
  uint64_t backing_file_offset = 0;
  uint32_t backing_file_size = 0;
  uint32_t cluster_bits = 16;
  uint64_t size_bytes = 0;
  uint32_t crypt_method = 0;
  uint32_t l1_size = 0;  // entries
  uint64_t l1_table_offset = 0;
  uint64_t refcount_table_offset = 0;
  uint32_t refcount_table_clusters = 0;
  uint32_t nb_snapshots = 0;
  uint64_t snapshots_offset = 0;
  // Version 3 fields (version 2 reads them as 0 / 4 / 72).
  uint64_t incompatible_features = 0;
  uint64_t compatible_features = 0;
  uint64_t autoclear_features = 0;
  uint32_t refcount_order = 4;
  uint32_t header_length = kHeaderV3MinLength;
  CompressionType compression_type = CompressionType::kZlib;

  // From the extensions and the backing-file-name area.
  std::string backing_file;                   // empty = none
  std::optional<std::string> backing_format;  // kExtBackingFormat
  std::optional<std::string> data_file;       // kExtDataFile
  std::vector<FeatureName> feature_names;     // kExtFeatureTable
  bool has_crypto_extension = false;          // kExtCrypto (unsupported)
  // Bitmaps and unknown extensions, kept verbatim and written back as-is.
  std::vector<HeaderExtension> opaque_extensions;

  uint64_t cluster_size() const { return 1ull << cluster_bits; }
  bool extended_l2() const { return incompatible_features & kIncompatExtendedL2; }
  bool has_data_file() const { return incompatible_features & kIncompatDataFile; }
  // Bytes per L2 entry: 8, or 16 with extended L2.
  uint32_t l2_entry_bytes() const { return extended_l2() ? 16 : 8; }
  uint64_t l2_entries_per_table() const { return cluster_size() / l2_entry_bytes(); }
};

// Options that are not in the header but bound validation.
struct DecodeLimits {
  uint64_t file_size_bytes = 0;  // of the image file (not the data file)
};

// Decodes and validates a header from the start of the image file. `buf` must
// hold at least the first cluster or the whole file if it is shorter; a buffer
// shorter than the fixed header is "truncated". Unknown incompatible bits are
// rejected naming the bit (and its name from the feature table, if any).
// The dirty and corrupt bits are accepted: acting on them (refcount rebuild,
// refusing a writable open) is the engine's job. With limits.file_size_bytes
// == 0 the end-of-file checks of the tables are skipped.
// Error codes: kUnimplemented for unsupported features (version, encryption,
// unknown incompatible bits, compression type), kInvalidArgument otherwise.
absl::StatusOr<Header> DecodeHeader(std::span<const std::byte> buf, const DecodeLimits& limits);

// The number of bytes DecodeHeader wants to see: the first cluster, read after
// peeking at cluster_bits (bytes 20..23). Returns an error for a buffer too
// short to hold cluster_bits or for an out-of-range cluster_bits.
absl::StatusOr<uint64_t> HeaderReadSize(std::span<const std::byte> first_bytes);

// Encodes header, extensions (backing format, feature table for the known
// bits when clusters are larger than 4 KiB, as QEMU, data file, opaque ones) and the backing file
// name into `out`, which must be one cluster. Sets header_length (72 for v2, 112 for v3 like QEMU,
// with compression_type at byte 104) / backing_file_offset / size
// consistently; h.header_length and h.feature_names are ignored (the feature
// table written names the known bits). Fails if it does not fit in one
// cluster.
absl::Status EncodeHeader(const Header& h, std::span<std::byte> out);

// Clears unknown autoclear bits, as the spec requires of a writer that opens
// the image read-write. Returns true if anything changed.
bool ClearUnknownAutoclear(Header& h);

// Human name of a feature bit as QEMU writes it in the feature name table
// ("dirty bit", "corrupt bit", "external data file", "compression type",
// "extended L2 entries", "lazy refcounts", "bitmaps", "raw external data"), or
// the name from the image's feature table for other bits, or "".
std::string FeatureBitName(const Header& h, uint8_t type, uint8_t bit);

}  // namespace uq::format

#endif  // UQ_FORMAT_HEADER_H_
