#include "tools/sparse_runs.h"

#include <algorithm>
#include <bit>
#include <cstring>

namespace uq::tools {

namespace {

constexpr uint64_t kSector = 512;

bool SectorIsZero(std::span<const std::byte> bytes, uint64_t sector) {
  const uint64_t begin = sector * kSector;
  const uint64_t end = std::min<uint64_t>(bytes.size(), begin + kSector);
  // Word at a time, stopping at the first non-zero word: data sectors (most
  // of what convert reads) cost one load.
  uint64_t i = begin;
  for (; i + 8 <= end; i += 8) {
    uint64_t word;
    std::memcpy(&word, bytes.data() + i, 8);
    if (word != 0) return false;
  }
  for (; i < end; ++i) {
    if (bytes[i] != std::byte{0}) return false;
  }
  return true;
}

// The stretch of sectors from `first` (of `count`) that share the first
// one's zero status, with its end moved to an alignment boundary.
SparseRun Stretch(std::span<const std::byte> bytes, uint64_t first, uint64_t count,
                  uint64_t first_abs_sector, uint64_t alignment) {
  const bool zero = SectorIsZero(bytes, first);
  uint64_t n = 1;
  while (first + n < count && SectorIsZero(bytes, first + n) == zero) ++n;
  bool data = !zero;
  const uint64_t tail = (first_abs_sector + n) & (alignment - 1);
  if (tail != 0) {
    // A zero stretch that is only the tail of an alignment block is written
    // with its data (it is too short to leave out).
    if (!data && n <= tail) data = true;
    n = data ? std::min(n + alignment - tail, count - first) : n - tail;
  }
  return SparseRun{n, data};
}

}  // namespace

SparseRun NextSparseRun(std::span<const std::byte> bytes, uint64_t offset_bytes,
                        uint32_t min_sectors, uint32_t alignment_sectors) {
  const uint64_t count = (bytes.size() + kSector - 1) / kSector;
  if (count == 0) return SparseRun{};
  const uint64_t base = offset_bytes / kSector;
  const uint64_t min = std::min<uint64_t>(min_sectors, count);
  SparseRun first = Stretch(bytes, 0, count, base, alignment_sectors);
  uint64_t used = first.length_bytes;
  if (first.data) {
    uint64_t checked = used;
    while (checked < count) {
      SparseRun next = Stretch(bytes, checked, count, base + checked, alignment_sectors);
      checked += next.length_bytes;
      if (next.data) {
        used = checked;
      } else if (next.length_bytes >= min) {
        break;
      }
    }
  }
  return SparseRun{std::min<uint64_t>(used * kSector, bytes.size()), first.data};
}

uint32_t PowerOfTwoFloor(uint32_t n) { return std::bit_floor(n); }

}  // namespace uq::tools
