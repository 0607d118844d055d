// Internal snapshots of an open qcow2 image: create, revert to, delete
// (qemu-img snapshot -c / -a / -d; QEMU's block/qcow2-snapshot.c).
//
// Reference counting follows QEMU's qcow2_update_snapshot_refcount: a host
// cluster's refcount is the number of L1 entries (active and every
// snapshot's) naming an L2 table that references it, plus one per L1 entry
// for the L2 table itself; COPIED is set in the active L1 and L2 entries
// exactly where that count is 1.
//
// Crash safety: on a version 3 image the dirty bit is made durable first,
// because a refcount change and the COPIED flag that depends on it live in
// different clusters and cannot reach the disk together; a crash anywhere
// leaves either the old or the new snapshot table and active L1 table, and
// the next writable open rebuilds the refcounts and fixes the COPIED flags
// (leaked clusters at worst). In order:
//  - create: the snapshot's L1 copy is written, the refcounts of every
//    cluster the active tree references go up (and COPIED flags down), the
//    new snapshot table is written, all of it flushed, and only then does the
//    header name the new table (count and offset in one write); the old table
//    is freed after that.
//  - delete: the new table without the entry is written and flushed, the
//    header names it, then the references of the snapshot's tree are dropped
//    (frees applied by the flush) and the active COPIED flags recomputed.
//  - revert: the snapshot's tree gains a reference and that is flushed, the
//    active L1 table is overwritten in place with the snapshot's, the old
//    tree's references are dropped once that is durable, and COPIED flags are
//    recomputed. A snapshot L1 table longer than the active one grows the
//    active one to its length first (as QEMU does). A revert to a snapshot of
//    another disk size is made out of place, as on version 2 below, with the
//    size in the same header write (QEMU resizes first and reverts then, so a
//    crash between the two leaves the resized disk with the old contents).
// A version 2 image has no dirty bit, and a crash between a refcount change
// and the COPIED flag that depends on it would leave them at odds, which
// `qemu-img check` counts as corruption (QEMU has that window). So on
// version 2 each operation is made out of place instead (SwitchTrees in
// check.h): the new active tree is a copy of every L2 table it names (create:
// the old active L1 table becomes the snapshot's as it stands), written with
// the new snapshot table and refcount structures counted from the new state
// past the end of the file, and one header write switches all of it. A crash
// leaves the old image or the new one, with zero corruptions either way. The
// cost: each operation writes every active L2 table once more, and the old
// tables and refcount structures become free space.
//
// Refused (before any change): read-only images and images with an external
// data file (QEMU: Operation not supported), a missing snapshot, more than
// QEMU's 65536 snapshots, 1-bit refcounts (no second reference; QEMU fails
// half-way with EINVAL), an L1 table to grow past what one refcount block
// covers (see CheckL1Growth).
//
// REQUIRES for every function: no request in flight on the image and none
// issued until it returns. The image stays open and usable.
#ifndef UQ_SRC_ENGINE_SNAPSHOT_H_
#define UQ_SRC_ENGINE_SNAPSHOT_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "src/engine/qcow2_image.h"
#include "src/io/task.h"

namespace uq::engine {

struct NewSnapshot {
  std::string name;  // QEMU keeps at most 255 bytes of it
  uint32_t date_sec = 0;
  uint32_t date_nsec = 0;
};

// Adds a snapshot of the active disk (id: the next free number).
Task<absl::Status> CreateSnapshot(Qcow2Image& image, const NewSnapshot& snapshot);
// Deletes the first snapshot named `name` (NotFound: "snapshot not found").
Task<absl::Status> DeleteSnapshot(Qcow2Image& image, const std::string& name);
// Reverts the active disk to the snapshot with id `id_or_name`, else the
// first one with that name (NotFound: "Failed to load snapshot: ...").
Task<absl::Status> RevertSnapshot(Qcow2Image& image, const std::string& id_or_name);

}  // namespace uq::engine

#endif  // UQ_SRC_ENGINE_SNAPSHOT_H_
