#include "src/cli/partition_table.h"

#include <gtest/gtest.h>

#include <random>

#include "tests/unit/cli/disk_builder.h"

namespace uq::cli {
namespace {

using testing::Disk;

Disk DosDisk() {
  Disk d(8192);
  d.Put32(440, 0x12ab34cd);
  d.MbrEntry(0, 0, 0x80, 0x83, 2048, 1024);
  d.MbrEntry(0, 1, 0, 0x82, 3072, 512);
  // Extended partition 3: two logical partitions (5, 6) in a chain of EBRs.
  d.MbrEntry(0, 2, 0, 0x05, 4096, 4096);
  d.MbrEntry(4096, 0, 0, 0x83, 2048, 1000);  // 5: 6144..7143
  d.MbrEntry(4096, 1, 0, 0x05, 3100, 900);   // next EBR at 4096 + 3100
  d.MbrEntry(7196, 0, 0, 0x07, 100, 500);    // 6: 7296..7795
  return d;
}

TEST(PartitionTableTest, NoSignatureIsNoTable) {
  Disk d(100);
  auto t = ReadPartitionTable(d.Reader());
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->kind, TableKind::kNone);
}

TEST(PartitionTableTest, BadBootFlagIsNoTable) {
  Disk d = DosDisk();
  d.bytes()[446 + 16] = 0x12;  // boot code, or a FAT boot sector, not a table
  auto t = ReadPartitionTable(d.Reader());
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->kind, TableKind::kNone);
}

TEST(PartitionTableTest, DosPrimaryExtendedAndLogical) {
  Disk d = DosDisk();
  auto t = ReadPartitionTable(d.Reader());
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->kind, TableKind::kDos);
  EXPECT_EQ(t->id, "0x12ab34cd");
  ASSERT_EQ(t->partitions.size(), 5u);
  struct Want {
    uint32_t number;
    uint64_t start, size;
    const char* type;
    bool bootable, extended;
  };
  const Want want[] = {{1, 2048, 1024, "83", true, false},
                       {2, 3072, 512, "82", false, false},
                       {3, 4096, 4096, "5", false, true},
                       {5, 6144, 1000, "83", false, false},
                       {6, 7296, 500, "7", false, false}};
  for (size_t i = 0; i < 5; ++i) {
    const Partition& p = t->partitions[i];
    EXPECT_EQ(p.number, want[i].number);
    EXPECT_EQ(p.start_sectors, want[i].start);
    EXPECT_EQ(p.size_sectors, want[i].size);
    EXPECT_EQ(p.type, want[i].type);
    EXPECT_EQ(p.bootable, want[i].bootable);
    EXPECT_EQ(p.extended, want[i].extended);
  }
  EXPECT_EQ(PartitionTypeName(TableKind::kDos, t->partitions[0]), "Linux");
  EXPECT_EQ(PartitionTypeName(TableKind::kDos, t->partitions[2]), "Extended");
}

void ExpectError(Disk& d, absl::string_view needle) {
  auto t = ReadPartitionTable(d.Reader());
  ASSERT_FALSE(t.ok()) << "expected an error containing '" << needle << "'";
  EXPECT_NE(t.status().message().find(needle), absl::string_view::npos) << t.status();
  EXPECT_EQ(t.status().message().find('\n'), absl::string_view::npos) << t.status();
}

TEST(PartitionTableTest, ExtendedChainLoopIsAnError) {
  Disk d = DosDisk();
  d.MbrEntry(7196, 1, 0, 0x05, 0, 900);  // points back at the first EBR
  ExpectError(d, "loops at sector 4096");
}

TEST(PartitionTableTest, ExtendedChainBeyondTheDisk) {
  Disk d = DosDisk();
  d.MbrEntry(7196, 1, 0, 0x05, 0xfffff000u, 900);
  ExpectError(d, "beyond the disk");
}

TEST(PartitionTableTest, ExtendedRecordWithoutSignature) {
  Disk d = DosDisk();
  d.bytes()[7196 * 512 + 510] = 0;
  ExpectError(d, "no 0x55AA signature");
}

TEST(PartitionTableTest, LongExtendedChainStopsAtTheKernelLimit) {
  Disk d(4096);
  d.MbrEntry(0, 0, 0, 0x05, 8, 4000);
  for (uint32_t i = 0; i < 300; ++i) {
    uint64_t ebr = 8 + 10 * i;
    d.MbrEntry(ebr, 0, 0, 0x83, 1, 1);
    d.MbrEntry(ebr, 1, 0, 0x05, 10 * (i + 1), 10);
  }
  ExpectError(d, "more than 252 logical partitions");
}

std::vector<Disk::GptPart> TwoGptParts() {
  Disk::GptPart a{testing::LinuxFsGuid(),     Disk::Guid(0x40), 2048, 4095,
                  (1ull << 0) | (1ull << 63), u"root fs \u00e9"};
  Disk::GptPart b{Disk::Guid(0x80), Disk::Guid(0x50), 4096, 8191, 0, u""};
  return {a, b};
}

