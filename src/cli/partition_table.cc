#include "src/cli/partition_table.h"

#include <zlib.h>

#include <algorithm>
#include <array>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "format/status_macros.h"

namespace uq::cli {
namespace {

// MBR (sector 0, and each extended boot record): four 16-byte entries at 446.
constexpr size_t kMbrEntries = 446;
constexpr size_t kMbrEntryBytes = 16;
constexpr size_t kMbrSignature = 510;
constexpr size_t kMbrDiskId = 440;
constexpr uint8_t kTypeGptProtective = 0xee;
// The kernel's limit on partition numbers (DISK_MAX_PARTS), which also bounds
// the chain of logical partitions.
constexpr uint32_t kMaxPartitionNumber = 256;

// GPT header fields (UEFI spec, "GPT Header"), little-endian.
constexpr char kGptSignature[] = "EFI PART";
constexpr uint32_t kGptMinHeaderBytes = 92;
constexpr uint32_t kGptMinEntryBytes = 128;
constexpr uint32_t kGptMaxEntryBytes = 4096;
// Far above what partitioning tools write (128 x 128 bytes), low enough that a
// hostile count cannot make us read or allocate much.
constexpr uint64_t kGptMaxArrayBytes = 1 << 20;
// Sector numbers are reported as JSON integers (int64).
constexpr uint64_t kMaxLba = (uint64_t{1} << 62) - 1;

struct MbrEntry {
  uint8_t boot = 0;
  uint8_t type = 0;
  uint32_t start = 0;  // sectors, relative to the record's base
  uint32_t size = 0;   // sectors
};

MbrEntry DecodeMbrEntry(std::span<const uint8_t> sector, int slot) {
  std::span<const uint8_t> e = sector.subspan(kMbrEntries + kMbrEntryBytes * slot, kMbrEntryBytes);
  return MbrEntry{e[0], e[4], LoadLE32(e, 8), LoadLE32(e, 12)};
}

bool HasBootSignature(std::span<const uint8_t> sector) {
  return sector[kMbrSignature] == 0x55 && sector[kMbrSignature + 1] == 0xaa;
}

bool IsExtendedType(uint8_t type) { return type == 0x05 || type == 0x0f || type == 0x85; }

std::string DosType(uint8_t type) { return absl::StrFormat("%x", type); }

absl::Status ReadSectors(const DiskReader& disk, uint64_t lba, std::span<uint8_t> out,
                         absl::string_view what) {
  const uint64_t offset = lba * kSectorBytes;
  if (lba > disk.size_bytes / kSectorBytes || !disk.Contains(offset, out.size())) {
    return absl::OutOfRangeError(absl::StrCat(what, " at sector ", lba, " lies beyond the disk (",
                                              disk.size_sectors(), " sectors)"));
  }
  absl::Status st = disk.read(offset, out);
  if (!st.ok()) return absl::Status(st.code(), absl::StrCat(what, ": ", st.message()));
  return absl::OkStatus();
}

// The logical partitions (numbers 5, 6, ...) in the chain of extended boot
// records that starts at the extended partition `ext`.
absl::Status ReadLogicalPartitions(const DiskReader& disk, const MbrEntry& ext,
                                   std::vector<Partition>& out) {
  std::array<uint8_t, kSectorBytes> sector;
  std::set<uint64_t> seen;
  uint64_t ebr = ext.start;
  uint32_t number = 5;
  while (true) {
    if (!seen.insert(ebr).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("extended partition: the chain of boot records loops at sector ", ebr));
    }
    if (number > kMaxPartitionNumber) {
      return absl::InvalidArgumentError(absl::StrCat(
          "extended partition: more than ", kMaxPartitionNumber - 4, " logical partitions"));
    }
    UQ_RETURN_IF_ERROR(ReadSectors(disk, ebr, sector, "extended boot record"));
    if (!HasBootSignature(sector)) {
      return absl::InvalidArgumentError(
          absl::StrCat("extended boot record at sector ", ebr, " has no 0x55AA signature"));
    }
    MbrEntry logical = DecodeMbrEntry(sector, 0);
    MbrEntry next = DecodeMbrEntry(sector, 1);
    if (logical.size != 0) {
      Partition p;
      p.number = number++;
      p.start_sectors = ebr + logical.start;
      p.size_sectors = logical.size;
      p.type = DosType(logical.type);
      p.bootable = logical.boot == 0x80;
      out.push_back(std::move(p));
    }
    if (next.size == 0 || !IsExtendedType(next.type)) return absl::OkStatus();
    // The next record's start is relative to the extended partition.
    ebr = uint64_t{ext.start} + next.start;
  }
}

std::string FormatGuid(std::span<const uint8_t> g) {
  // The first three fields are little-endian, the last two big-endian bytes.
  return absl::StrFormat("%08X-%04X-%04X-%02X%02X-%02X%02X%02X%02X%02X%02X", LoadLE32(g, 0),
                         LoadLE16(g, 4), LoadLE16(g, 6), g[8], g[9], g[10], g[11], g[12], g[13],
                         g[14], g[15]);
}

void AppendUtf8(std::string& s, uint32_t c) {
  if (c < 0x80) {
    s += static_cast<char>(c);
  } else if (c < 0x800) {
    s += static_cast<char>(0xc0 | (c >> 6));
    s += static_cast<char>(0x80 | (c & 0x3f));
  } else if (c < 0x10000) {
    s += static_cast<char>(0xe0 | (c >> 12));
    s += static_cast<char>(0x80 | ((c >> 6) & 0x3f));
    s += static_cast<char>(0x80 | (c & 0x3f));
  } else {
    s += static_cast<char>(0xf0 | (c >> 18));
    s += static_cast<char>(0x80 | ((c >> 12) & 0x3f));
    s += static_cast<char>(0x80 | ((c >> 6) & 0x3f));
    s += static_cast<char>(0x80 | (c & 0x3f));
  }
}

// UTF-16LE up to the first NUL; unpaired surrogates become U+FFFD.
std::string Utf16LeToUtf8(std::span<const uint8_t> b) {
  std::string out;
  for (size_t i = 0; i + 1 < b.size(); i += 2) {
    uint32_t c = LoadLE16(b, i);
    if (c == 0) break;
    if (c >= 0xd800 && c < 0xdc00 && i + 3 < b.size()) {
      uint32_t low = LoadLE16(b, i + 2);
      if (low >= 0xdc00 && low < 0xe000) {
        AppendUtf8(out, 0x10000 + ((c - 0xd800) << 10) + (low - 0xdc00));
        i += 2;
        continue;
      }
    }
    AppendUtf8(out, c >= 0xd800 && c < 0xe000 ? 0xfffd : c);
  }
  return out;
}

uint32_t Crc32(std::span<const uint8_t> b) {
  return static_cast<uint32_t>(::crc32(0L, b.data(), static_cast<uInt>(b.size())));
}

bool AllZero(std::span<const uint8_t> b) {
  return std::all_of(b.begin(), b.end(), [](uint8_t x) { return x == 0; });
}

// Reads and checks the GPT header at `lba` and its partition entry array.
absl::StatusOr<PartitionTable> ReadGptAt(const DiskReader& disk, uint64_t lba) {
  std::array<uint8_t, kSectorBytes> h;
  const std::string where = absl::StrCat("GPT header at sector ", lba);
  UQ_RETURN_IF_ERROR(ReadSectors(disk, lba, h, where));
  auto bad = [&](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", what));
  };
  if (!std::equal(h.begin(), h.begin() + 8, kGptSignature)) return bad("no \"EFI PART\" signature");
  const uint32_t header_bytes = LoadLE32(h, 12);
  if (header_bytes < kGptMinHeaderBytes || header_bytes > kSectorBytes) {
    return bad(absl::StrCat("header size ", header_bytes, " is not in [92, 512]"));
  }
  std::array<uint8_t, kSectorBytes> zeroed = h;
  std::fill(zeroed.begin() + 16, zeroed.begin() + 20, 0);
  const uint32_t header_crc = LoadLE32(h, 16);
  if (Crc32(std::span(zeroed).first(header_bytes)) != header_crc) {
    return bad(absl::StrFormat("header CRC32 0x%08x does not match its bytes", header_crc));
  }
  if (LoadLE64(h, 24) != lba) return bad(absl::StrCat("names itself sector ", LoadLE64(h, 24)));
  PartitionTable t;
  t.kind = TableKind::kGpt;
  t.first_lba = LoadLE64(h, 40);
  t.last_lba = LoadLE64(h, 48);
  t.id = FormatGuid(std::span(h).subspan(56, 16));
  const uint64_t entries_lba = LoadLE64(h, 72);
  const uint32_t entry_count = LoadLE32(h, 80);
  const uint32_t entry_bytes = LoadLE32(h, 84);
  const uint32_t entries_crc = LoadLE32(h, 88);
  if (t.first_lba > t.last_lba || t.last_lba >= disk.size_sectors()) {
    return bad(absl::StrCat("usable sectors ", t.first_lba, "-", t.last_lba,
                            " are not on the disk (", disk.size_sectors(), " sectors)"));
  }
  if (entry_bytes < kGptMinEntryBytes || entry_bytes > kGptMaxEntryBytes ||
      (entry_bytes & (entry_bytes - 1)) != 0) {
    return bad(absl::StrCat("partition entry size ", entry_bytes,
                            " is not a power of two in [128, 4096]"));
  }
  const uint64_t array_bytes = uint64_t{entry_count} * entry_bytes;
  if (array_bytes > kGptMaxArrayBytes) {
    return bad(absl::StrCat(entry_count, " partition entries of ", entry_bytes,
                            " bytes exceed the 1 MiB limit"));
  }
  std::vector<uint8_t> array((array_bytes + kSectorBytes - 1) / kSectorBytes * kSectorBytes);
  UQ_RETURN_IF_ERROR(ReadSectors(disk, entries_lba, array, "GPT partition entries"));
  std::span<const uint8_t> entries = std::span(array).first(array_bytes);
  if (Crc32(entries) != entries_crc) {
    return bad(
        absl::StrFormat("partition entries CRC32 0x%08x does not match their bytes", entries_crc));
  }
  for (uint32_t i = 0; i < entry_count; ++i) {
    std::span<const uint8_t> e = entries.subspan(uint64_t{i} * entry_bytes, kGptMinEntryBytes);
    if (AllZero(e.first(16))) continue;  // unused entry
    Partition p;
    p.number = i + 1;
    const uint64_t first = LoadLE64(e, 32);
    const uint64_t last = LoadLE64(e, 40);
    if (first > last) {
      return bad(absl::StrCat("partition ", p.number, " ends (sector ", last,
                              ") before it starts (sector ", first, ")"));
    }
    if (last - first >= disk.size_sectors() || last > kMaxLba) {
      return bad(absl::StrCat("partition ", p.number, " (sectors ", first, "-", last,
                              ") is larger than the disk or beyond 2^62"));
    }
    p.start_sectors = first;
    p.size_sectors = last - first + 1;  // no overflow: smaller than the disk
    p.type = FormatGuid(e.first(16));
    p.uuid = FormatGuid(e.subspan(16, 16));
    p.attr_bits = LoadLE64(e, 48);
    p.name = Utf16LeToUtf8(e.subspan(56, 72));
    t.partitions.push_back(std::move(p));
  }
  return t;
}

absl::StatusOr<PartitionTable> ReadGpt(const DiskReader& disk) {
  absl::StatusOr<PartitionTable> primary = ReadGptAt(disk, 1);
  if (primary.ok() || disk.size_sectors() < 3) return primary;
  absl::StatusOr<PartitionTable> backup = ReadGptAt(disk, disk.size_sectors() - 1);
  if (backup.ok()) return backup;
  return absl::InvalidArgumentError(
      absl::StrCat(primary.status().message(), "; backup: ", backup.status().message()));
}

}  // namespace

