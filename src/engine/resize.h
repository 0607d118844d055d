// Resizing an open qcow2 image (qemu-img resize; QEMU's qcow2_co_truncate).
//
// Grow: the L1 table grows to exactly the entries the new size needs, moving
// when it must (new table allocated and its refcounts durable -> new table
// written -> fsync -> header l1_size/l1_table_offset -> fsync -> old table
// freed); a backing file longer than the old size is hidden by zeroing the
// new range (as QEMU's block layer asks with BDRV_REQ_ZERO_WRITE); the size
// field is written last, so a crash leaves the old disk.
//
// Shrink: the size field is written first (an L1 table longer than the disk
// needs is valid), so a crash leaves the new disk with, at worst, leaked
// clusters; then the clusters past the new end are unmapped (the L2 entries
// of the table the end falls in are cleared; tables wholly past it are
// unmapped from L1 and freed with the clusters only they reference, each
// free applied once the entry that dropped it is durable), and the file is
// truncated after its last used cluster. The last partial cluster is kept
// whole, as QEMU keeps it.
//
// Preallocation (grow only): after any zeroing, every guest cluster touching
// the added range that has no host cluster gets one, named by a normal
// COPIED entry (a zero cluster stays one under metadata preallocation, as
// QEMU's; an extended entry keeps its subcluster bits, except that falloc
// and full turn zero subclusters into allocated ones, as QEMU's), in
// contiguous runs; the clusters read as zeros (metadata: a hole past the
// file's end, zeroed inside it; falloc: the file system's zero range; full:
// written zeros), so what the disk reads does not change. A standard-L2
// first cluster over a backing file is written through the write path
// instead, so its head is copied up; with extended L2 under falloc and full
// over a longer backing file, the first cluster is rewritten whole (as it
// reads), so all its subclusters are allocated, as QEMU allocates them. All
// of it lands before the size does: a crash leaves the old disk with the
// new clusters past its end.
//
// An external data file is truncated to the new size, as QEMU does (after
// the entries past a new end are cleared, when shrinking; to the end of the
// last preallocated cluster, when preallocating); its clusters sit at their
// guest offsets, so preallocation names those. A raw data file maps every
// cluster: its grows are metadata-preallocated at least.
//
// Refusals, with QEMU's words: a size not a multiple of 512, a version 2
// image with snapshots, a version 2 image growing over a longer backing file
// (no zero flag to hide it). Not supported here (refused before any change):
// an L1 table of at least as many clusters as one refcount block covers
// (the allocator cannot place so long a run; only 512-byte clusters past
// 512 MiB and 4 KiB clusters past 2 TiB need one). Persistent bitmaps are
// the tool's to refuse: a writable open has already marked them stale.
#ifndef UQ_SRC_ENGINE_RESIZE_H_
#define UQ_SRC_ENGINE_RESIZE_H_

#include <cstdint>

#include "absl/status/status.h"
#include "src/engine/geometry.h"
#include "src/engine/image_parts.h"
#include "src/engine/qcow2_image.h"
#include "src/io/task.h"

namespace uq::engine {

// Resizes `image` to `new_size_bytes` guest bytes. REQUIRES: no request in
// flight on the image, and none issued until it returns. The image stays
// open and usable (at the new size) on success; on failure it is left
// consistent (zero corruptions), at the old or the new size.
Task<absl::Status> ResizeImage(Qcow2Image& image, uint64_t new_size_bytes,
                               GrowPreallocation prealloc);

// Whether the active L1 table can grow from `current_entries` to `entries`
// entries here (QEMU's limit, and the allocator's one-run limit above).
absl::Status CheckL1Growth(const Geometry& geo, uint64_t current_entries, uint64_t entries);

// Moves the active L1 table to a new place with `entries` entries (more than
// it has), keeping its entries: the new table's refcounts durable -> the
// table written -> fsync -> the header names it -> fsync; the old table is
// freed by the next flush. REQUIRES: CheckL1Growth passed, no request in
// flight, the dirty bit set.
Task<absl::Status> GrowL1Table(ImageParts& p, uint64_t entries);

}  // namespace uq::engine

#endif  // UQ_SRC_ENGINE_RESIZE_H_
