// Persistent dirty bitmaps (docs/interop/qcow2.txt, "Bitmaps extension" and
// "Bitmap directory"): enough to list them (qemu-img info) and to validate
// what is listed. The extension itself stays opaque in Header and is written
// back verbatim; nothing here modifies bitmaps.
#ifndef UQ_FORMAT_BITMAPS_H_
#define UQ_FORMAT_BITMAPS_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "format/header.h"

namespace uq::format {

inline constexpr uint32_t kBitmapFlagInUse = 1u << 0;
inline constexpr uint32_t kBitmapFlagAuto = 1u << 1;
inline constexpr uint32_t kBitmapFlagExtraDataCompatible = 1u << 2;

// The 24-byte bitmaps header extension.
struct BitmapsExtension {
  uint32_t nb_bitmaps = 0;
  uint64_t directory_size_bytes = 0;
  uint64_t directory_offset = 0;
};

// One bitmap directory entry.
struct BitmapInfo {
  uint64_t table_offset = 0;
  uint32_t table_size = 0;  // entries
  uint32_t flags = 0;
  uint8_t type = 1;  // 1 = dirty tracking bitmap, the only defined type
  uint8_t granularity_bits = 16;
  std::string name;
  std::vector<std::byte> extra_data;
};

// The bitmaps extension of `h` if present and in effect: QEMU ignores it
// when the autoclear "bitmaps" bit is clear (another writer invalidated it).
// Validates QEMU's limits (at most 65535 bitmaps, a directory of at most
// 64 MiB, cluster-aligned offset).
absl::StatusOr<std::optional<BitmapsExtension>> FindBitmapsExtension(const Header& h);

// Decodes `ext.nb_bitmaps` entries from the directory bytes. Rejects
// granularity_bits outside 9..31, unknown types, names over 1023 bytes and
// entries that run past the directory.
absl::StatusOr<std::vector<BitmapInfo>> DecodeBitmapDirectory(std::span<const std::byte> dir,
                                                              const BitmapsExtension& ext,
                                                              uint32_t cluster_bits);

}  // namespace uq::format

#endif  // UQ_FORMAT_BITMAPS_H_