absl::StatusOr<PartitionTable> ReadPartitionTable(const DiskReader& disk) {
  PartitionTable t;
  if (disk.size_bytes < kSectorBytes) return t;
  std::array<uint8_t, kSectorBytes> mbr;
  UQ_RETURN_IF_ERROR(ReadSectors(disk, 0, mbr, "master boot record"));
  if (!HasBootSignature(mbr)) return t;
  std::array<MbrEntry, 4> entries;
  for (int slot = 0; slot < 4; ++slot) {
    entries[slot] = DecodeMbrEntry(mbr, slot);
    // Anything else in the boot flag is boot code, or a FAT boot sector.
    if (entries[slot].boot != 0 && entries[slot].boot != 0x80) return t;
  }
  if (std::any_of(entries.begin(), entries.end(),
                  [](const MbrEntry& e) { return e.type == kTypeGptProtective; })) {
    return ReadGpt(disk);
  }
  t.kind = TableKind::kDos;
  t.id = absl::StrFormat("0x%08x", LoadLE32(mbr, kMbrDiskId));
  const MbrEntry* extended = nullptr;
  for (int slot = 0; slot < 4; ++slot) {
    const MbrEntry& e = entries[slot];
    if (e.size == 0) continue;
    Partition p;
    p.number = static_cast<uint32_t>(slot + 1);
    p.start_sectors = e.start;
    p.size_sectors = e.size;
    p.type = DosType(e.type);
    p.bootable = e.boot == 0x80;
    p.extended = IsExtendedType(e.type);
    if (p.extended && extended == nullptr) extended = &e;
    t.partitions.push_back(std::move(p));
  }
  if (extended != nullptr) {
    UQ_RETURN_IF_ERROR(ReadLogicalPartitions(disk, *extended, t.partitions));
  }
  return t;
}

