// The L2 work of qemu-img amend's downgrade to compat=0.10 (QEMU's
// qcow2_downgrade): version 2 has no zero flag, so every zero cluster of the
// active L1 table and of every snapshot's becomes a plain one, and a zstd
// image may only switch to zlib while it holds no compressed cluster.
//
// Thread-safety: plain functions on a descriptor the caller owns and locks.
#ifndef UQ_TOOLS_AMEND_ZERO_H_
#define UQ_TOOLS_AMEND_ZERO_H_

#include <vector>

#include "absl/status/statusor.h"
#include "format/header.h"
#include "format/snapshot.h"
#include "tools/util.h"

namespace uq::tools {

struct L2Census {
  bool zero_plain = false;           // a zero flag without a host cluster
  bool zero_alloc = false;           // a zero flag on a preallocated host cluster
  bool compressed_clusters = false;  // a compressed descriptor
};

// Reads the L1 tables of `h` and `snapshots` and each L2 table they name
// once. Bytes past the end of the file read as zeros (an entry there is
// unallocated); nothing is assumed of offsets beyond their alignment.
absl::StatusOr<L2Census> CensusL2(const PosixFile& file, const format::Header& h,
                                  const std::vector<format::Snapshot>& snapshots);

// Turns every zero cluster into a version 2 one, as QEMU's
// qcow2_expand_zero_clusters does without a backing file: a plain zero
// cluster becomes unallocated (it reads as zeros), a preallocated one gets
// zeros written into its host cluster and loses the flag. Refcounts do not
// change. Each L2 table is rewritten only after the zeros it relies on are
// durable, so a crash leaves a valid image with the same guest contents.
// REQUIRES: no backing file, no extended L2 and no data file; the image
// checked clean (so a preallocated cluster is data, never metadata).
absl::Status ExpandZeroClusters(const PosixFile& file, const format::Header& h,
                                const std::vector<format::Snapshot>& snapshots);

}  // namespace uq::tools

#endif  // UQ_TOOLS_AMEND_ZERO_H_
