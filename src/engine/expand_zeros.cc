// CensusL2 and ExpandZeroClusters (expand_zeros.h).
#include "src/engine/expand_zeros.h"

#include <cstdint>
#include <cstring>
#include <set>
#include <span>
#include <utility>

#include "absl/strings/str_cat.h"
#include "format/endian.h"
#include "format/status_macros.h"
#include "format/tables.h"
#include "src/engine/check_internal.h"

namespace uq::engine {

namespace {

// The big-endian 64-bit words of [offset, offset + count * 8); missing bytes
// (past the end of the file) read as zeros (BlockFile's contract).
Task<absl::StatusOr<std::vector<uint64_t>>> ReadWords(io::BlockFile& file, uint64_t offset,
                                                      uint64_t count) {
  std::vector<std::byte> bytes(count * 8);
  UQ_CO_RETURN_IF_ERROR(co_await check_internal::ReadAt(file, offset, bytes));
  std::vector<uint64_t> words(count);
  for (uint64_t i = 0; i < count; ++i) words[i] = format::LoadBE64(bytes.data() + i * 8);
  co_return words;
}

// Every L2 table offset the active and snapshot L1 tables name, once.
Task<absl::StatusOr<std::set<uint64_t>>> L2Tables(io::BlockFile& file, const format::Header& h,
                                                  const std::vector<format::Snapshot>& snapshots) {
  std::vector<std::pair<uint64_t, uint32_t>> l1_tables = {{h.l1_table_offset, h.l1_size}};
  for (const format::Snapshot& s : snapshots) l1_tables.emplace_back(s.l1_table_offset, s.l1_size);
  std::set<uint64_t> l2_offsets;
  for (const auto& [offset, size] : l1_tables) {
    UQ_CO_ASSIGN_OR_RETURN(std::vector<uint64_t> l1, co_await ReadWords(file, offset, size));
    for (uint64_t e : l1) {
      if ((e & format::kOffsetMask) != 0) l2_offsets.insert(e & format::kOffsetMask);
    }
  }
  co_return l2_offsets;
}

bool IsZero(uint64_t entry) {
  return (entry & format::kOflagZero) && !(entry & format::kOflagCompressed);
}

Task<absl::Status> FlushFile(io::BlockFile& file) {
  const int r = co_await file.Flush();
  if (r < 0) {
    co_return absl::DataLossError(absl::StrCat("flush failed: ", std::strerror(-r)));
  }
  co_return absl::OkStatus();
}

}  // namespace

Task<absl::StatusOr<L2Census>> CensusL2(io::BlockFile& file, const format::Header& h,
                                        const std::vector<format::Snapshot>& snapshots) {
  UQ_CO_ASSIGN_OR_RETURN(std::set<uint64_t> l2_offsets, co_await L2Tables(file, h, snapshots));
  L2Census census;
  // Entries are one word each: images with extended L2 never get here (the
  // downgrade refuses them first).
  const uint64_t per_table = h.cluster_size() / 8;
  for (uint64_t l2 : l2_offsets) {
    UQ_CO_ASSIGN_OR_RETURN(std::vector<uint64_t> entries, co_await ReadWords(file, l2, per_table));
    for (uint64_t e : entries) {
      if (e & format::kOflagCompressed) census.compressed_clusters = true;
      if (IsZero(e) && (e & format::kOffsetMask) == 0) census.zero_plain = true;
      if (IsZero(e) && (e & format::kOffsetMask) != 0) census.zero_alloc = true;
    }
  }
  co_return census;
}

Task<absl::Status> ExpandZeroClusters(io::BlockFile& file, const format::Header& h,
                                      const std::vector<format::Snapshot>& snapshots) {
  UQ_CO_ASSIGN_OR_RETURN(std::set<uint64_t> l2_offsets, co_await L2Tables(file, h, snapshots));
  const uint64_t file_size = file.size_bytes();
  const uint64_t cluster = h.cluster_size();
  const std::vector<std::byte> zeros(cluster);
  std::vector<std::byte> table(cluster);
  for (uint64_t l2 : l2_offsets) {
    // A table the file does not hold whole: nothing to rewrite in place
    // (reads past the end would only make up zeros).
    if (l2 + cluster > file_size) {
      co_return absl::InvalidArgumentError(absl::StrCat("L2 table at ", l2, " is past the end"));
    }
    UQ_CO_RETURN_IF_ERROR(co_await check_internal::ReadAt(file, l2, table));
    bool changed = false;
    for (uint64_t i = 0; i < cluster / 8; ++i) {
      const uint64_t e = format::LoadBE64(table.data() + i * 8);
      if (!IsZero(e)) continue;
      const uint64_t host = e & format::kOffsetMask;
      if (host != 0) {
        if (host % cluster != 0 || host + cluster > file_size) {
          co_return absl::InvalidArgumentError(
              absl::StrCat("preallocated zero cluster at ", host, " is not a valid cluster"));
        }
        UQ_CO_RETURN_IF_ERROR(co_await check_internal::WriteAt(file, host, zeros));
      }
      // Plain: 0 (unallocated). Preallocated: the host cluster, COPIED kept.
      format::StoreBE64(table.data() + i * 8, host == 0 ? 0 : e & ~format::kOflagZero);
      changed = true;
    }
    if (!changed) continue;
    UQ_CO_RETURN_IF_ERROR(co_await FlushFile(file));  // the zeros, before the entries naming them
    UQ_CO_RETURN_IF_ERROR(co_await check_internal::WriteAt(file, l2, table));
  }
  co_return co_await FlushFile(file);
}

}  // namespace uq::engine
