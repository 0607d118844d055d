// Recognising a file system by its superblock, as blkid does for the common
// Linux ones: ext2/ext3/ext4, xfs, btrfs, vfat, ntfs and swap, with their
// labels. Superblocks are untrusted: only fixed offsets inside buffers of a
// fixed size are read, and a label is cut at its field's width.
#ifndef UQ_SRC_CLI_FS_PROBE_H_
#define UQ_SRC_CLI_FS_PROBE_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "src/cli/disk_reader.h"

namespace uq::cli {

struct FileSystem {
  std::string type;   // blkid's name ("ext4", "vfat", "swap"); empty: none recognised
  std::string label;  // control characters replaced by '?'

  // Holds files that mount(8) can mount (swap cannot).
  bool mountable() const { return !type.empty() && type != "swap"; }
};

// The file system that starts at `offset_bytes` of `disk`, in a region of
// `size_bytes` (a partition, or the whole disk). A region too small for a
// superblock holds none. Errors are read errors only.
absl::StatusOr<FileSystem> ProbeFileSystem(const DiskReader& disk, uint64_t offset_bytes,
                                           uint64_t size_bytes);

}  // namespace uq::cli

#endif  // UQ_SRC_CLI_FS_PROBE_H_
