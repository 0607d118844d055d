// L2Map: guest cluster -> L2 entry (docs/interop/qcow2.txt, "Cluster
// mapping"). Owns the in-memory L1 table and the L2 slice cache; finds,
// decodes and stores L2 entries; creates (or takes ownership of shared) L2
// tables.
//
// Ordering: a new L2 table is written before the in-memory L1 entry points at
// it, and the L1 table only reaches the disk after the L2 slices it relies on
// are durable (WriteOrder's flush sequence); with metadata write-through the
// new table is fsynced before the L1 entry changes, since the L1 table is then
// written at the end of the request. An L2 table shared with a snapshot is
// copied through the cache (which holds the newest version of every slice)
// and the old one freed once the new L1 entry is durable.
//
// Thread-safety: thread-safe. Callers hold the guest cluster's lock (shared
// to find and decode, exclusive to store) so that an entry never changes
// under a reader; FindForWrite takes MetaFile::lock() itself when it must
// create a table. L1 entries are atomic words (a lookup reads one without a
// lock; they change only under MetaFile::lock()).
#ifndef UQ_SRC_ENGINE_L2_MAP_H_
#define UQ_SRC_ENGINE_L2_MAP_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "cache/slice_cache.h"
#include "format/tables.h"
#include "src/engine/geometry.h"
#include "src/engine/meta_file.h"
#include "src/engine/refcounts.h"
#include "src/io/task.h"

namespace uq::engine {

// Where a guest (sub)cluster's bytes come from.
enum class Source : uint8_t { kData, kZero, kBacking, kCompressed };

// The words of one L2 entry as stored (bitmap 0 without extended L2); an
// unallocated table reads as all zero.
struct RawL2Entry {
  uint64_t entry = 0;
  uint64_t bitmap = 0;
  bool operator==(const RawL2Entry&) const = default;
};

// A pin on the slice holding one L2 entry. !ref.valid(): the cluster's L2
// table is not allocated (the entry reads as unallocated).
struct Slot {
  cache::SliceCache::Ref ref;
  uint32_t byte_in_slice = 0;
};

class L2Map {
 public:
  // `l1` holds the raw L1 entries of the table at `l1_offset_bytes`.
  L2Map(MetaFile* meta, RefcountStore* refs, const Geometry& geo, std::vector<uint64_t> l1,
        uint64_t l1_offset_bytes, uint64_t cache_bytes, bool writethrough);
  L2Map(const L2Map&) = delete;
  L2Map& operator=(const L2Map&) = delete;

  // Pins the slice holding `a`'s entry (or none if the table is missing).
  Task<int> Find(const GuestAddress& a, Slot* slot);
  // As Find, but first makes the L2 table exist and belong to the active
  // layer alone (COPIED), so the entry can be stored.
  Task<int> FindForWrite(const GuestAddress& a, Slot* slot);
  RawL2Entry Raw(const Slot& slot) const;
  // Decodes the entry; an invalid one marks the image corrupt (-EIO).
  Task<int> Decode(const Slot& slot, const GuestAddress& a, format::L2Entry* out);
  // Stores an entry into a slot from FindForWrite. REQUIRES: the guest
  // cluster's exclusive lock.
  void Store(Slot& slot, const format::L2Entry& e);
  Source Classify(const format::L2Entry& e, uint32_t subcluster) const;
  // Queues the host clusters `e` references for freeing at the next flush
  // (data clusters of an external data file are not refcounted). Call after
  // storing the entry that replaces `e`: a flush applies only frees queued
  // before it started, and writes every entry stored before that.
  void QueueFree(const format::L2Entry& e);

  // True if the L2 table mapping `a` exists (no I/O, no pin).
  bool HasTable(const GuestAddress& a) const;

  bool l1_dirty() const { return l1_dirty_.load(std::memory_order_acquire); }
  bool l1_writing() const { return l1_writes_in_flight_.load(std::memory_order_acquire) > 0; }
  // Writes the whole L1 table (no fsync). REQUIRES: MetaFile::lock(), so an
  // older copy never lands after a newer one.
  Task<int> WriteL1();

  cache::SliceCache& cache() { return *cache_; }
  const cache::SliceCache& cache() const { return *cache_; }

  // For resize (src/engine/resize.cc), which runs with no request in flight.
  uint64_t l1_entries() const { return l1_entries_; }
  uint64_t l1_offset_bytes() const { return l1_offset_bytes_; }
  uint64_t L1Raw(uint64_t index) const { return L1(index); }
  // Unmaps the L2 table of L1 entry `index` (in memory; the flush writes it).
  // REQUIRES: MetaFile::lock().
  void ClearL1(uint64_t index) { SetL1(index, 0); }
  // For snapshots (src/engine/snapshot.cc), which also run with no request
  // in flight: sets L1 entry `index` to `raw` (its COPIED flag, or another
  // table). REQUIRES: MetaFile::lock().
  void SetL1Entry(uint64_t index, uint64_t raw) { SetL1(index, raw); }
  // Adopts the L1 table now at `offset_bytes` on disk (written and named by
  // the header already). REQUIRES: MetaFile::lock(), no request in flight,
  // !l1_dirty().
  void ReplaceL1(const std::vector<uint64_t>& entries, uint64_t offset_bytes);

 private:
  // REQUIRES: MetaFile::lock().
  Task<int> PrepareTable(uint64_t l1_index);
  Task<int> CopyTable(uint64_t from_offset, uint64_t to_offset);

  MetaFile* meta_;
  RefcountStore* refs_;
  Geometry geo_;
  uint64_t L1(uint64_t index) const { return l1_[index].load(std::memory_order_acquire); }
  // REQUIRES: MetaFile::lock().
  void SetL1(uint64_t index, uint64_t raw);

  std::unique_ptr<std::atomic<uint64_t>[]> l1_;  // raw entries
  uint64_t l1_entries_;
  uint64_t l1_offset_bytes_;
  std::atomic<bool> l1_dirty_{false};
  std::atomic<uint32_t> l1_writes_in_flight_{0};
  std::unique_ptr<cache::SliceCache> cache_;
  bool writethrough_;
  std::vector<std::byte> table_buf_;  // one cluster, for new L2 tables
  std::vector<std::byte> l1_buf_;     // the encoded L1 table
};

}  // namespace uq::engine

#endif  // UQ_SRC_ENGINE_L2_MAP_H_
