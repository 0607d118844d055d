#include "tools/amend_zero.h"

#include <cstdint>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "format/endian.h"
#include "format/status_macros.h"
#include "format/tables.h"

namespace uq::tools {

namespace {

// The big-endian 64-bit words of [offset, offset + count * 8); missing bytes
// (past the end of the file) read as zeros.
absl::StatusOr<std::vector<uint64_t>> ReadWords(const PosixFile& file, uint64_t offset,
                                                uint64_t count) {
  UQ_ASSIGN_OR_RETURN(std::vector<std::byte> bytes, file.ReadAt(offset, count * 8));
  bytes.resize(count * 8);
  std::vector<uint64_t> words(count);
  for (uint64_t i = 0; i < count; ++i) words[i] = format::LoadBE64(bytes.data() + i * 8);
  return words;
}

// Every L2 table offset the active and snapshot L1 tables name, once.
absl::StatusOr<std::set<uint64_t>> L2Tables(const PosixFile& file, const format::Header& h,
                                            const std::vector<format::Snapshot>& snapshots) {
  std::vector<std::pair<uint64_t, uint32_t>> l1_tables = {{h.l1_table_offset, h.l1_size}};
  for (const format::Snapshot& s : snapshots) l1_tables.emplace_back(s.l1_table_offset, s.l1_size);
  std::set<uint64_t> l2_offsets;
  for (const auto& [offset, size] : l1_tables) {
    UQ_ASSIGN_OR_RETURN(std::vector<uint64_t> l1, ReadWords(file, offset, size));
    for (uint64_t e : l1) {
      if ((e & format::kOffsetMask) != 0) l2_offsets.insert(e & format::kOffsetMask);
    }
  }
  return l2_offsets;
}

bool IsZero(uint64_t entry) {
  return (entry & format::kOflagZero) && !(entry & format::kOflagCompressed);
}

}  // namespace

absl::StatusOr<L2Census> CensusL2(const PosixFile& file, const format::Header& h,
                                  const std::vector<format::Snapshot>& snapshots) {
  UQ_ASSIGN_OR_RETURN(std::set<uint64_t> l2_offsets, L2Tables(file, h, snapshots));
  L2Census census;
  // Entries are one word each: images with extended L2 never get here (the
  // downgrade refuses them first).
  const uint64_t per_table = h.cluster_size() / 8;
  for (uint64_t l2 : l2_offsets) {
    UQ_ASSIGN_OR_RETURN(std::vector<uint64_t> entries, ReadWords(file, l2, per_table));
    for (uint64_t e : entries) {
      if (e & format::kOflagCompressed) census.compressed_clusters = true;
      if (IsZero(e) && (e & format::kOffsetMask) == 0) census.zero_plain = true;
      if (IsZero(e) && (e & format::kOffsetMask) != 0) census.zero_alloc = true;
    }
  }
  return census;
}

absl::Status ExpandZeroClusters(const PosixFile& file, const format::Header& h,
                                const std::vector<format::Snapshot>& snapshots) {
  UQ_ASSIGN_OR_RETURN(std::set<uint64_t> l2_offsets, L2Tables(file, h, snapshots));
  UQ_ASSIGN_OR_RETURN(uint64_t file_size, file.Size());
  const uint64_t cluster = h.cluster_size();
  const std::vector<std::byte> zeros(cluster);
  for (uint64_t l2 : l2_offsets) {
    UQ_ASSIGN_OR_RETURN(std::vector<std::byte> table, file.ReadAt(l2, cluster));
    if (table.size() != cluster) {
      return absl::InvalidArgumentError(absl::StrCat("L2 table at ", l2, " is past the end"));
    }
    bool changed = false;
    for (uint64_t i = 0; i < cluster / 8; ++i) {
      const uint64_t e = format::LoadBE64(table.data() + i * 8);
      if (!IsZero(e)) continue;
      const uint64_t host = e & format::kOffsetMask;
      if (host != 0) {
        if (host % cluster != 0 || host + cluster > file_size) {
          return absl::InvalidArgumentError(
              absl::StrCat("preallocated zero cluster at ", host, " is not a valid cluster"));
        }
        UQ_RETURN_IF_ERROR(file.WriteAt(host, zeros));
      }
      // Plain: 0 (unallocated). Preallocated: the host cluster, COPIED kept.
      format::StoreBE64(table.data() + i * 8, host == 0 ? 0 : e & ~format::kOflagZero);
      changed = true;
    }
    if (!changed) continue;
    UQ_RETURN_IF_ERROR(file.Sync());  // the zeros, before the entries naming them
    UQ_RETURN_IF_ERROR(file.WriteAt(l2, table));
  }
  return file.Sync();
}

}  // namespace uq::tools
