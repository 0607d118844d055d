// SwitchTrees (check.h): a snapshot change built out of place and switched
// with one header write, for images without a dirty bit.
#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "format/endian.h"
#include "format/snapshot.h"
#include "format/status_macros.h"
#include "format/tables.h"
#include "src/engine/check.h"
#include "src/engine/check_internal.h"

namespace uq::engine {
namespace {

using check_internal::ReadAt;
using check_internal::Scan;
using check_internal::WriteAt;

uint64_t RoundUp(uint64_t v, uint64_t to) { return (v + to - 1) / to * to; }

// Sets COPIED in the entries of an L2 table exactly where the counted
// refcount of the data cluster is 1 (what the stored refcounts will say).
// Returns true if anything changed.
bool FixCopied(const Scan& s, std::span<std::byte> table) {
  const uint32_t step = s.h.l2_entry_bytes();
  bool changed = false;
  for (size_t at = 0; at + step <= table.size(); at += step) {
    const uint64_t raw = format::LoadBE64(&table[at]);
    const uint64_t bitmap = s.h.extended_l2() ? format::LoadBE64(&table[at + 8]) : 0;
    auto e = format::DecodeL2Entry(raw, bitmap, s.h.cluster_bits, s.h.extended_l2());
    if (!e.ok() || e->host_offset == 0) continue;
    if (e->type != format::ClusterType::kNormal && e->type != format::ClusterType::kZeroAlloc) {
      continue;
    }
    const uint64_t cluster = e->host_offset / s.cluster_bytes;
    const uint64_t refcount = cluster < s.refs.size() ? s.refs.Get(cluster) : 0;
    const uint64_t want = refcount == 1 ? raw | format::kOflagCopied : raw & ~format::kOflagCopied;
    if (want == raw) continue;
    format::StoreBE64(&table[at], want);
    changed = true;
  }
  return changed;
}

// Hands out clusters the old state references nothing in (counted with its
// refcount structures), lowest first: the holes its frees left, then past
// the end of the file. Never the same cluster twice.
class Placer {
 public:
  explicit Placer(const check_internal::RefcountArray& old) : old_(old) {}
  // The first of `count` consecutive such clusters at or after the last
  // ones handed out.
  uint64_t Take(uint64_t count) {
    uint64_t run = 0;
    while (run < count) {
      const uint64_t c = next_ + run;
      if (c < old_.size() && old_.Get(c) != 0) {
        next_ = c + 1;
        run = 0;
      } else {
        ++run;
      }
    }
    const uint64_t first = next_;
    next_ += count;
    return first;
  }