const char* TableKindName(TableKind kind) {
  switch (kind) {
    case TableKind::kDos:
      return "dos";
    case TableKind::kGpt:
      return "gpt";
    case TableKind::kNone:
      break;
  }
  return "none";
}

std::string PartitionTypeName(TableKind kind, const Partition& p) {
  struct Name {
    const char* type;
    const char* name;
  };
  static constexpr Name kDosNames[] = {{"83", "Linux"},
                                       {"82", "Linux swap"},
                                       {"8e", "Linux LVM"},
                                       {"fd", "Linux RAID"},
                                       {"5", "Extended"},
                                       {"f", "W95 Ext'd (LBA)"},
                                       {"85", "Linux extended"},
                                       {"7", "HPFS/NTFS/exFAT"},
                                       {"b", "W95 FAT32"},
                                       {"c", "W95 FAT32 (LBA)"},
                                       {"e", "W95 FAT16 (LBA)"},
                                       {"6", "FAT16"},
                                       {"ef", "EFI (FAT-12/16/32)"}};
  static constexpr Name kGptNames[] = {
      {"C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "EFI System"},
      {"21686148-6449-6E6F-744E-656564454649", "BIOS boot"},
      {"0FC63DAF-8483-4772-8E79-3D69D8477DE4", "Linux filesystem"},
      {"0657FD6D-A4AB-43C4-84E5-0933C84B4F4F", "Linux swap"},
      {"E6D6D379-F507-44C2-A23C-238F2A3DF928", "Linux LVM"},
      {"A19D880F-05FC-4D3B-A006-743F0F84911E", "Linux RAID"},
      {"4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", "Linux root (x86-64)"},
      {"933AC7E1-2EB4-4F13-B844-0E14E2AEF915", "Linux home"},
      {"BC13C2FF-59E6-4262-A352-B275FD6F7172", "Linux extended boot"},
      {"EBD0A0A2-B9E5-4433-87C0-68B6B72699C7", "Microsoft basic data"},
      {"E3C9E316-0B5C-4DB8-817D-F92DF00215AE", "Microsoft reserved"}};
  std::span<const Name> names;
  if (kind == TableKind::kDos) names = kDosNames;
  if (kind == TableKind::kGpt) names = kGptNames;
  for (const Name& n : names) {
    if (p.type == n.type) return n.name;
  }
  return p.type;
}

std::string GptAttrsString(uint64_t attr_bits) {
  std::vector<std::string> words;
  static constexpr const char* kNamed[] = {"RequiredPartition", "NoBlockIOProtocol",
                                           "LegacyBIOSBootable"};
  for (int bit = 0; bit < 3; ++bit) {
    if (attr_bits & (uint64_t{1} << bit)) words.emplace_back(kNamed[bit]);
  }
  std::vector<int> guid_bits;
  for (int bit = 48; bit < 64; ++bit) {
    if (attr_bits & (uint64_t{1} << bit)) guid_bits.push_back(bit);
  }
  if (!guid_bits.empty()) words.push_back(absl::StrCat("GUID:", absl::StrJoin(guid_bits, ",")));
  return absl::StrJoin(words, " ");
}

}  // namespace uq::cli
