// The qcow2 consistency check and its repairs, independent of the engine's
// caches: `qcow2-img check [-r leaks|all]`, the simulation tests' oracle, and
// the engine's refcount rebuild for images opened with the dirty bit set.
//
// CheckImage follows qemu-img 7.2's check of a qcow2 image step by step, so
// the counts, the exit code qemu-img would derive from them and the problem
// lines agree with qemu-img on the same bytes:
//  - every reference to a host cluster is counted in memory: the header, the
//    active and every snapshot's L1 table, each L2 table once per L1 entry
//    naming it, data and preallocated clusters, compressed clusters (every
//    host cluster the compressed bytes touch), the snapshot table, the
//    refcount table and blocks, the bitmap directory, tables and data;
//  - entries are checked on the way: reserved bits, unaligned L2 tables and
//    data clusters, references one cluster or more past the end of the file,
//    compressed clusters with COPIED or a subcluster bitmap, extended-L2
//    bitmaps with a subcluster both allocated and zero, refcount blocks that
//    are unaligned, outside the image or shared;
//  - the stored refcount of every cluster of the file is compared with the
//    count: stored < counted is a corruption (the cluster could be reused
//    while in use), stored > counted a leak;
//  - COPIED flags of the active L1 and L2 tables must be set exactly where the
//    stored refcount is 1.
//
// Repairs (RepairMode) are qemu-img's: kLeaks lowers leaked refcounts (and
// fixes COPIED flags once nothing else is wrong); kAll also raises refcounts
// that are too low, turns unaligned preallocated zero clusters into plain
// zero clusters, fixes COPIED flags, and rebuilds the refcount structures when
// they cannot be trusted (a used cluster with refcount 0, a broken refcount
// table entry). A repair never makes an image worse: refcounts only move to
// the counted value, and a rebuild writes the new refcount table and blocks
// past the end of the file, flushes them, and only then points the header at
// them (one 32-byte write); clusters holding unreachable data are never
// reused by the repair itself.
//
// Untrusted input: every offset is checked before use, reads past the end of
// the file are zeros (as in QEMU), tables are read a cluster at a time, and
// memory is bounded by the file's size (two bytes a cluster, as QEMU's 16-bit
// in-memory refcounts) plus one cluster per cached refcount block.
//
// Thread-safety: the file is used from the calling coroutine only.
#ifndef UQ_SRC_ENGINE_CHECK_H_
#define UQ_SRC_ENGINE_CHECK_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "format/header.h"
#include "format/snapshot.h"
#include "src/io/block_file.h"
#include "src/io/task.h"

