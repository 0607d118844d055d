// The walk over one tree of an image (an L1 table, the L2 tables it names
// and the clusters they reference) that snapshot create, delete and revert
// make in place (QEMU's qcow2_update_snapshot_refcount), and the active L1
// table as a vector. Internal to snapshot.cc.
//
// Thread-safety: as snapshot.h: no request in flight on the image.
#ifndef UQ_SRC_ENGINE_SNAPSHOT_TREE_H_
#define UQ_SRC_ENGINE_SNAPSHOT_TREE_H_

#include <cstdint>
#include <vector>

#include "src/engine/image_parts.h"
#include "src/io/task.h"

namespace uq::engine::snapshot_internal {

// What a walk of a tree does (QEMU's qcow2_update_snapshot_refcount with
// addend 1, 0 and -1).
enum class TreeOp {
  // Every referenced cluster and L2 table gains a reference; COPIED flags
  // are then set where the refcount is 1 (so cleared everywhere).
  kAddReference,
  // COPIED flags set exactly where the refcount is 1.
  kRecomputeCopied,
  // One reference to everything is queued for the next flush, which applies
  // it once the change that unnamed the tree is durable. Cached slices of
  // tables about to be freed are dropped, so a later write-back cannot land
  // on a reused cluster.
  kDropReference,
};

// Walks the tree `l1` names through the L2 cache and applies `op`. COPIED
// flags change in the L2 entries (stored) and in `l1` (the caller's to
// store). REQUIRES: MetaFile::lock().
Task<int> WalkTree(ImageParts& p, std::vector<uint64_t>& l1, TreeOp op);

// The active L1 table's entries.
std::vector<uint64_t> ActiveL1(ImageParts& p);
// Stores the entries of `l1` that differ from the active table's.
// REQUIRES: MetaFile::lock().
void StoreActiveL1(ImageParts& p, const std::vector<uint64_t>& l1);
// Recomputes the active COPIED flags from the refcounts (after frees).
Task<int> RecomputeCopied(ImageParts& p);

}  // namespace uq::engine::snapshot_internal

#endif  // UQ_SRC_ENGINE_SNAPSHOT_TREE_H_
