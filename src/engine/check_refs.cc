// Counting every reference to a host cluster (QEMU's calculate_refcounts),
// with the checks qemu-img 7.2 makes on the way. The problem lines use
// qemu-img's words so the two tools' stderr can be read side by side.
#include <algorithm>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "format/bitmaps.h"
#include "format/endian.h"
#include "format/status_macros.h"
#include "format/tables.h"
#include "src/engine/check_internal.h"

namespace uq::engine::check_internal {
namespace {

// Entry layouts (docs/interop/qcow2.txt).
constexpr uint64_t kL1ReservedMask = 0x7f000000000001ffull;
constexpr uint64_t kL2StdReservedMask = 0x3f000000000001feull;
constexpr uint64_t kRefTableReservedMask = 0x1ffull;
constexpr uint64_t kRefTableOffsetMask = 0xfffffffffffffe00ull;
constexpr uint64_t kAllAllocated = 0xffffffffull;       // extended L2: bits 0..31
constexpr uint64_t kAllZeroes = 0xffffffff00000000ull;  // extended L2: bits 32..63
constexpr uint64_t kBitmapEntryReservedMask = 0xff000000000001feull;
constexpr uint64_t kBitmapEntryAllOnes = 1;
constexpr uint64_t kTableChunkBytes = 64 << 10;

enum class Kind { kUnallocated, kZeroPlain, kZeroAlloc, kNormal, kCompressed };

// The cluster type QEMU derives from an L2 entry (bitmap aside).
Kind KindOf(const format::Header& h, uint64_t entry) {
  if (entry & format::kOflagCompressed) return Kind::kCompressed;
  const uint64_t offset = entry & format::kOffsetMask;
  if ((entry & format::kOflagZero) && !h.extended_l2()) {
    return offset != 0 ? Kind::kZeroAlloc : Kind::kZeroPlain;
  }
  if (offset == 0) {
    // With an external data file, offset 0 is a real cluster when COPIED.
    return h.has_data_file() && (entry & format::kOflagCopied) ? Kind::kNormal : Kind::kUnallocated;
  }
  return Kind::kNormal;
}

bool Overlaps(uint64_t a, uint64_t a_len, uint64_t b, uint64_t b_len) {
  return a_len != 0 && b_len != 0 && a < b + b_len && b < a + a_len;
}

// QEMU's metadata overlap check ("cached" mode) for a write of [offset,
// offset+length) into an L2 table: the header, L1 tables, refcount table and
// blocks, and the snapshot table must stay untouched.
bool OverlapsMetadata(const Scan& s, uint64_t offset, uint64_t length) {
  const uint64_t cs = s.cluster_bytes;
  if (offset < cs) return true;
  if (Overlaps(offset, length, s.h.l1_table_offset, uint64_t{s.h.l1_size} * 8)) return true;
  if (Overlaps(offset, length, s.h.refcount_table_offset,
               uint64_t{s.h.refcount_table_clusters} * cs)) {
    return true;
  }
  if (Overlaps(offset, length, s.h.snapshots_offset, s.snapshots_size)) return true;
  for (const format::Snapshot& sn : s.snapshots) {
    if (Overlaps(offset, length, sn.l1_table_offset, uint64_t{sn.l1_size} * 8)) return true;
  }
  for (uint64_t raw : s.reftable) {
    const uint64_t block = raw & kRefTableOffsetMask;
    if (block != 0 && Overlaps(offset, length, block, cs)) return true;
  }
  return false;
}

// QEMU's qcow2_inc_refcounts_imrt.
void Inc(Scan& s, uint64_t offset, uint64_t size) {
  if (size == 0) return;
  const uint64_t cs = s.cluster_bytes;
  // The last cluster may be partly written, so a reference may end inside
  // the cluster after the end of the file, not further.
  if (offset > UINT64_MAX - size - cs || offset + size >= s.file.size_bytes() + cs) {
    s.Corruption(absl::StrFormat(
        "ERROR: counting reference for region exceeding the end of the file by one cluster "
        "or more: offset 0x%x size 0x%x",
        offset, size));
    return;
  }
  for (uint64_t c = offset / cs; c <= (offset + size - 1) / cs; ++c) {
    s.refs.Grow(c + 1);
    const uint64_t v = s.refs.Get(c);
    if (v == s.refs.max()) {
      s.Corruption(absl::StrFormat("ERROR: overflow cluster offset=0x%x", c * cs));
      s.Message(
          "Use qemu-img amend to increase the refcount entry width or qemu-img convert to create "
          "a clean copy if the image cannot be opened for writing");
      continue;
    }
    s.refs.Set(c, v + 1);
  }
}

// QEMU's fix_l2_entry_by_zero: entry `index` of the L2 table at `l2_offset`
// becomes a plain zero cluster. *overlap: the write would hit metadata (the
// caller stops checking then, as QEMU does).
Task<absl::Status> FixL2EntryByZero(Scan& s, uint64_t l2_offset, uint64_t index, bool* overlap) {
  const bool ext = s.h.extended_l2();
  const uint64_t entry_bytes = s.h.l2_entry_bytes();
  const uint64_t at = l2_offset + index * entry_bytes;
  *overlap = OverlapsMetadata(s, at, entry_bytes);
  if (*overlap) {
    s.Message("ERROR: Overlap check failed");
    ++s.counts.check_errors;
    co_return absl::DataLossError("an L2 entry to repair overlaps other metadata");
  }
  std::byte buf[16];
  format::StoreBE64(buf, ext ? 0 : format::kOflagZero);
  format::StoreBE64(buf + 8, kAllZeroes);
  absl::Status st = co_await WriteAt(s.file, at, std::span<const std::byte>(buf, entry_bytes));
  if (st.ok() && co_await s.file.Flush() < 0) st = absl::DataLossError("flush failed");
  if (!st.ok()) {
    s.Message(absl::StrCat("ERROR: Failed to overwrite L2 table entry: ", st.message()));
    ++s.counts.check_errors;
    co_return st;
  }
  --s.counts.corruptions;
  ++s.counts.corruptions_fixed;
  co_return absl::OkStatus();
}

struct L2Walk {
  uint64_t l2_offset;
  bool frag_info;  // the active layer: count allocated / fragmented / compressed
  RepairMode fix;
  uint64_t next_contiguous = 0;
};

void CountCompressed(Scan& s, const L2Walk& w, uint64_t entry, uint64_t bitmap, uint64_t index) {
  const format::CompressedDescriptor d =
      format::DecodeCompressedDescriptor(entry & ~format::kOflagCopied, s.h.cluster_bits);
  if (entry & format::kOflagCopied) {
    s.Corruption(absl::StrFormat(
        "ERROR: coffset=0x%x: copied flag must never be set for compressed clusters",
        d.host_offset));
  }
  if (s.h.has_data_file()) {
    s.Corruption(
        absl::StrFormat("ERROR compressed cluster %d with data file, entry=0x%x", index, entry));
    return;
  }
  if (bitmap != 0) {
    s.Corruption(absl::StrFormat(
        "ERROR compressed cluster %d with non-zero subcluster allocation bitmap, entry=0x%x", index,
        entry));
    return;
  }
  Inc(s, d.host_offset, format::CompressedReadLength(d));
  if (w.frag_info) {
    ++s.counts.allocated_clusters;
    ++s.counts.compressed_clusters;
    ++s.counts.fragmented_clusters;  // compressed clusters count as fragmented
  }
}

// A normal or preallocated-zero cluster. Returns true if the entry was
// repaired into a plain zero cluster (then it references nothing).
Task<absl::StatusOr<bool>> CountAllocated(Scan& s, L2Walk& w, uint64_t entry, uint64_t bitmap,
                                          uint64_t index) {
  const uint64_t cs = s.cluster_bytes;
  const uint64_t offset = entry & format::kOffsetMask;
  if ((bitmap >> 32) & bitmap) {
    s.Corruption(absl::StrFormat(
        "ERROR offset=%x: Allocated cluster has corrupted subcluster allocation bitmap", offset));
  }
  if (offset & (cs - 1)) {
    ++s.counts.corruptions;
    const bool has_data =
        s.h.extended_l2() ? (bitmap & kAllAllocated) != 0 : !(entry & format::kOflagZero);
    if (has_data) {
      s.Message(absl::StrFormat(
          "ERROR offset=%x: Data cluster is not properly aligned; L2 entry corrupted.", offset));
    } else {
      const bool repair = w.fix == RepairMode::kAll;
      s.Message(absl::StrFormat(
          "%s offset=%x: Preallocated cluster is not properly aligned; L2 entry corrupted.",
          repair ? "Repairing" : "ERROR", offset));
      if (repair) {
        bool overlap = false;
        absl::Status st = co_await FixL2EntryByZero(s, w.l2_offset, index, &overlap);
        if (overlap) co_return st;
        if (st.ok()) co_return true;
      }
    }
  }
  if (w.frag_info) {
    ++s.counts.allocated_clusters;
    if (w.next_contiguous != 0 && offset != w.next_contiguous) ++s.counts.fragmented_clusters;
    w.next_contiguous = offset + cs;
  }
  if (!s.h.has_data_file()) Inc(s, offset, cs);
  co_return false;
}

// QEMU's check_refcounts_l2 for the table at `l2_offset` (which may be
// unaligned: QEMU reads it where the L1 entry points).
Task<absl::Status> CountL2(Scan& s, uint64_t l2_offset, bool frag_info, RepairMode fix) {
  // Past the end of the file a table reads as zeros: nothing to count.
  if (l2_offset >= s.file.size_bytes()) co_return absl::OkStatus();
  std::vector<std::byte> table(s.cluster_bytes);
  if (absl::Status st = co_await ReadAt(s.file, l2_offset, table); !st.ok()) {
    s.Message("ERROR: I/O error in check_refcounts_l2");
    ++s.counts.check_errors;
    co_return st;
  }
  const bool ext = s.h.extended_l2();
  const uint64_t entry_bytes = s.h.l2_entry_bytes();
  L2Walk w{l2_offset, frag_info, fix};
  for (uint64_t i = 0; i < s.cluster_bytes / entry_bytes; ++i) {
    const std::byte* p = &table[i * entry_bytes];
    const uint64_t entry = format::LoadBE64(p);
    const uint64_t bitmap = ext ? format::LoadBE64(p + 8) : 0;
    const Kind kind = KindOf(s.h, entry);
    if (kind != Kind::kCompressed && (entry & kL2StdReservedMask)) {
      s.Corruption(absl::StrFormat("ERROR found l2 entry with reserved bits set: %x", entry));
    }
    switch (kind) {
      case Kind::kCompressed:
        CountCompressed(s, w, entry, bitmap, i);
        break;
      case Kind::kNormal:
      case Kind::kZeroAlloc: {
        absl::StatusOr<bool> repaired = co_await CountAllocated(s, w, entry, bitmap, i);
        if (!repaired.ok()) co_return repaired.status();
        break;
      }
      case Kind::kZeroPlain:
        break;
      case Kind::kUnallocated:
        if (bitmap & kAllAllocated) {
          s.Corruption("ERROR: Unallocated cluster has non-zero subcluster allocation map");
        }
        break;
    }
  }
  co_return absl::OkStatus();
}

// QEMU's check_refcounts_l1: the L1 table, then each L2 table it names.
Task<absl::Status> CountL1(Scan& s, uint64_t l1_offset, uint64_t l1_entries, bool frag_info,
                           RepairMode fix) {
  if (l1_entries == 0) co_return absl::OkStatus();
  Inc(s, l1_offset, l1_entries * 8);
  std::vector<std::byte> chunk;
  for (uint64_t first = 0; first < l1_entries; first += kTableChunkBytes / 8) {
    const uint64_t n = std::min(l1_entries - first, kTableChunkBytes / 8);
    chunk.resize(n * 8);
    if (absl::Status st = co_await ReadAt(s.file, l1_offset + first * 8, chunk); !st.ok()) {
      s.Message("ERROR: I/O error in check_refcounts_l1");
      ++s.counts.check_errors;
      co_return st;
    }
    for (uint64_t i = 0; i < n; ++i) {
      const uint64_t raw = format::LoadBE64(&chunk[i * 8]);
      if (raw == 0) continue;
      if (raw & kL1ReservedMask) {
        s.Corruption(absl::StrFormat("ERROR found L1 entry with reserved bits set: %x", raw));
      }
      const uint64_t l2_offset = raw & format::kOffsetMask;
      Inc(s, l2_offset, s.cluster_bytes);
      if (l2_offset & (s.cluster_bytes - 1)) {
        s.Corruption(absl::StrFormat(
            "ERROR l2_offset=%x: Table is not cluster aligned; L1 entry corrupted", l2_offset));
      }
      UQ_CO_RETURN_IF_ERROR(co_await CountL2(s, l2_offset, frag_info, fix));
    }
  }
  co_return absl::OkStatus();
}

// Persistent dirty bitmaps: the directory, each bitmap table and the data
// clusters it names (QEMU's qcow2_check_bitmaps_refcounts).
Task<absl::Status> CountBitmaps(Scan& s) {
  absl::StatusOr<std::optional<format::BitmapsExtension>> ext = format::FindBitmapsExtension(s.h);
  if (!ext.ok() || !ext->has_value() || (*ext)->nb_bitmaps == 0) co_return absl::OkStatus();
  const format::BitmapsExtension& e = **ext;
  Inc(s, e.directory_offset, e.directory_size_bytes);
  std::vector<std::byte> dir;
  absl::StatusOr<std::vector<format::BitmapInfo>> bitmaps =
      absl::InvalidArgumentError("the bitmap directory is past the end of the file");
  if (e.directory_offset < s.file.size_bytes() &&
      e.directory_size_bytes <= s.file.size_bytes() - e.directory_offset) {
    dir.resize(e.directory_size_bytes);
    UQ_CO_RETURN_IF_ERROR(co_await ReadAt(s.file, e.directory_offset, dir));
    bitmaps = format::DecodeBitmapDirectory(dir, e, s.h.cluster_bits);
  }
  if (!bitmaps.ok()) {
    ++s.counts.corruptions;
    co_return absl::InvalidArgumentError(
        absl::StrCat("bitmap directory: ", bitmaps.status().message()));
  }
  std::vector<std::byte> chunk;
  for (const format::BitmapInfo& b : *bitmaps) {
    Inc(s, b.table_offset, uint64_t{b.table_size} * 8);
    for (uint64_t first = 0; first < b.table_size; first += kTableChunkBytes / 8) {
      const uint64_t n = std::min<uint64_t>(b.table_size - first, kTableChunkBytes / 8);
      chunk.resize(n * 8);
      UQ_CO_RETURN_IF_ERROR(co_await ReadAt(s.file, b.table_offset + first * 8, chunk));
      for (uint64_t i = 0; i < n; ++i) {
        const uint64_t entry = format::LoadBE64(&chunk[i * 8]);
        const uint64_t offset = entry & format::kOffsetMask;
        if ((entry & kBitmapEntryReservedMask) ||
            (offset != 0 && ((entry & kBitmapEntryAllOnes) || (offset & (s.cluster_bytes - 1))))) {
          ++s.counts.corruptions;
          continue;
        }
        if (offset != 0) Inc(s, offset, s.cluster_bytes);
      }
    }
  }
  co_return absl::OkStatus();
}

// QEMU's check_refblocks: each refcount block is counted and must be
// aligned, inside the image and used once.
void CountRefcountBlocks(Scan& s, RepairMode fix) {
  for (uint64_t i = 0; i < s.reftable.size(); ++i) {
    const uint64_t raw = s.reftable[i];
    const uint64_t offset = raw & kRefTableOffsetMask;
    const uint64_t cluster = offset / s.cluster_bytes;
    if (raw & kRefTableReservedMask) {
      s.Corruption(absl::StrFormat("ERROR refcount table entry %d has reserved bits set", i));
      s.rebuild = true;
      continue;
    }
    if (offset & (s.cluster_bytes - 1)) {
      s.Corruption(absl::StrFormat(
          "ERROR refcount block %d is not cluster aligned; refcount table entry corrupted", i));
      s.rebuild = true;
      continue;
    }
    if (cluster >= s.refs.size()) {
      // QEMU grows the file to reach the block; a rebuild replaces it instead.
      s.Corruption(absl::StrFormat("ERROR refcount block %d is outside image", i));
      if (fix == RepairMode::kAll) s.rebuild = true;
      continue;
    }
    if (offset == 0) continue;
    Inc(s, offset, s.cluster_bytes);
    if (s.refs.Get(cluster) != 1) {
      s.Corruption(absl::StrFormat("ERROR refcount block %d refcount=%d", i, s.refs.Get(cluster)));
      s.rebuild = true;
    }
  }
}

}  // namespace

absl::Status NoCorruptions(const Scan& s, const std::string& what) {
  if (s.counts.corruptions == 0) return absl::OkStatus();
  return absl::DataLossError(absl::StrCat(
      what, ": ", s.counts.corruptions,
      " corruptions, first: ", s.kept_messages.empty() ? std::string() : s.kept_messages.front()));
}

Task<absl::Status> CountReferences(Scan& s, RepairMode fix) {
  Inc(s, 0, s.cluster_bytes);  // the header
  UQ_CO_RETURN_IF_ERROR(
      co_await CountL1(s, s.h.l1_table_offset, s.h.l1_size, /*frag_info=*/true, fix));
  if (s.h.has_data_file() && !s.snapshots.empty()) {
    s.Corruption(absl::StrFormat("ERROR %d snapshots in image with data file", s.snapshots.size()));
  }
  for (const format::Snapshot& sn : s.snapshots) {
    if (sn.l1_table_offset & (s.cluster_bytes - 1)) {
      s.Corruption(absl::StrFormat(
          "ERROR snapshot %s (%s) l1_offset=%#x: L1 table is not cluster aligned; snapshot "
          "table entry corrupted",
          sn.id, sn.name, sn.l1_table_offset));
      continue;
    }
    if (uint64_t{sn.l1_size} > format::kMaxL1Bytes / 8) {
      s.Corruption(absl::StrFormat(
          "ERROR snapshot %s (%s) l1_size=%#x: L1 table is too large; snapshot table entry "
          "corrupted",
          sn.id, sn.name, sn.l1_size));
      continue;
    }
    UQ_CO_RETURN_IF_ERROR(
        co_await CountL1(s, sn.l1_table_offset, sn.l1_size, /*frag_info=*/false, fix));
  }
  Inc(s, s.h.snapshots_offset, s.snapshots_size);
  if (s.count_refcount_structures) {
    Inc(s, s.h.refcount_table_offset, uint64_t{s.h.refcount_table_clusters} * s.cluster_bytes);
  }
  UQ_CO_RETURN_IF_ERROR(co_await CountBitmaps(s));
  if (s.count_refcount_structures) CountRefcountBlocks(s, fix);
  co_return absl::OkStatus();
}

}  // namespace uq::engine::check_internal
