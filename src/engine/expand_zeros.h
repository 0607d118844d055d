// The L2 work of qemu-img amend's downgrade to compat=0.10 (QEMU's
// qcow2_downgrade): version 2 has no zero flag, so every zero cluster of the
// active L1 table and of every snapshot's becomes a plain one, and a zstd
// image may only switch to zlib while it holds no compressed cluster.
//
// Thread-safety: coroutines on a file the caller owns and locks; nothing else
// may write it meanwhile.
#ifndef UQ_SRC_ENGINE_EXPAND_ZEROS_H_
#define UQ_SRC_ENGINE_EXPAND_ZEROS_H_

#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "format/header.h"
#include "format/snapshot.h"
#include "src/io/block_file.h"
#include "src/io/task.h"

namespace uq::engine {

struct L2Census {
  bool zero_plain = false;           // a zero flag without a host cluster
  bool zero_alloc = false;           // a zero flag on a preallocated host cluster
  bool compressed_clusters = false;  // a compressed descriptor
};

// Reads the L1 tables of `h` and `snapshots` and each L2 table they name
// once. Bytes past the end of the file read as zeros (an entry there is
// unallocated); nothing is assumed of offsets beyond their alignment.
Task<absl::StatusOr<L2Census>> CensusL2(io::BlockFile& file, const format::Header& h,
                                        const std::vector<format::Snapshot>& snapshots);

// Turns every zero cluster into a version 2 one, as QEMU's
// qcow2_expand_zero_clusters does without a backing file: a plain zero
// cluster becomes unallocated (it reads as zeros), a preallocated one gets
// zeros written into its host cluster and loses the flag. Refcounts do not
// change. Each L2 table is rewritten only after the zeros it relies on are
// durable (a Flush between them), so a crash leaves a valid image with the
// same guest contents; a final Flush makes the last table durable.
// REQUIRES: no backing file, no extended L2 and no data file; the image
// checked clean (so a preallocated cluster is data, never metadata).
Task<absl::Status> ExpandZeroClusters(io::BlockFile& file, const format::Header& h,
                                      const std::vector<format::Snapshot>& snapshots);

}  // namespace uq::engine

#endif  // UQ_SRC_ENGINE_EXPAND_ZEROS_H_
