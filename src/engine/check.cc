// The check's sequence of steps and repairs, as qemu-img 7.2 runs them
// (qcow2_co_check_locked, qcow2_check_refcounts, check_oflag_copied); the
// reference counting is in check_refs.cc, the stored refcounts in
// check_refcounts.cc.
#include "src/engine/check.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "format/endian.h"
#include "format/status_macros.h"
#include "format/tables.h"
#include "src/engine/check_internal.h"

namespace uq::engine {

namespace check_internal {

void RefcountArray::Grow(uint64_t clusters) { size_ = std::max(size_, clusters); }

const RefcountArray::Page* RefcountArray::FindPage(uint64_t page) const {
  if (page != last_index_) {
    auto it = pages_.find(page);
    last_page_ = it == pages_.end() ? nullptr : it->second.get();
    last_index_ = page;
  }
  return last_page_;
}

uint64_t RefcountArray::Get(uint64_t cluster) const {
  const Page* page = FindPage(cluster >> kPageBits);
  if (page == nullptr) return 0;
  const uint16_t v = (*page)[cluster & ((1u << kPageBits) - 1)];
  if (v != kInMap) return v;
  auto it = big_.find(cluster);
  return it == big_.end() ? v : it->second;
}

void RefcountArray::Set(uint64_t cluster, uint64_t value) {
  const uint64_t index = cluster >> kPageBits;
  auto page = const_cast<Page*>(FindPage(index));
  if (page == nullptr) {
    if (value == 0) return;
    auto fresh = std::make_unique<Page>();
    fresh->fill(0);
    page = fresh.get();
    pages_.emplace(index, std::move(fresh));
    last_index_ = index;
    last_page_ = page;
  }
  uint16_t& slot = (*page)[cluster & ((1u << kPageBits) - 1)];
  if (value < kInMap) {
    if (slot == kInMap) big_.erase(cluster);
    slot = static_cast<uint16_t>(value);
    return;
  }
  slot = kInMap;
  big_[cluster] = value;
}

uint64_t RefcountArray::SkipZeros(uint64_t cluster) const {
  auto it = pages_.lower_bound(cluster >> kPageBits);
  if (it == pages_.end()) return UINT64_MAX;
  return std::max(cluster, it->first << kPageBits);
}

void RefcountArray::Clear() {
  pages_.clear();
  last_index_ = UINT64_MAX;
  last_page_ = nullptr;
  big_.clear();
}

Scan::Scan(io::BlockFile& f, format::Header header, std::function<void(const std::string&)> sink)
    : file(f),
      h(std::move(header)),
      cluster_bytes(h.cluster_size()),
      refs(format::MaxRefcount(h.refcount_order)),
      on_message(std::move(sink)) {}

void Scan::Message(std::string line) {
  if (on_message) on_message(line);
  if (kept_messages.size() < CheckResult::kKeptMessages) kept_messages.push_back(std::move(line));
}

Task<absl::Status> ReadAt(io::BlockFile& file, uint64_t offset, std::span<std::byte> buf) {
  const int64_t r = co_await file.Read(offset, buf);
  if (r < 0) {
    co_return absl::DataLossError(absl::StrCat("reading ", buf.size(), " bytes at offset ", offset,
                                               ": ", std::strerror(static_cast<int>(-r))));
  }
  co_return absl::OkStatus();
}

Task<absl::Status> WriteAt(io::BlockFile& file, uint64_t offset, std::span<const std::byte> buf) {
  const int64_t r = co_await file.Write(offset, buf);
  if (r < 0) {
    co_return absl::DataLossError(absl::StrCat("writing ", buf.size(), " bytes at offset ", offset,
                                               ": ", std::strerror(static_cast<int>(-r))));
  }
  co_return absl::OkStatus();
}

Task<absl::Status> WriteEntry(io::BlockFile& file, uint64_t offset, uint64_t value) {
  std::byte buf[8];
  format::StoreBE64(buf, value);
  co_return co_await WriteAt(file, offset, buf);
}

}  // namespace check_internal

namespace {

using check_internal::Scan;

constexpr uint64_t kMaxSnapshotTableBytes = 64ull << 20;

Task<absl::StatusOr<format::Header>> LoadHeader(io::BlockFile& file) {
  std::vector<std::byte> first(512);
  UQ_CO_RETURN_IF_ERROR(co_await check_internal::ReadAt(file, 0, first));
  UQ_CO_ASSIGN_OR_RETURN(uint64_t n, format::HeaderReadSize(first));
  std::vector<std::byte> buf(n);
  UQ_CO_RETURN_IF_ERROR(co_await check_internal::ReadAt(file, 0, buf));
  co_return format::DecodeHeader(buf, {.file_size_bytes = file.size_bytes()});
}

// Everything a check reads up front: the snapshot table, the refcount table
// and the active L1 table (QEMU holds these from opening the image).
Task<absl::Status> LoadMetadata(Scan& s) {
  UQ_CO_ASSIGN_OR_RETURN(s.snapshots, co_await ReadSnapshotTable(s.file, s.h));
  s.snapshots_size = s.snapshots.empty() ? 0 : format::SnapshotTableSize(s.snapshots);
  UQ_CO_RETURN_IF_ERROR(co_await check_internal::LoadRefcountTable(s));
  std::vector<std::byte> l1(uint64_t{s.h.l1_size} * 8);
  UQ_CO_RETURN_IF_ERROR(co_await check_internal::ReadAt(s.file, s.h.l1_table_offset, l1));
  s.active_l1.resize(s.h.l1_size);
  for (uint64_t i = 0; i < s.active_l1.size(); ++i) s.active_l1[i] = format::LoadBE64(&l1[i * 8]);
  s.refs.Grow(s.file_clusters());
  co_return absl::OkStatus();
}

bool HasHostCluster(const format::Header& h, uint64_t entry) {
  if (entry & format::kOflagCompressed) return false;
  if ((entry & format::kOffsetMask) != 0) return true;
  return h.has_data_file() && (entry & format::kOflagCopied);
}

// QEMU's check_oflag_copied for one L2 table: COPIED must be set exactly
// where the stored refcount is 1. Returns how many entries it rewrote.
Task<absl::StatusOr<uint64_t>> CheckCopiedInL2(Scan& s, uint64_t l2_offset, bool repair) {
  std::vector<std::byte> table(s.cluster_bytes);
  if (absl::Status st = co_await check_internal::ReadAt(s.file, l2_offset, table); !st.ok()) {
    s.Message(absl::StrCat("ERROR: Could not read L2 table: ", st.message()));
    ++s.counts.check_errors;
    co_return st;
  }
  uint64_t dirty = 0;
  const uint64_t entry_bytes = s.h.l2_entry_bytes();
  for (uint64_t j = 0; j < s.cluster_bytes / entry_bytes; ++j) {
    std::byte* p = &table[j * entry_bytes];
    const uint64_t entry = format::LoadBE64(p);
    if (!HasHostCluster(s.h, entry)) continue;
    uint64_t refcount = 1;
    if (!s.h.has_data_file()) {
      absl::StatusOr<uint64_t> stored = co_await check_internal::StoredRefcount(
          s, (entry & format::kOffsetMask) / s.cluster_bytes);
      if (!stored.ok()) continue;
      refcount = *stored;
    }
    if ((refcount == 1) == static_cast<bool>(entry & format::kOflagCopied)) continue;
    ++s.counts.corruptions;
    s.Message(absl::StrFormat("%s OFLAG_COPIED data cluster: l2_entry=%x refcount=%d",
                              repair ? "Repairing" : "ERROR", entry, refcount));
    if (repair) {
      format::StoreBE64(
          p, refcount == 1 ? entry | format::kOflagCopied : entry & ~format::kOflagCopied);
      ++dirty;
    }
  }
  if (dirty == 0) co_return uint64_t{0};
  // The table itself must not overlap other metadata (QEMU's overlap check).
  const uint64_t cs = s.cluster_bytes;
  bool overlap = l2_offset < cs;
  for (uint64_t raw : s.reftable) {
    const uint64_t block = raw & ~uint64_t{0x1ff};
    overlap |= block != 0 && block < l2_offset + cs && l2_offset < block + cs;
  }
  const uint64_t rt_end = s.h.refcount_table_offset + uint64_t{s.h.refcount_table_clusters} * cs;
  overlap |= s.h.refcount_table_offset < l2_offset + cs && l2_offset < rt_end;
  const uint64_t l1_end = s.h.l1_table_offset + uint64_t{s.h.l1_size} * 8;
  overlap |= s.h.l1_table_offset < l2_offset + cs && l2_offset < l1_end;
  absl::Status st = overlap
                        ? absl::DataLossError("metadata overlap check failed: Input/output error")
                        : co_await check_internal::WriteAt(s.file, l2_offset, table);
  if (!st.ok()) {
    s.Message(absl::StrCat("ERROR: Could not write L2 table; ", st.message()));
    ++s.counts.check_errors;
    co_return st;
  }
  s.counts.corruptions -= dirty;
  s.counts.corruptions_fixed += dirty;
  co_return dirty;
}

Task<absl::Status> CheckCopiedFlags(Scan& s, RepairMode fix) {
  // With -r leaks the flags are repaired only if the refcounts can be trusted.
  const bool repair =
      fix == RepairMode::kAll || (fix == RepairMode::kLeaks && s.counts.check_errors == 0 &&
                                  s.counts.corruptions == 0 && s.counts.leaks == 0);
  for (uint64_t i = 0; i < s.active_l1.size(); ++i) {
    const uint64_t entry = s.active_l1[i];
    const uint64_t l2_offset = entry & format::kOffsetMask;
    if (l2_offset == 0) continue;
    absl::StatusOr<uint64_t> refcount =
        co_await check_internal::StoredRefcount(s, l2_offset / s.cluster_bytes);
    if (!refcount.ok()) continue;
    if ((*refcount == 1) != static_cast<bool>(entry & format::kOflagCopied)) {
      ++s.counts.corruptions;
      s.Message(absl::StrFormat("%s OFLAG_COPIED L2 cluster: l1_index=%d l1_entry=%x refcount=%d",
                                repair ? "Repairing" : "ERROR", i, entry, *refcount));
      if (repair) {
        const uint64_t fixed =
            *refcount == 1 ? entry | format::kOflagCopied : entry & ~format::kOflagCopied;
        absl::Status st =
            co_await check_internal::WriteEntry(s.file, s.h.l1_table_offset + i * 8, fixed);
        if (!st.ok()) {
          ++s.counts.check_errors;
          co_return st;
        }
        s.active_l1[i] = fixed;
        --s.counts.corruptions;
        ++s.counts.corruptions_fixed;
      }
    }
    UQ_CO_RETURN_IF_ERROR((co_await CheckCopiedInL2(s, l2_offset, repair)).status());
  }
  if (co_await s.file.Flush() < 0) co_return absl::DataLossError("flush failed");
  co_return absl::OkStatus();
}

// The refcount structures cannot be repaired in place: write new ones from
// the counted references, count again, and free what the rebuild left
// behind (the old structures), as QEMU does after rebuild_refcount_structure.
Task<absl::Status> Rebuild(Scan& s, uint64_t* highest) {
  const CheckCounts old = s.counts;
  s.Message("Rebuilding refcount structure");
  UQ_CO_RETURN_IF_ERROR(co_await check_internal::WriteNewRefcountStructure(s, false));
  s.counts.corruptions = 0;
  s.counts.leaks = 0;
  s.rebuild = false;
  s.refs.Clear();
  UQ_CO_RETURN_IF_ERROR(co_await check_internal::CountReferences(s, RepairMode::kNone));
  const CheckCounts saved = s.counts;
  s.counts = CheckCounts{};
  UQ_CO_RETURN_IF_ERROR(co_await check_internal::CompareRefcounts(s, RepairMode::kLeaks, highest));
  if (s.rebuild) s.Message("ERROR rebuilt refcount structure is still broken");
  const uint64_t fresh_leaks = s.counts.leaks;
  s.counts = saved;
  if (s.counts.corruptions < old.corruptions) {
    s.counts.corruptions_fixed += old.corruptions - s.counts.corruptions;
  }
  if (s.counts.leaks < old.leaks) s.counts.leaks_fixed += old.leaks - s.counts.leaks;
  s.counts.leaks += fresh_leaks;
  co_return absl::OkStatus();
}

// qcow2_check_refcounts: count, compare, repair.
Task<absl::Status> CheckRefcounts(Scan& s, RepairMode fix, uint64_t* highest) {
  UQ_CO_RETURN_IF_ERROR(co_await check_internal::CountReferences(s, fix));
  const CheckCounts before_compare = s.counts;
  UQ_CO_RETURN_IF_ERROR(co_await check_internal::CompareRefcounts(s, RepairMode::kNone, highest));
  if (s.rebuild && fix == RepairMode::kAll) {
    UQ_CO_RETURN_IF_ERROR(co_await Rebuild(s, highest));
  } else if (fix != RepairMode::kNone) {
    if (s.rebuild) {
      s.Message("ERROR need to rebuild refcount structures");
      ++s.counts.check_errors;
      co_return absl::DataLossError("Input/output error");
    }
    if (s.counts.leaks != 0 || s.counts.corruptions != 0) {
      s.counts = before_compare;
      UQ_CO_RETURN_IF_ERROR(co_await check_internal::CompareRefcounts(s, fix, highest));
    }
  }
  co_return co_await CheckCopiedFlags(s, fix);
}

// After a repair that left nothing wrong: clear the dirty and corrupt bits.
Task<absl::Status> MarkCleanAndConsistent(Scan& s) {
  const uint64_t bits = format::kIncompatDirty | format::kIncompatCorrupt;
  if (s.h.version < 3 || (s.h.incompatible_features & bits) == 0) co_return absl::OkStatus();
  s.h.incompatible_features &= ~bits;
  UQ_CO_RETURN_IF_ERROR(co_await check_internal::WriteEntry(
      s.file, format::kHeaderIncompatibleFeaturesAt, s.h.incompatible_features));
  if (co_await s.file.Flush() < 0) co_return absl::DataLossError("flush failed");
  co_return absl::OkStatus();
}

}  // namespace

Task<absl::StatusOr<std::vector<format::Snapshot>>> ReadSnapshotTable(io::BlockFile& file,
                                                                      const format::Header& h) {
  if (h.nb_snapshots == 0) co_return std::vector<format::Snapshot>{};
  if (h.snapshots_offset & (h.cluster_size() - 1) || h.snapshots_offset >= file.size_bytes()) {
    co_return absl::InvalidArgumentError(
        absl::StrCat("snapshot table offset ", h.snapshots_offset, " is invalid"));
  }
  const uint64_t n = std::min(file.size_bytes() - h.snapshots_offset, kMaxSnapshotTableBytes);
  std::vector<std::byte> buf(n);
  UQ_CO_RETURN_IF_ERROR(co_await check_internal::ReadAt(file, h.snapshots_offset, buf));
  co_return format::DecodeSnapshotTable(buf, h.nb_snapshots, h.cluster_bits);
}

Task<absl::StatusOr<CheckResult>> CheckImage(io::BlockFile& file, CheckOptions options) {
  UQ_CO_ASSIGN_OR_RETURN(format::Header h, co_await LoadHeader(file));
  Scan s(file, std::move(h), std::move(options.on_message));
  UQ_CO_RETURN_IF_ERROR(co_await LoadMetadata(s));
  const RepairMode fix = options.repair;
  uint64_t highest = 0;
  UQ_CO_RETURN_IF_ERROR(co_await CheckRefcounts(s, fix, &highest));
  if (fix != RepairMode::kNone && s.counts.check_errors == 0 && s.counts.corruptions == 0) {
    UQ_CO_RETURN_IF_ERROR(co_await MarkCleanAndConsistent(s));
  }
  CheckResult r;
  static_cast<CheckCounts&>(r) = s.counts;
  r.image_end_offset = (highest + 1) * s.cluster_bytes;
  r.total_clusters = (s.h.size_bytes + s.cluster_bytes - 1) / s.cluster_bytes;
  r.messages = std::move(s.kept_messages);
  co_return r;
}

Task<absl::Status> RebuildRefcounts(io::BlockFile& file, format::Header& header) {
  Scan s(file, header, nullptr);
  s.count_refcount_structures = false;
  UQ_CO_ASSIGN_OR_RETURN(s.snapshots, co_await ReadSnapshotTable(file, header));
  s.snapshots_size = s.snapshots.empty() ? 0 : format::SnapshotTableSize(s.snapshots);
  s.refs.Grow(s.file_clusters());
  UQ_CO_RETURN_IF_ERROR(co_await check_internal::CountReferences(s, RepairMode::kNone));
  UQ_CO_RETURN_IF_ERROR(check_internal::NoCorruptions(s, "cannot rebuild refcounts"));
  absl::Status written = co_await check_internal::WriteNewRefcountStructure(s, false);
  if (!written.ok()) {
    co_return absl::Status(written.code(),
                           absl::StrCat("cannot rebuild refcounts: ", written.message()));
  }
  // A crash during a snapshot operation leaves COPIED flags that disagree
  // with the refcounts (the two cannot reach the disk together): fix them
  // from the rebuilt refcounts, as QEMU's repair of a dirty image does, and
  // only then clear the dirty bit.
  std::vector<std::byte> l1(uint64_t{s.h.l1_size} * 8);
  UQ_CO_RETURN_IF_ERROR(co_await check_internal::ReadAt(s.file, s.h.l1_table_offset, l1));
  s.active_l1.resize(s.h.l1_size);
  for (uint64_t i = 0; i < s.active_l1.size(); ++i) s.active_l1[i] = format::LoadBE64(&l1[i * 8]);
  UQ_CO_RETURN_IF_ERROR(co_await CheckCopiedFlags(s, RepairMode::kAll));
  if (s.h.version >= 3 && (s.h.incompatible_features & format::kIncompatDirty)) {
    s.h.incompatible_features &= ~format::kIncompatDirty;
    UQ_CO_RETURN_IF_ERROR(co_await check_internal::WriteEntry(
        s.file, format::kHeaderIncompatibleFeaturesAt, s.h.incompatible_features));
    if (co_await s.file.Flush() < 0) co_return absl::DataLossError("flush failed");
  }
  header = s.h;
  co_return absl::OkStatus();
}

}  // namespace uq::engine