 private:
  const check_internal::RefcountArray& old_;
  uint64_t next_ = 0;
};

// Refcount blocks and a table for s.refs, where `place` puts them: the
// blocks must count every cluster in use, themselves and the table included.
Task<absl::Status> PlaceRefcountStructure(Scan& s, Placer& place, format::Header* h) {
  const uint64_t cs = s.cluster_bytes;
  const uint64_t per_block = check_internal::RefcountsPerBlock(s);
  uint64_t covered = std::max(s.refs.size(), s.file_clusters());
  std::vector<uint64_t> block_at;
  uint64_t table_at = 0;
  uint64_t table_clusters = 0;
  for (;;) {
    const uint64_t blocks = std::max<uint64_t>(1, (covered + per_block - 1) / per_block);
    while (block_at.size() < blocks) {
      block_at.push_back(place.Take(1));
      covered = std::max(covered, block_at.back() + 1);
    }
    const uint64_t need = std::max<uint64_t>(1, (block_at.size() * 8 + cs - 1) / cs);
    if (need > table_clusters) {  // a shorter run taken before stays unused
      table_at = place.Take(need);
      table_clusters = need;
      covered = std::max(covered, table_at + need);
    }
    if ((covered + per_block - 1) / per_block <= block_at.size()) break;
  }
  co_return co_await check_internal::WriteRefcountStructureAt(s, block_at, table_at, table_clusters,
                                                              h);
}

std::vector<std::byte> EncodeL1(const std::vector<uint64_t>& l1, uint64_t cluster_bytes) {
  std::vector<std::byte> buf(RoundUp(l1.size() * 8, cluster_bytes));
  for (size_t i = 0; i < l1.size(); ++i) format::StoreBE64(&buf[i * 8], l1[i]);
  return buf;
}

// Everything SwitchTrees does up to and including the header write.
Task<absl::Status> Switch(io::BlockFile& file, format::Header& header, const NewTrees& trees,
                          bool* header_written) {
  const uint64_t cs = uint64_t{1} << header.cluster_bits;
  const uint64_t file_bytes = file.size_bytes();
  format::Header h = header;

  // What the old state references, so the new tables go where it references
  // nothing (a crash before the switch leaves it as it was).
  Scan old(file, header, nullptr);
  UQ_CO_ASSIGN_OR_RETURN(old.snapshots, co_await ReadSnapshotTable(file, header));
  old.snapshots_size = old.snapshots.empty() ? 0 : format::SnapshotTableSize(old.snapshots);
  UQ_CO_RETURN_IF_ERROR(co_await check_internal::LoadRefcountTable(old));
  old.refs.Grow(old.file_clusters());
  UQ_CO_RETURN_IF_ERROR(co_await check_internal::CountReferences(old, RepairMode::kNone));
  UQ_CO_RETURN_IF_ERROR(check_internal::NoCorruptions(old, "cannot change the snapshots"));
  Placer place(old.refs);

  if (trees.size_bytes) h.size_bytes = *trees.size_bytes;
  // A copy of every L2 table the new active L1 table names.
  std::vector<uint64_t> l1 = trees.active_l1;
  std::vector<uint64_t> copies;
  std::vector<std::byte> table(cs);
  for (size_t i = 0; i < l1.size(); ++i) {
    const uint64_t from = l1[i] & format::kOffsetMask;
    if (from == 0) {
      l1[i] = 0;
      continue;
    }
    if (from % cs != 0 || from >= file_bytes) {
      co_return absl::DataLossError(absl::StrCat("L1 entry ", i, " names an L2 table at ", from,
                                                 ", unaligned or past the end of the file"));
    }
    UQ_CO_RETURN_IF_ERROR(co_await ReadAt(file, from, table));
    l1[i] = place.Take(1) * cs;
    UQ_CO_RETURN_IF_ERROR(co_await WriteAt(file, l1[i], table));
    copies.push_back(l1[i]);
  }
  h.l1_size = static_cast<uint32_t>(l1.size());
  std::vector<std::byte> l1_bytes = EncodeL1(l1, cs);
  h.l1_table_offset = l1.empty() ? 0 : place.Take(l1_bytes.size() / cs) * cs;
  if (!l1_bytes.empty()) UQ_CO_RETURN_IF_ERROR(co_await WriteAt(file, h.l1_table_offset, l1_bytes));

  std::vector<format::Snapshot> snapshots;
  if (trees.snapshots != nullptr) {
    snapshots = *trees.snapshots;
    std::vector<std::byte> st(RoundUp(format::SnapshotTableSize(snapshots), cs));
    format::EncodeSnapshotTable(snapshots, st);
    h.nb_snapshots = static_cast<uint32_t>(snapshots.size());
    h.snapshots_offset = snapshots.empty() ? 0 : place.Take(st.size() / cs) * cs;
    if (!snapshots.empty()) UQ_CO_RETURN_IF_ERROR(co_await WriteAt(file, h.snapshots_offset, st));
  } else {
    snapshots = old.snapshots;
  }

  // The references of the new state, counted as the dirty-image rebuild
  // counts them: the old refcount structures, the old active tables and
  // whatever else the new state does not name become free.
  Scan s(file, h, nullptr);
  s.count_refcount_structures = false;
  s.snapshots = snapshots;
  s.snapshots_size = snapshots.empty() ? 0 : format::SnapshotTableSize(snapshots);
  s.refs.Grow(s.file_clusters());
  UQ_CO_RETURN_IF_ERROR(co_await check_internal::CountReferences(s, RepairMode::kNone));
  UQ_CO_RETURN_IF_ERROR(check_internal::NoCorruptions(s, "cannot change the snapshots"));
  // COPIED flags from those counts, in tables nothing names yet.
  for (const uint64_t at : copies) {
    UQ_CO_RETURN_IF_ERROR(co_await ReadAt(file, at, table));
    if (FixCopied(s, table)) UQ_CO_RETURN_IF_ERROR(co_await WriteAt(file, at, table));
  }
  for (size_t i = 0; i < l1.size(); ++i) {
    if (l1[i] == 0) continue;
    const uint64_t cluster = l1[i] / cs;
    if (s.refs.Get(cluster) == 1) l1[i] |= format::kOflagCopied;
    format::StoreBE64(&l1_bytes[i * 8], l1[i]);
  }
  if (!l1_bytes.empty()) UQ_CO_RETURN_IF_ERROR(co_await WriteAt(file, h.l1_table_offset, l1_bytes));

  // Refcount blocks for the new state, flushed with all of it; then the one
  // header write that switches L1 table, refcount table and snapshot table
  // (and the disk size, if it changes) together.
  UQ_CO_RETURN_IF_ERROR(co_await PlaceRefcountStructure(s, place, &h));
  *header_written = true;
  const check_internal::HeaderFields fields{.size = trees.size_bytes.has_value(), .l1_table = true};
  UQ_CO_RETURN_IF_ERROR(co_await check_internal::SwitchHeader(s, h, fields));
  header = h;
  co_return absl::OkStatus();
}

}  // namespace

Task<absl::Status> SwitchTrees(io::BlockFile& file, format::Header& header, const NewTrees& trees,
                               bool* header_written) {
  *header_written = false;
  const uint64_t file_bytes = file.size_bytes();
  absl::Status st = co_await Switch(file, header, trees, header_written);
  // Nothing names what was written: give the space back (best effort).
  if (!st.ok() && !*header_written && file.size_bytes() > file_bytes) {
    (void)co_await file.Truncate(file_bytes);
  }
  co_return st;
}

}  // namespace uq::engine
