// Structural checks of a qcow2 file, independent of the engine's caches: the
// simulation tests' oracle and the engine's repair of dirty images.
//
// CheckImage recomputes every cluster's reference count the way
// `qemu-img check` does (header cluster, L1 tables of the active layer and of
// every snapshot, each L2 table once per L1 table that references it, data
// and compressed clusters through those L2 tables, refcount table and blocks,
// snapshot table) and compares it with the stored refcounts:
//   stored < computed  -> corruption (a cluster could be reused while in use)
//   stored > computed  -> leak
// plus unaligned / out-of-range table offsets and L2 entries with reserved
// bits (corruptions) and active-layer COPIED flags that disagree with the
// refcount (corruptions, as qemu-img check reports them).
//
// Thread-safety: the file is used from the calling coroutine only.
#ifndef UQ_SRC_ENGINE_CHECK_H_
#define UQ_SRC_ENGINE_CHECK_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "format/header.h"
#include "format/snapshot.h"
#include "src/io/block_file.h"
#include "src/io/task.h"

namespace uq::engine {

struct CheckResult {
  uint64_t corruptions = 0;
  uint64_t leaks = 0;
  uint64_t referenced_clusters = 0;   // clusters with a computed count > 0
  std::vector<std::string> messages;  // the first few problems, one line each
};

// Returns an error only if the header cannot be decoded or the file cannot be
// read; structural problems are counted in the result.
Task<absl::StatusOr<CheckResult>> CheckImage(io::BlockFile& file);

// Rebuilds the refcount structures from the references (qemu-img check -r all
// for refcounts): writes a fresh refcount table and blocks past the end of the
// used area, then the header pointing at them with the dirty bit cleared.
// `header` is updated to match. The old refcount structures become free space.
Task<absl::Status> RebuildRefcounts(io::BlockFile& file, format::Header& header);

// Reads and decodes the internal snapshot table.
Task<absl::StatusOr<std::vector<format::Snapshot>>> ReadSnapshotTable(io::BlockFile& file,
                                                                      const format::Header& header);

}  // namespace uq::engine

#endif  // UQ_SRC_ENGINE_CHECK_H_
