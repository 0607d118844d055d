#include "src/cli/fs_probe.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <span>
#include <string_view>

#include "format/status_macros.h"

namespace uq::cli {
namespace {

// The first 4 KiB of a region hold the ext, xfs, FAT, NTFS and swap
// superblocks; btrfs keeps its first superblock at 64 KiB.
constexpr size_t kHeadBytes = 4096;
constexpr uint64_t kBtrfsSuperOffset = 64 * 1024;
constexpr size_t kBtrfsSuperBytes = 4096;

bool Matches(std::span<const uint8_t> b, size_t at, std::string_view magic) {
  return at + magic.size() <= b.size() &&
         std::memcmp(b.data() + at, magic.data(), magic.size()) == 0;
}

// A fixed-width label field: up to the first NUL, trailing blanks trimmed
// (FAT pads with spaces), control characters shown as '?'.
std::string Label(std::span<const uint8_t> b, size_t at, size_t width) {
  std::string s;
  for (size_t i = at; i < at + width && i < b.size() && b[i] != 0; ++i) {
    s += (b[i] < 0x20 || b[i] == 0x7f) ? '?' : static_cast<char>(b[i]);
  }
  while (!s.empty() && s.back() == ' ') s.pop_back();
  return s;
}

// ext2/3/4: superblock at 1024, magic 0xEF53 at 0x38, name at 0x78. The
// feature words tell the variants apart as blkid does.
bool ProbeExt(std::span<const uint8_t> head, FileSystem& fs) {
  constexpr size_t kSuper = 1024;
  if (LoadLE16(head, kSuper + 0x38) != 0xef53) return false;
  const uint32_t compat = LoadLE32(head, kSuper + 0x5c);
  const uint32_t incompat = LoadLE32(head, kSuper + 0x60);
  const uint32_t ro_compat = LoadLE32(head, kSuper + 0x64);
  constexpr uint32_t kIncompatJournalDev = 0x8;
  if (incompat & kIncompatJournalDev) {
    fs.type = "jbd";
  } else if ((incompat & (0x40 | 0x80 | 0x200)) != 0 ||         // extents, 64bit, flex_bg
             (ro_compat & (0x8 | 0x10 | 0x40 | 0x400)) != 0) {  // huge_file, gdt_csum, ...
    fs.type = "ext4";
  } else if (compat & 0x4) {  // has_journal
    fs.type = "ext3";
  } else {
    fs.type = "ext2";
  }
  fs.label = Label(head, kSuper + 0x78, 16);
  return true;
}

// FAT: a boot sector whose BIOS parameter block makes sense (the checks keep
// an MBR's boot code from passing for one).
bool ProbeFat(std::span<const uint8_t> head, FileSystem& fs) {
  if (head[510] != 0x55 || head[511] != 0xaa) return false;
  if (head[0] != 0xeb && head[0] != 0xe9) return false;
  const uint16_t sector_bytes = LoadLE16(head, 11);
  const uint8_t cluster_sectors = head[13];
  const uint16_t reserved = LoadLE16(head, 14);
  const uint8_t fats = head[16];
  const uint8_t media = head[21];
  if (sector_bytes < 512 || sector_bytes > 4096 || (sector_bytes & (sector_bytes - 1)) != 0 ||
      cluster_sectors == 0 || (cluster_sectors & (cluster_sectors - 1)) != 0 || reserved == 0 ||
      fats == 0 || fats > 2 || (media != 0xf0 && media < 0xf8)) {
    return false;
  }
  // FAT32 keeps its extended parameter block (label, type) 28 bytes later.
  const bool fat32 = LoadLE16(head, 22) == 0;
  if (fat32 ? !Matches(head, 82, "FAT32") : !Matches(head, 54, "FAT")) return false;
  fs.type = "vfat";
  fs.label = Label(head, fat32 ? 71 : 43, 11);
  if (fs.label == "NO NAME") fs.label.clear();
  return true;
}

}  // namespace

absl::StatusOr<FileSystem> ProbeFileSystem(const DiskReader& disk, uint64_t offset_bytes,
                                           uint64_t size_bytes) {
  FileSystem fs;
  if (size_bytes < kHeadBytes || !disk.Contains(offset_bytes, size_bytes)) return fs;
  std::array<uint8_t, kHeadBytes> head;
  UQ_RETURN_IF_ERROR(disk.read(offset_bytes, head));
  if (ProbeExt(head, fs)) return fs;
  if (Matches(head, 0, "XFSB")) {
    fs.type = "xfs";
    fs.label = Label(head, 108, 12);
    return fs;
  }
  if (Matches(head, 3, "NTFS    ")) {
    fs.type = "ntfs";
    return fs;
  }
  if (ProbeFat(head, fs)) return fs;
  // Swap with 4 KiB pages: the signature ends the first page; the label
  // follows the 1 KiB of boot bits, version, last page, bad pages and uuid.
  if (Matches(head, kHeadBytes - 10, "SWAPSPACE2") ||
      Matches(head, kHeadBytes - 10, "SWAP-SPACE")) {
    fs.type = "swap";
    fs.label = Label(head, 1024 + 12 + 16, 16);
    return fs;
  }
  if (size_bytes >= kBtrfsSuperOffset + kBtrfsSuperBytes) {
    std::array<uint8_t, kBtrfsSuperBytes> super;
    UQ_RETURN_IF_ERROR(disk.read(offset_bytes + kBtrfsSuperOffset, super));
    if (Matches(super, 0x40, "_BHRfS_M")) {
      fs.type = "btrfs";
      fs.label = Label(super, 0x12b, 256);
    }
  }
  return fs;
}

}  // namespace uq::cli
