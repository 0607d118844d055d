// Partition tables read from a disk's bytes: MBR ("dos", with the logical
// partitions of an extended partition) and GPT (primary header, or the
// backup at the disk's last sector when the primary is damaged). Fields are
// kept the way `sfdisk -J` reports them, so `ublk-qcow2 partitions` can
// print the same JSON.
//
// The table is untrusted input: every count, offset and size read from the
// disk is checked against the disk and against fixed limits before use; a
// malformed table is an error with one line naming the field and value.
#ifndef UQ_SRC_CLI_PARTITION_TABLE_H_
#define UQ_SRC_CLI_PARTITION_TABLE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "src/cli/disk_reader.h"

namespace uq::cli {

enum class TableKind { kNone, kDos, kGpt };

struct Partition {
  uint32_t number = 0;  // as the kernel names the node: /dev/ublkbNp<number>
  uint64_t start_sectors = 0;
  uint64_t size_sectors = 0;
  // sfdisk's spelling: the MBR type byte in lower-case hex without "0x"
  // ("83", "5"), or the GPT type GUID in upper case.
  std::string type;
  bool bootable = false;   // dos: the active flag (0x80)
  bool extended = false;   // dos: a container of logical partitions
  std::string uuid;        // gpt: the partition's unique GUID
  std::string name;        // gpt: UTF-8 (from UTF-16LE)
  uint64_t attr_bits = 0;  // gpt: the attribute field
};

struct PartitionTable {
  TableKind kind = TableKind::kNone;
  std::string id;          // dos: "0x1234abcd" (disk signature); gpt: the disk GUID
  uint64_t first_lba = 0;  // gpt: first and last usable sectors
  uint64_t last_lba = 0;
  std::vector<Partition> partitions;  // in number order
};

// kNone (no error) when sector 0 holds no partition table: no 0x55AA
// signature, or boot flags other than 0x00 / 0x80 (a FAT boot sector).
absl::StatusOr<PartitionTable> ReadPartitionTable(const DiskReader& disk);

// "dos", "gpt" (sfdisk's "label"), or "none".
const char* TableKindName(TableKind kind);

// A human name for the partition's type ("Linux filesystem", "EFI System"),
// or its sfdisk spelling when the type is not a common one.
std::string PartitionTypeName(TableKind kind, const Partition& p);

// sfdisk's "attrs": "RequiredPartition NoBlockIOProtocol LegacyBIOSBootable
// GUID:48,63" (the named bits 0-2 and the type-specific bits 48-63; empty
// when none of them is set).
std::string GptAttrsString(uint64_t attr_bits);

}  // namespace uq::cli

#endif  // UQ_SRC_CLI_PARTITION_TABLE_H_