namespace uq::engine {

enum class RepairMode { kNone, kLeaks, kAll };

// The counters of one check pass (QEMU's BdrvCheckResult), which qemu-img's
// repair sequence saves and restores between its passes.
struct CheckCounts {
  uint64_t corruptions = 0;
  uint64_t leaks = 0;
  uint64_t check_errors = 0;
  uint64_t corruptions_fixed = 0;
  uint64_t leaks_fixed = 0;
  uint64_t allocated_clusters = 0;
  uint64_t fragmented_clusters = 0;
  uint64_t compressed_clusters = 0;
};

// What qemu-img check reports: the counters of the last pass, and the image's
// extent and fragmentation info.
struct CheckResult : CheckCounts {
  uint64_t image_end_offset = 0;      // end of the last cluster in use
  uint64_t total_clusters = 0;        // guest clusters of the virtual disk
  std::vector<std::string> messages;  // the first kKeptMessages problem lines
  static constexpr size_t kKeptMessages = 20;
};

struct CheckOptions {
  RepairMode repair = RepairMode::kNone;
  // Receives every problem and repair line as qemu-img words it ("ERROR
  // cluster 5 refcount=0 reference=1", "Leaked cluster ...", "Repairing ..."),
  // in order, without a newline. May be empty.
  std::function<void(const std::string&)> on_message;
};

// Checks (and with options.repair, repairs) the qcow2 image in `file`. An
// error means the check could not run (qemu-img's "Check failed: ..."): an
// undecodable header or snapshot table, or an I/O error. Structural problems
// are counted in the result; a repair that cannot proceed counts check_errors.
// REQUIRES: `file` is writable when options.repair != kNone.
Task<absl::StatusOr<CheckResult>> CheckImage(io::BlockFile& file, CheckOptions options = {});

// The engine's repair of an image opened with the dirty bit set: counts the
// references (everything but the refcount structures), refuses with
// DataLoss if they are inconsistent, writes fresh refcount structures past
// the end of the file, then points the header at them, fixes the active
// COPIED flags from them (a crash during a snapshot operation leaves flags
// that disagree) and clears the dirty bit. The old refcount structures become
// free space. `header` is updated.
Task<absl::Status> RebuildRefcounts(io::BlockFile& file, format::Header& header);

// qemu-img amend -o refcount_bits (QEMU's qcow2_change_refcount_order):
// counts the references as RebuildRefcounts does, refuses (changing nothing)
// an image with corruptions or a refcount the new width cannot hold, writes
// refcount blocks of width 2^new_order bits and a table for them past the end
// of the file, flushes, and switches with one header write (table offset and
// size and refcount_order together). The old structures become free space; a
// power loss leaves the old or the new structures in effect, with at worst
// leaked clusters. REQUIRES: a v3 image that is not dirty; new_order <= 6.
// `header` is updated.
Task<absl::Status> ChangeRefcountOrder(io::BlockFile& file, format::Header& header,
                                       uint32_t new_order);

// The tables a snapshot change leaves the header naming (SwitchTrees).
struct NewTrees {
  // The new active L1 table's entries (flags are recomputed). Every L2 table
  // they name is copied, so no table the old state uses is written.
  std::vector<uint64_t> active_l1;
  // The new snapshot table (the L1 tables it names already in the file), or
  // null to keep the header's.
  const std::vector<format::Snapshot>* snapshots = nullptr;
  // The new disk size, switched in the same header write (a revert to a
  // snapshot of another size), or nullopt to keep it. REQUIRES: active_l1
  // has the entries it needs.
  std::optional<uint64_t> size_bytes;
};

// A snapshot change of an image without a dirty bit (version 2), where
// refcounts and COPIED flags, which live in different clusters, cannot be
// changed in place without a crash leaving them at odds (`qemu-img check`
// counts that as corruption). So nothing the old state references is
// written: the references of the old state are counted first (its refcount
// structures included; refused with DataLoss if inconsistent), and
// everything new goes where it references nothing, the holes earlier frees
// left first, then past the end of the file: a copy of every L2 table the
// new active L1 table names, that L1 table, the new snapshot table, then
// refcount blocks and a table counted from the new state (what the
// dirty-image rebuild counts: the old active tables and refcount structures
// become free), with COPIED flags set from those counts. All of it is
// flushed, then one header write (l1_size through snapshots_offset, all in
// the first sector) switches L1 table, refcount table and snapshot table
// together, and is flushed. A crash leaves the old image or the new one,
// with zero corruptions either way. Before the header write a failure
// changes nothing the old state uses (the file is cut back if it grew);
// *header_written tells whether that write was issued (after a failure the
// state on disk is then unknown). `header` is updated. REQUIRES: nothing else
// writes the file meanwhile, and every earlier change is on disk.
Task<absl::Status> SwitchTrees(io::BlockFile& file, format::Header& header, const NewTrees& trees,
                               bool* header_written);

// Reads and decodes the internal snapshot table.
Task<absl::StatusOr<std::vector<format::Snapshot>>> ReadSnapshotTable(io::BlockFile& file,
                                                                      const format::Header& header);

}  // namespace uq::engine

#endif  // UQ_SRC_ENGINE_CHECK_H_
