// OverlapMap: where an open image's metadata lives in the image file, so that
// no write the engine issues lands on it (QEMU's default overlap-check=cached,
// qcow2_check_metadata_overlap in block/qcow2-refcount.c): the header
// cluster, the active L1 table, every L2 table the in-memory L1 table names,
// the refcount table and every refcount block it names, the snapshot table
// and the snapshots' L1 tables. L2 tables that only snapshots name are not
// tracked (QEMU's "all" mode reads them from disk; "cached" does not).
//
// A crafted or damaged image can point an L2 entry (or an L1 or refcount
// table entry) at any of these; a guest write through such an entry would
// overwrite metadata. The request paths look the target range up before every
// image-file write and refuse it (MetaFile::RefuseOverlap) instead.
//
// Granularity is the cluster, as in QEMU: a write touching any cluster that
// holds part of a region overlaps it.
//
// Thread-safety: Find is lock-free and allocation-free (a seqlock: the hot
// path of every queue thread looks up each data write, and an image-wide lock
// there would bounce between the threads). Writers (Add, Remove, Reset) are
// serialised by a mutex of their own; the engine calls them under
// MetaFile::lock() when it changes an L1 entry, places a refcount block or
// moves a table. Arrays outgrown by Add stay allocated until destruction,
// since a reader may still be searching one (geometric growth: less than
// twice the final array).
#ifndef UQ_SRC_ENGINE_OVERLAP_MAP_H_
#define UQ_SRC_ENGINE_OVERLAP_MAP_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <vector>

#include "format/header.h"
#include "format/snapshot.h"

namespace uq::engine {

// QEMU's names (metadata_ol_names), so the messages read the same.
enum class Metadata : uint8_t {
  kHeader,
  kActiveL1,
  kActiveL2,
  kRefcountTable,
  kRefcountBlock,
  kSnapshotTable,
  kInactiveL1,
};
const char* MetadataName(Metadata kind);
// A set of kinds a check ignores (the one the writer is writing).
constexpr uint32_t Ignore(Metadata kind) { return uint32_t{1} << static_cast<uint32_t>(kind); }

class OverlapMap {
 public:
  // Host clusters [first_cluster, end_cluster).
  struct Region {
    Metadata kind = Metadata::kHeader;
    uint64_t first_cluster = 0;
    uint64_t end_cluster = 0;
    bool operator==(const Region&) const = default;
  };

  explicit OverlapMap(uint32_t cluster_bits);
  OverlapMap(const OverlapMap&) = delete;
  OverlapMap& operator=(const OverlapMap&) = delete;

  // The region of `length_bytes` at `offset_bytes`, whole clusters.
  // length_bytes 0: an empty region (Add and Remove ignore it).
  Region RegionOf(Metadata kind, uint64_t offset_bytes, uint64_t length_bytes) const;

  // Replaces everything (Open).
  void Reset(std::vector<Region> regions);
  // Adds one region; the same region may be added twice (two L1 entries
  // naming one table) and is then removed twice.
  void Add(const Region& r);
  // Removes one instance of a region added before; no-op if there is none.
  void Remove(const Region& r);
  // Remove(from) then Add(to), as one change for readers.
  void Replace(const Region& from, const Region& to);

  // The kind of some tracked region that a write of [offset, + length)
  // would touch, other than the kinds in `ignore`; nullopt if none.
  std::optional<Metadata> Find(uint64_t offset_bytes, uint64_t length_bytes,
                               uint32_t ignore = 0) const;

  size_t size() const { return size_.load(std::memory_order_acquire); }

 private:
  // Regions sorted by first cluster, each slot with the largest end cluster
  // of the slots up to it, so "some region starting before E ends after F"
  // is one binary search. Every field is atomic: readers may race writers
  // and throw away what they read (the sequence number changed).
  struct Slot {
    std::atomic<uint64_t> first{0};
    std::atomic<uint64_t> end_kind{0};  // end cluster << 8 | kind
    std::atomic<uint64_t> max_end{0};
  };
  struct Array {
    explicit Array(size_t n) : capacity(n), slots(new Slot[n]) {}
    size_t capacity;
    std::unique_ptr<Slot[]> slots;
  };

  std::optional<Metadata> Search(const Array& a, size_t n, uint64_t first, uint64_t end,
                                 uint32_t ignore) const;
  // REQUIRES: mu_, inside a write (odd sequence number).
  void InsertLocked(const Region& r);
  void RemoveLocked(const Region& r);
  void Recompute(Array& a, size_t from, size_t n);
  void BeginWrite();
  void EndWrite();

  uint32_t cluster_bits_;
  std::atomic<uint64_t> seq_{0};  // odd while a writer changes the slots
  std::atomic<Array*> array_{nullptr};
  std::atomic<size_t> size_{0};
  std::mutex mu_;                               // writers
  std::vector<std::unique_ptr<Array>> arrays_;  // guarded by mu_; the last is array_
};

// The metadata regions of an image as it is opened: the header cluster, the
// L1 table the header names and the L2 tables `l1` names, the refcount table
// and the blocks `reftable` names, the snapshot table and each snapshot's L1.
std::vector<OverlapMap::Region> MetadataRegions(const OverlapMap& map, const format::Header& h,
                                                std::span<const uint64_t> l1,
                                                std::span<const uint64_t> reftable,
                                                const std::vector<format::Snapshot>& snapshots);

}  // namespace uq::engine

#endif  // UQ_SRC_ENGINE_OVERLAP_MAP_H_
