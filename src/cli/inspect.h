// What a disk holds, read without attaching it: its partition table and the
// file system of the whole disk or of each partition. `ublk-qcow2
// partitions` prints it; `mount` without --partition chooses from it.
#ifndef UQ_SRC_CLI_INSPECT_H_
#define UQ_SRC_CLI_INSPECT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "src/cli/disk_reader.h"
#include "src/cli/fs_probe.h"
#include "src/cli/partition_table.h"
#include "src/common/json.h"

namespace uq::cli {

struct DiskLayout {
  uint64_t size_bytes = 0;
  // A file system on the whole disk. A FAT or NTFS boot sector in sector 0 is
  // that file system's, not a partition table.
  FileSystem whole;
  PartitionTable table;
  std::vector<FileSystem> fs;  // fs[i]: on table.partitions[i] (none for an extended one)
};

absl::StatusOr<DiskLayout> InspectDisk(const DiskReader& disk);

// What `mount` without --partition mounts: the one partition with a mountable
// file system (0 mountable or several: FailedPrecondition asking for
// --partition), or, without partitions, the whole disk when it holds a
// mountable file system (NotFound otherwise). 0 = the whole disk.
absl::StatusOr<uint32_t> ChooseMountTarget(const DiskLayout& layout);

// The table for people: a summary line for `image`, then one line per
// partition (number, start, sectors, size, type, file system, label).
std::string LayoutText(const DiskLayout& layout, absl::string_view image);

// {"partitiontable": ..., "filesystems": [...]}: "partitiontable" is what
// `sfdisk -J` prints for the same disk named `device` (absent without a
// table); "filesystems" names each recognised file system (partition 0 is
// the whole disk).
common::Json LayoutJson(const DiskLayout& layout, absl::string_view device);

// "1.5 GiB", "32 MiB", "512 B".
std::string HumanSize(uint64_t bytes);

}  // namespace uq::cli

#endif  // UQ_SRC_CLI_INSPECT_H_
