// Reading a disk's bytes for inspection (partition tables, file system
// superblocks) without attaching it, and little-endian field access for the
// on-disk structures found there (MBR, GPT, ext4, FAT ... are little-endian).
//
// Everything read through a DiskReader is untrusted: callers bounds-check each
// offset and count taken from it before using it.
#ifndef UQ_SRC_CLI_DISK_READER_H_
#define UQ_SRC_CLI_DISK_READER_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>

#include "absl/status/status.h"

namespace uq::cli {

// Bytes per sector of the devices ublk-qcow2 serves (and of sfdisk's "unit":
// "sectors" for them).
inline constexpr uint32_t kSectorBytes = 512;

// A disk: its size and a way to read `out.size()` bytes at `offset_bytes`.
// Read fails for a range that is not inside the disk.
struct DiskReader {
  uint64_t size_bytes = 0;
  std::function<absl::Status(uint64_t offset_bytes, std::span<uint8_t> out)> read;

  uint64_t size_sectors() const { return size_bytes / kSectorBytes; }
  // Whether [offset, offset + length) lies inside the disk (no overflow).
  bool Contains(uint64_t offset_bytes, uint64_t length_bytes) const {
    return offset_bytes <= size_bytes && length_bytes <= size_bytes - offset_bytes;
  }
};

// Little-endian loads; REQUIRES: `at + width <= b.size()`.
inline uint16_t LoadLE16(std::span<const uint8_t> b, size_t at) {
  return static_cast<uint16_t>(b[at] | (b[at + 1] << 8));
}
inline uint32_t LoadLE32(std::span<const uint8_t> b, size_t at) {
  return static_cast<uint32_t>(LoadLE16(b, at)) |
         (static_cast<uint32_t>(LoadLE16(b, at + 2)) << 16);
}
inline uint64_t LoadLE64(std::span<const uint8_t> b, size_t at) {
  return static_cast<uint64_t>(LoadLE32(b, at)) |
         (static_cast<uint64_t>(LoadLE32(b, at + 4)) << 32);
}

}  // namespace uq::cli

#endif  // UQ_SRC_CLI_DISK_READER_H_