TEST(PartitionTableTest, Gpt) {
  Disk d(10000);
  d.Gpt(1, 2, TwoGptParts());
  auto t = ReadPartitionTable(d.Reader());
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->kind, TableKind::kGpt);
  EXPECT_EQ(t->id, "14131211-1615-1817-191A-1B1C1D1E1F20");
  EXPECT_EQ(t->first_lba, 34u);
  EXPECT_EQ(t->last_lba, 10000u - 34);
  ASSERT_EQ(t->partitions.size(), 2u);
  const Partition& a = t->partitions[0];
  EXPECT_EQ(a.number, 1u);
  EXPECT_EQ(a.start_sectors, 2048u);
  EXPECT_EQ(a.size_sectors, 2048u);
  EXPECT_EQ(a.type, "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
  EXPECT_EQ(a.uuid, "43424140-4544-4746-4849-4A4B4C4D4E4F");
  EXPECT_EQ(a.name, "root fs \xc3\xa9");
  EXPECT_EQ(GptAttrsString(a.attr_bits), "RequiredPartition GUID:63");
  EXPECT_EQ(PartitionTypeName(TableKind::kGpt, a), "Linux filesystem");
  const Partition& b = t->partitions[1];
  EXPECT_EQ(b.number, 2u);
  EXPECT_EQ(b.size_sectors, 4096u);
  EXPECT_EQ(PartitionTypeName(TableKind::kGpt, b), b.type);  // unknown: the GUID itself
}

TEST(PartitionTableTest, GptAttrs) {
  EXPECT_EQ(GptAttrsString(0), "");
  EXPECT_EQ(GptAttrsString((1ull << 1) | (1ull << 48) | (1ull << 49) | (1ull << 63)),
            "NoBlockIOProtocol GUID:48,49,63");
  EXPECT_EQ(GptAttrsString(1ull << 2 | 1ull << 20), "LegacyBIOSBootable");
}

TEST(PartitionTableTest, GptFallsBackToTheBackupHeader) {
  Disk d(10000);
  d.Gpt(9999, 9967, TwoGptParts());
  d.Gpt(1, 2, TwoGptParts());
  d.Put32(512 + 16, 0xdeadbeef);  // the primary header's CRC no longer matches
  auto t = ReadPartitionTable(d.Reader());
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->partitions.size(), 2u);
}

TEST(PartitionTableTest, GptErrorsNameTheField) {
  {
    Disk d(10000);
    d.Gpt(1, 2, TwoGptParts());
    d.Put32(512 + 16, 0xdeadbeef);
    ExpectError(d, "header CRC32 0xdeadbeef");
  }
  {
    Disk d(10000);
    d.Gpt(1, 2, TwoGptParts());
    d.bytes()[2 * 512 + 40] ^= 0xff;  // a partition's last LBA: entries CRC breaks
    ExpectError(d, "partition entries CRC32");
  }
  {
    Disk d(10000);
    d.Gpt(1, 2, TwoGptParts());
    d.Put32(512 + 80, 0x10000);  // 8 MiB of entries
    d.FixHeaderCrc(1);
    ExpectError(d, "exceed the 1 MiB limit");
  }
  {
    Disk d(10000);
    d.Gpt(1, 2, TwoGptParts());
    d.Put32(512 + 84, 100);
    d.FixHeaderCrc(1);
    ExpectError(d, "partition entry size 100");
  }
  {
    Disk d(10000);
    d.Gpt(1, 2, TwoGptParts());
    d.Put64(512 + 72, 1ull << 60);  // entries far beyond the disk
    d.FixHeaderCrc(1);
    ExpectError(d, "beyond the disk");
  }
  {
    Disk d(10000);
    d.Gpt(1, 2, TwoGptParts());
    d.Put64(512 + 48, 20000);  // last usable sector beyond the disk
    d.FixHeaderCrc(1);
    ExpectError(d, "usable sectors 34-20000");
  }
  {
    auto parts = TwoGptParts();
    parts[1].first = 5000;
    parts[1].last = 4000;
    Disk d(10000);
    d.Gpt(1, 2, parts);
    ExpectError(d, "partition 2 ends (sector 4000) before it starts (sector 5000)");
  }
  {
    auto parts = TwoGptParts();
    parts[1].first = 0;
    parts[1].last = ~0ull;
    Disk d(10000);
    d.Gpt(1, 2, parts);
    ExpectError(d, "larger than the disk");
  }
}

// Random damage to valid tables never crashes or reads out of bounds (the
// ASan run of the unit tier checks the latter); each error is one line.
TEST(PartitionTableTest, DamagedTablesAreErrorsNeverCrashes) {
  Disk dos = DosDisk();
  Disk gpt(10000);
  gpt.Gpt(1, 2, TwoGptParts());
  std::mt19937_64 rng(20261122);
  for (int round = 0; round < 3000; ++round) {
    const bool is_gpt = round % 2 == 1;
    Disk& d = is_gpt ? gpt : dos;
    // Damage the table's sectors (GPT: the MBR, header and first entries;
    // dos: the MBR and the first extended boot record), then put them back.
    std::vector<std::pair<uint64_t, uint8_t>> undo;
    auto damage = [&](uint64_t at, uint8_t v) {
      undo.emplace_back(at, d.bytes()[at]);
      d.bytes()[at] = v;
    };
    const int flips = 1 + static_cast<int>(rng() % 8);
    for (int f = 0; f < flips; ++f) {
      uint64_t at = is_gpt ? rng() % (3 * 512) : (rng() % 2 ? 0 : 4096 * 512) + 446 + rng() % 66;
      damage(at, static_cast<uint8_t>(rng()));
    }
    if (is_gpt && round % 4 == 1) {  // reach the checks behind the header CRC
      for (int b = 0; b < 4; ++b) undo.emplace_back(512 + 16 + b, d.bytes()[512 + 16 + b]);
      d.FixHeaderCrc(1);
    }
    auto t = ReadPartitionTable(d.Reader());
    if (!t.ok()) {
      EXPECT_EQ(t.status().message().find('\n'), absl::string_view::npos) << t.status();
    } else {
      for (const Partition& p : t->partitions) {
        EXPECT_GE(p.number, 1u);
        EXPECT_LE(p.number, 256u);
      }
    }
    for (auto it = undo.rbegin(); it != undo.rend(); ++it) d.bytes()[it->first] = it->second;
  }
}

}  // namespace
}  // namespace uq::cli
