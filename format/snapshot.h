// Internal snapshot table entries (docs/interop/qcow2.txt, "Snapshots").
#ifndef UQ_FORMAT_SNAPSHOT_H_
#define UQ_FORMAT_SNAPSHOT_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace uq::format {

struct Snapshot {
  uint64_t l1_table_offset = 0;
  uint32_t l1_size = 0;
  std::string id;
  std::string name;
  uint32_t date_sec = 0;
  uint32_t date_nsec = 0;
  uint64_t vm_clock_nsec = 0;
  uint32_t vm_state_size = 0;
  // Extra data (first 8: vm_state_size_large, next 8: disk_size, next 8:
  // icount); kept verbatim so unknown trailing fields survive a rewrite.
  std::vector<std::byte> extra_data;
  uint64_t disk_size_bytes() const;  // from extra data, or 0 if absent
};

// Decodes `count` entries from `buf` (the snapshot table). Each entry is
// validated (L1 offset aligned, sizes bounded, not past buf). Entries are
// padded to 8 bytes.
absl::StatusOr<std::vector<Snapshot>> DecodeSnapshotTable(std::span<const std::byte> buf,
                                                          uint32_t count, uint32_t cluster_bits);
size_t SnapshotTableSize(const std::vector<Snapshot>& snaps);
// REQUIRES: out.size() >= SnapshotTableSize(snaps); the rest is zeroed.
void EncodeSnapshotTable(const std::vector<Snapshot>& snaps, std::span<std::byte> out);

}  // namespace uq::format

#endif  // UQ_FORMAT_SNAPSHOT_H_
