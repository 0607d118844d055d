// Internals of the qcow2 check (check.h), shared by check.cc (the sequence of
// steps), check_refs.cc (counting references) and check_refcounts.cc (reading,
// repairing and rebuilding the stored refcounts), and by the two writers
// built on them: refcount_order.cc and switch_trees.cc. Not for other users.
//
// Thread-safety: a Scan belongs to one coroutine.
#ifndef UQ_SRC_ENGINE_CHECK_INTERNAL_H_
#define UQ_SRC_ENGINE_CHECK_INTERNAL_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "format/header.h"
#include "format/snapshot.h"
#include "src/engine/check.h"
#include "src/io/block_file.h"
#include "src/io/task.h"

namespace uq::engine::check_internal {

// QEMU's in-memory refcount table: two bytes a cluster, larger counts in a
// side map. Counts stop at the image's maximum refcount (an "overflow" is a
// corruption, as in QEMU). Memory follows the references counted, not the
// file's apparent size (a sparse or crafted file may claim terabytes): the
// counts live in small pages allocated when a cluster in them is first set,
// so a page costs about 200 bytes for the reference that created it.
class RefcountArray {
 public:
  explicit RefcountArray(uint64_t max_refcount) : max_(max_refcount) {}
  // Clusters covered: Get and Set take cluster < size().
  uint64_t size() const { return size_; }
  uint64_t max() const { return max_; }
  void Grow(uint64_t clusters);
  uint64_t Get(uint64_t cluster) const;
  void Set(uint64_t cluster, uint64_t value);
  void Clear();
  // A cluster >= `cluster` before which every count is zero (the start of
  // the next allocated page), or UINT64_MAX: lets a scan skip empty ranges.
  uint64_t SkipZeros(uint64_t cluster) const;

 private:
  static constexpr uint16_t kInMap = 0xffff;
  static constexpr uint32_t kPageBits = 6;  // 64 clusters a page
  using Page = std::array<uint16_t, size_t{1} << kPageBits>;
  const Page* FindPage(uint64_t page) const;

  uint64_t max_;
  uint64_t size_ = 0;
  std::map<uint64_t, std::unique_ptr<Page>> pages_;  // ordered: SkipZeros
  mutable uint64_t last_index_ = UINT64_MAX;         // one-entry lookup cache
  mutable const Page* last_page_ = nullptr;
  std::unordered_map<uint64_t, uint64_t> big_;
};

// One check of one image file.
struct Scan {
  Scan(io::BlockFile& f, format::Header header, std::function<void(const std::string&)> sink);

  io::BlockFile& file;
  format::Header h;
  uint64_t cluster_bytes;
  RefcountArray refs;  // counted references; its size is QEMU's nb_clusters
  CheckCounts counts;
  bool rebuild = false;  // the refcount structures cannot be repaired in place
  // False for the engine's dirty-image rebuild: the old refcount table and
  // blocks are not counted (they become free space) nor checked.
  bool count_refcount_structures = true;
  std::vector<format::Snapshot> snapshots;
  uint64_t snapshots_size = 0;      // bytes of the snapshot table
  std::vector<uint64_t> reftable;   // raw entries
  std::vector<uint64_t> active_l1;  // raw entries, as QEMU holds them after open
  // Refcount blocks read so far, by reftable index.
  std::map<uint64_t, std::vector<std::byte>> block_cache;
  bool corruption_reported = false;  // QEMU reports a broken refblock once
  std::vector<std::string> kept_messages;
  std::function<void(const std::string&)> on_message;

