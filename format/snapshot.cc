#include "format/snapshot.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "format/endian.h"

namespace uq::format {
namespace {

constexpr size_t kEntryFixedBytes = 40;
// QEMU's limits: QCOW_MAX_SNAPSHOT_EXTRA_DATA and an L1 table of 32 MiB.
constexpr uint32_t kMaxExtraDataBytes = 1024;
constexpr uint64_t kMaxL1Entries = (32ull << 20) / 8;

size_t EntrySize(size_t extra, size_t id, size_t name) {
  return (kEntryFixedBytes + extra + id + name + 7) & ~size_t{7};
}

}  // namespace

uint64_t Snapshot::disk_size_bytes() const {
  if (extra_data.size() < 16) return 0;
  return LoadBE64(extra_data.data() + 8);
}

absl::StatusOr<std::vector<Snapshot>> DecodeSnapshotTable(std::span<const std::byte> buf,
                                                          uint32_t count, uint32_t cluster_bits) {
  std::vector<Snapshot> snaps;
  snaps.reserve(std::min<uint32_t>(count, 1024));
  const uint64_t cluster_mask = (uint64_t{1} << cluster_bits) - 1;
  size_t offset = 0;
  for (uint32_t i = 0; i < count; ++i) {
    if (buf.size() - offset < kEntryFixedBytes) {
      return absl::InvalidArgumentError(absl::StrCat("snapshot ", i, " at table offset ", offset,
                                                     " is truncated (table is ", buf.size(),
                                                     " bytes)"));
    }
    const std::byte* p = buf.data() + offset;
    Snapshot s;
    s.l1_table_offset = LoadBE64(p);
    s.l1_size = LoadBE32(p + 8);
    const uint16_t id_size = LoadBE16(p + 12);
    const uint16_t name_size = LoadBE16(p + 14);
    s.date_sec = LoadBE32(p + 16);
    s.date_nsec = LoadBE32(p + 20);
    s.vm_clock_nsec = LoadBE64(p + 24);
    s.vm_state_size = LoadBE32(p + 32);
    const uint32_t extra_size = LoadBE32(p + 36);
    if (extra_size > kMaxExtraDataBytes) {
      return absl::InvalidArgumentError(absl::StrCat("snapshot ", i, " extra_data_size ",
                                                     extra_size, " is too large (max ",
                                                     kMaxExtraDataBytes, ")"));
    }
    if (s.l1_table_offset & cluster_mask) {
      return absl::InvalidArgumentError(absl::StrCat("snapshot ", i, " l1_table_offset ",
                                                     s.l1_table_offset, " is not cluster aligned"));
    }
    if (s.l1_size > kMaxL1Entries) {
      return absl::InvalidArgumentError(absl::StrCat("snapshot ", i, " l1_size ", s.l1_size,
                                                     " is too large (max ", kMaxL1Entries, ")"));
    }
    // The padding after the last entry may be missing (QEMU skips it only
    // between entries), so only the unpadded entry must fit.
    const size_t size = kEntryFixedBytes + extra_size + id_size + name_size;
    if (size > buf.size() - offset) {
      return absl::InvalidArgumentError(absl::StrCat("snapshot ", i, " needs ", size,
                                                     " bytes at table offset ", offset,
                                                     ", past the table end ", buf.size()));
    }
    const std::byte* q = p + kEntryFixedBytes;
    s.extra_data.assign(q, q + extra_size);
    q += extra_size;
    s.id.assign(reinterpret_cast<const char*>(q), id_size);
    q += id_size;
    s.name.assign(reinterpret_cast<const char*>(q), name_size);
    offset = std::min(buf.size(), offset + EntrySize(extra_size, id_size, name_size));
    snaps.push_back(std::move(s));
  }
  return snaps;
}

size_t SnapshotTableSize(const std::vector<Snapshot>& snaps) {
  size_t total = 0;
  for (const Snapshot& s : snaps)
    total += EntrySize(s.extra_data.size(), s.id.size(), s.name.size());
  return total;
}

void EncodeSnapshotTable(const std::vector<Snapshot>& snaps, std::span<std::byte> out) {
  std::fill(out.begin(), out.end(), std::byte{0});
  size_t offset = 0;
  for (const Snapshot& s : snaps) {
    std::byte* p = out.data() + offset;
    StoreBE64(p, s.l1_table_offset);
    StoreBE32(p + 8, s.l1_size);
    StoreBE16(p + 12, static_cast<uint16_t>(s.id.size()));
    StoreBE16(p + 14, static_cast<uint16_t>(s.name.size()));
    StoreBE32(p + 16, s.date_sec);
    StoreBE32(p + 20, s.date_nsec);
    StoreBE64(p + 24, s.vm_clock_nsec);
    StoreBE32(p + 32, s.vm_state_size);
    StoreBE32(p + 36, static_cast<uint32_t>(s.extra_data.size()));
    std::byte* q = p + kEntryFixedBytes;
    q = std::copy(s.extra_data.begin(), s.extra_data.end(), q);
    q = std::copy(reinterpret_cast<const std::byte*>(s.id.data()),
                  reinterpret_cast<const std::byte*>(s.id.data()) + s.id.size(), q);
    std::copy(reinterpret_cast<const std::byte*>(s.name.data()),
              reinterpret_cast<const std::byte*>(s.name.data()) + s.name.size(), q);
    offset += EntrySize(s.extra_data.size(), s.id.size(), s.name.size());
  }
}

}  // namespace uq::format
