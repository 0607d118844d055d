// The internal snapshot list as qemu-img prints it (`info` and
// `snapshot -l`, QEMU's bdrv_snapshot_dump), and the snapshot fields both
// read from the v3 extra data.
#ifndef UQ_TOOLS_SNAPSHOT_LIST_H_
#define UQ_TOOLS_SNAPSHOT_LIST_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "format/snapshot.h"

namespace uq::tools {

// The VM state size: the 64-bit extra data field if present, else the
// 32-bit one.
uint64_t VmStateSize(const format::Snapshot& s);
// The instruction count, or nullopt when absent or unknown (-1).
std::optional<int64_t> Icount(const format::Snapshot& s);

// "Snapshot list:", the column header and one line per snapshot, each
// ending in a newline; dates in local time, as qemu-img shows them.
std::string SnapshotListText(const std::vector<format::Snapshot>& snapshots);

}  // namespace uq::tools

#endif  // UQ_TOOLS_SNAPSHOT_LIST_H_