  uint64_t file_clusters() const { return (file.size_bytes() + cluster_bytes - 1) / cluster_bytes; }
  void Message(std::string line);
  void Corruption(std::string line) {
    ++counts.corruptions;
    Message(std::move(line));
  }
};

// Reads exactly buf.size() bytes at `offset` (zeros past the end of file).
Task<absl::Status> ReadAt(io::BlockFile& file, uint64_t offset, std::span<std::byte> buf);
// Writes `buf` at `offset`.
Task<absl::Status> WriteAt(io::BlockFile& file, uint64_t offset, std::span<const std::byte> buf);
// Writes one big-endian 64-bit table entry.
Task<absl::Status> WriteEntry(io::BlockFile& file, uint64_t offset, uint64_t value);

// check_refs.cc: QEMU's calculate_refcounts. Counts every reference into
// s.refs (growing it past the end of the file by less than a cluster where
// the last cluster is partly used) and reports what it finds on the way.
// With kAll it turns unaligned preallocated zero clusters into plain zero
// clusters. Errors: I/O, or a bitmap directory that cannot be decoded.
Task<absl::Status> CountReferences(Scan& s, RepairMode fix);
// For the writers that count before they change anything: OK if the count
// found no corruption, else DataLoss "<what>: N corruptions, first: <line>".
absl::Status NoCorruptions(const Scan& s, const std::string& what);

// check_refcounts.cc.
// Loads the refcount table of s.h into s.reftable and drops cached blocks.
Task<absl::Status> LoadRefcountTable(Scan& s);
// The stored refcount of `cluster` (0 past the table or for a missing
// block). An error is QEMU's -EIO for an unaligned refcount block.
Task<absl::StatusOr<uint64_t>> StoredRefcount(Scan& s, uint64_t cluster);
// Writes `value` as the stored refcount of `cluster`, whose refcount block
// must exist.
Task<absl::Status> SetStoredRefcount(Scan& s, uint64_t cluster, uint64_t value);
// QEMU's compare_refcounts: stored against counted for every cluster of
// s.refs, repairing per `fix`; sets s.rebuild where a used cluster has no
// refcount. *highest_cluster: the last cluster stored or counted in use.
Task<absl::Status> CompareRefcounts(Scan& s, RepairMode fix, uint64_t* highest_cluster);
// Writes refcount blocks and a table for s.refs (plus themselves) past the
// end of the file and every counted cluster, in s.h.refcount_order, and
// flushes; sets h's refcount table offset and clusters to them. The header
// on disk is not touched.
Task<absl::Status> WriteRefcountBlocks(Scan& s, format::Header* h);
// Refcounts one refcount block holds.
uint64_t RefcountsPerBlock(const Scan& s);
// Writes refcount blocks for s.refs at clusters block_at[0..] (block b
// counting clusters from b * RefcountsPerBlock) and a table naming them at
// table_clusters clusters from cluster `table_at`, after setting their own
// refcounts to 1; flushes; sets h's refcount table offset and clusters.
// REQUIRES: the blocks cover every cluster in use, themselves and the table
// included.
Task<absl::Status> WriteRefcountStructureAt(Scan& s, std::span<const uint64_t> block_at,
                                            uint64_t table_at, uint64_t table_clusters,
                                            format::Header* h);
// Which header fields SwitchHeader writes besides the refcount table's
// offset and size, the snapshot table's count and offset, and (v3) the
// incompatible feature word (bytes 48..79).
struct HeaderFields {
  bool size = false;            // the disk size (from byte 24; crypt_method as it is)
  bool l1_table = false;        // l1_size and l1_table_offset (from byte 36)
  bool refcount_order = false;  // through refcount_order (to byte 100, v3)
};
// Points the header at `h`'s tables with one write (all the fields lie in
// the first sector, so a crash leaves the old header or the new one),
// flushes, sets s.h = h and reloads s.reftable.
Task<absl::Status> SwitchHeader(Scan& s, const format::Header& h, HeaderFields fields);
// WriteRefcountBlocks then SwitchHeader (clearing the dirty bit if asked;
// with `write_order` a change of refcount width switches in the same
// write).
Task<absl::Status> WriteNewRefcountStructure(Scan& s, bool clear_dirty, bool write_order = false);

}  // namespace uq::engine::check_internal

#endif  // UQ_SRC_ENGINE_CHECK_INTERNAL_H_
