// Crafted disks for the partition-table and file-system tests: an in-memory
// disk with helpers that write MBRs, extended boot records and GPTs (CRCs
// included) and a few superblocks, all little-endian as on disk.
#ifndef UQ_TESTS_UNIT_CLI_DISK_BUILDER_H_
#define UQ_TESTS_UNIT_CLI_DISK_BUILDER_H_

#include <zlib.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "src/cli/disk_reader.h"

namespace uq::cli::testing {

class Disk {
 public:
  explicit Disk(uint64_t sectors) : bytes_(sectors * kSectorBytes) {}

  uint64_t sectors() const { return bytes_.size() / kSectorBytes; }
  std::vector<uint8_t>& bytes() { return bytes_; }

  DiskReader Reader() const {
    DiskReader r;
    r.size_bytes = bytes_.size();
    r.read = [this](uint64_t offset, std::span<uint8_t> out) -> absl::Status {
      if (offset > bytes_.size() || out.size() > bytes_.size() - offset) {
        return absl::OutOfRangeError(absl::StrCat("read beyond the disk at ", offset));
      }
      std::memcpy(out.data(), bytes_.data() + offset, out.size());
      return absl::OkStatus();
    };
    return r;
  }

  void Put16(uint64_t at, uint16_t v) { PutN(at, v, 2); }
  void Put32(uint64_t at, uint32_t v) { PutN(at, v, 4); }
  void Put64(uint64_t at, uint64_t v) { PutN(at, v, 8); }
  void PutBytes(uint64_t at, const std::string& s) { std::memcpy(&bytes_[at], s.data(), s.size()); }

  // One 16-byte MBR-style entry in slot `slot` of the boot record at `lba`.
  void MbrEntry(uint64_t lba, int slot, uint8_t boot, uint8_t type, uint32_t start, uint32_t size) {
    uint64_t e = lba * kSectorBytes + 446 + 16 * slot;
    bytes_[e] = boot;
    bytes_[e + 4] = type;
    Put32(e + 8, start);
    Put32(e + 12, size);
    Signature(lba);
  }
  void Signature(uint64_t lba) {
    bytes_[lba * kSectorBytes + 510] = 0x55;
    bytes_[lba * kSectorBytes + 511] = 0xaa;
  }

  struct GptPart {
    std::string type_guid;  // 16 raw bytes
    std::string uuid;       // 16 raw bytes
    uint64_t first = 0, last = 0, attrs = 0;
    std::u16string name;
  };
  // A protective MBR, then the GPT header at `header_lba` (1 or the last
  // sector) with `count` entries of 128 bytes at `entries_lba`.
  void Gpt(uint64_t header_lba, uint64_t entries_lba, const std::vector<GptPart>& parts,
           uint32_t count = 128) {
    MbrEntry(0, 0, 0, 0xee, 1, static_cast<uint32_t>(sectors() - 1));
    std::vector<uint8_t> entries(uint64_t{count} * 128);
    for (size_t i = 0; i < parts.size(); ++i) {
      uint8_t* e = &entries[i * 128];
      std::memcpy(e, parts[i].type_guid.data(), 16);
      std::memcpy(e + 16, parts[i].uuid.data(), 16);
      for (int b = 0; b < 8; ++b) {
        e[32 + b] = static_cast<uint8_t>(parts[i].first >> (8 * b));
        e[40 + b] = static_cast<uint8_t>(parts[i].last >> (8 * b));
        e[48 + b] = static_cast<uint8_t>(parts[i].attrs >> (8 * b));
      }
      for (size_t c = 0; c < parts[i].name.size() && c < 36; ++c) {
        e[56 + 2 * c] = static_cast<uint8_t>(parts[i].name[c]);
        e[57 + 2 * c] = static_cast<uint8_t>(parts[i].name[c] >> 8);
      }
    }
    std::memcpy(&bytes_[entries_lba * kSectorBytes], entries.data(), entries.size());
    uint64_t h = header_lba * kSectorBytes;
    std::memset(&bytes_[h], 0, kSectorBytes);
    PutBytes(h, "EFI PART");
    Put32(h + 8, 0x00010000);
    Put32(h + 12, 92);
    Put64(h + 24, header_lba);
    Put64(h + 32, header_lba == 1 ? sectors() - 1 : 1);
    Put64(h + 40, 34);
    Put64(h + 48, sectors() - 34);
    PutBytes(h + 56, Guid(0x11));
    Put64(h + 72, entries_lba);
    Put32(h + 80, count);
    Put32(h + 84, 128);
    Put32(h + 88, Crc(entries.data(), entries.size()));
    FixHeaderCrc(header_lba);
  }
  void FixHeaderCrc(uint64_t header_lba) {
    uint64_t h = header_lba * kSectorBytes;
    Put32(h + 16, 0);
    Put32(h + 16, Crc(&bytes_[h], 92));
  }

  // 16 bytes counting up from `first`.
  static std::string Guid(uint8_t first) {
    std::string g(16, '\0');
    for (int i = 0; i < 16; ++i) g[i] = static_cast<char>(first + i);
    return g;
  }

 private:
  void PutN(uint64_t at, uint64_t v, int n) {
    for (int i = 0; i < n; ++i) bytes_[at + i] = static_cast<uint8_t>(v >> (8 * i));
  }
  static uint32_t Crc(const uint8_t* p, size_t n) {
    return static_cast<uint32_t>(::crc32(0L, p, static_cast<uInt>(n)));
  }

  std::vector<uint8_t> bytes_;
};

// The Linux filesystem type GUID (0FC63DAF-8483-4772-8E79-3D69D8477DE4) as
// stored on disk.
inline std::string LinuxFsGuid() {
  const uint8_t b[16] = {0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47,
                         0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d, 0xe4};
  return std::string(reinterpret_cast<const char*>(b), 16);
}

// A minimal ext4 superblock (magic, extents feature, label) at byte `at`.
inline void PutExt4(Disk& d, uint64_t at, const std::string& label) {
  d.Put16(at + 1024 + 0x38, 0xef53);
  d.Put32(at + 1024 + 0x5c, 0x4);   // has_journal
  d.Put32(at + 1024 + 0x60, 0x40);  // extents
  d.PutBytes(at + 1024 + 0x78, label);
}

}  // namespace uq::cli::testing

#endif  // UQ_TESTS_UNIT_CLI_DISK_BUILDER_H_
