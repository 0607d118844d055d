#include "src/cli/inspect.h"

#include <gtest/gtest.h>

#include "tests/unit/cli/disk_builder.h"

namespace uq::cli {
namespace {

using testing::Disk;

TEST(FsProbeTest, Ext4WithLabel) {
  Disk d(8192);
  testing::PutExt4(d, 0, "data");
  auto fs = ProbeFileSystem(d.Reader(), 0, d.bytes().size());
  ASSERT_TRUE(fs.ok()) << fs.status();
  EXPECT_EQ(fs->type, "ext4");
  EXPECT_EQ(fs->label, "data");
  EXPECT_TRUE(fs->mountable());
}

TEST(FsProbeTest, ExtVariantsByFeature) {
  Disk d(8192);
  d.Put16(1024 + 0x38, 0xef53);
  EXPECT_EQ(ProbeFileSystem(d.Reader(), 0, d.bytes().size())->type, "ext2");
  d.Put32(1024 + 0x5c, 0x4);
  EXPECT_EQ(ProbeFileSystem(d.Reader(), 0, d.bytes().size())->type, "ext3");
  d.Put32(1024 + 0x64, 0x400);  // metadata_csum
  EXPECT_EQ(ProbeFileSystem(d.Reader(), 0, d.bytes().size())->type, "ext4");
}

TEST(FsProbeTest, LabelsAreCutAndCleaned) {
  Disk d(8192);
  testing::PutExt4(d, 0, "0123456789abcdefXYZ");  // 19 bytes into a 16-byte field
  d.bytes()[1024 + 0x78 + 2] = '\n';
  EXPECT_EQ(ProbeFileSystem(d.Reader(), 0, d.bytes().size())->label, "01?3456789abcdef");
}

TEST(FsProbeTest, OtherFileSystems) {
  {
    Disk d(8192);
    d.PutBytes(0, "XFSB");
    d.PutBytes(108, "xlabel");
    auto fs = ProbeFileSystem(d.Reader(), 0, d.bytes().size());
    EXPECT_EQ(fs->type, "xfs");
    EXPECT_EQ(fs->label, "xlabel");
  }
  {
    Disk d(8192);
    d.PutBytes(4096 - 10, "SWAPSPACE2");
    d.PutBytes(1024 + 28, "myswap");
    auto fs = ProbeFileSystem(d.Reader(), 0, d.bytes().size());
    EXPECT_EQ(fs->type, "swap");
    EXPECT_EQ(fs->label, "myswap");
    EXPECT_FALSE(fs->mountable());
  }
  {
    Disk d(8192);
    d.PutBytes(65536 + 0x40, "_BHRfS_M");
    d.PutBytes(65536 + 0x12b, "b");
    auto fs = ProbeFileSystem(d.Reader(), 0, d.bytes().size());
    EXPECT_EQ(fs->type, "btrfs");
    EXPECT_EQ(fs->label, "b");
  }
}

// A FAT32 boot sector as mkfs.vfat writes it (the fields the probe checks).
void PutFat32(Disk& d, const std::string& label) {
  d.bytes()[0] = 0xeb;
  d.bytes()[1] = 0x58;
  d.bytes()[2] = 0x90;
  d.Put16(11, 512);
  d.bytes()[13] = 8;
  d.Put16(14, 32);
  d.bytes()[16] = 2;
  d.bytes()[21] = 0xf8;
  d.PutBytes(71, label);
  d.PutBytes(82, "FAT32   ");
  d.Signature(0);
}

TEST(FsProbeTest, FatIsNotMistakenForAPartitionTable) {
  Disk d(8192);
  PutFat32(d, "EFI        ");
  auto layout = InspectDisk(d.Reader());
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->whole.type, "vfat");
  EXPECT_EQ(layout->whole.label, "EFI");
  EXPECT_EQ(layout->table.kind, TableKind::kNone);
  EXPECT_EQ(*ChooseMountTarget(*layout), 0u);
}

TEST(FsProbeTest, AnMbrIsNotFat) {
  Disk d(8192);
  d.MbrEntry(0, 0, 0x80, 0x83, 2048, 4096);
  d.bytes()[0] = 0xeb;  // boot code that happens to start with a jump
  auto fs = ProbeFileSystem(d.Reader(), 0, d.bytes().size());
  ASSERT_TRUE(fs.ok());
  EXPECT_EQ(fs->type, "");
}

TEST(InspectTest, WholeDiskFileSystemIsMounted) {
  Disk d(8192);
  testing::PutExt4(d, 0, "whole");
  auto layout = InspectDisk(d.Reader());
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(*ChooseMountTarget(*layout), 0u);
  EXPECT_EQ(LayoutJson(*layout, "/dev/ublkb0").Serialize(common::JsonLayout::kLine),
            R"({"filesystems": [{"node": "/dev/ublkb0", "partition": 0, "type": "ext4", )"
            R"("label": "whole"}]})");
  EXPECT_EQ(LayoutText(*layout, "d.qcow2"),
            "d.qcow2: 4 MiB, no partition table, ext4 file system on the whole disk labelled "
            "'whole'\n");
}

Disk GptWith(int formatted) {
  Disk d(10000);
  Disk::GptPart a{testing::LinuxFsGuid(), Disk::Guid(0x40), 2048, 4095, 0, u"a"};
  Disk::GptPart b{testing::LinuxFsGuid(), Disk::Guid(0x50), 4096, 8191, 0, u""};
  d.Gpt(1, 2, {a, b});
  if (formatted >= 1) testing::PutExt4(d, 4096 * 512, "second");
  if (formatted >= 2) testing::PutExt4(d, 2048 * 512, "first");
  return d;
}

TEST(InspectTest, TheOnlyMountablePartition) {
  Disk d = GptWith(1);
  auto layout = InspectDisk(d.Reader());
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(*ChooseMountTarget(*layout), 2u);
}

TEST(InspectTest, TwoMountablePartitionsAskForOne) {
  Disk d = GptWith(2);
  auto layout = InspectDisk(d.Reader());
  ASSERT_TRUE(layout.ok()) << layout.status();
  auto choice = ChooseMountTarget(*layout);
  ASSERT_FALSE(choice.ok());
  EXPECT_EQ(choice.status().message(),
            "2 partitions hold file systems: choose one with --partition N");
  EXPECT_EQ(LayoutText(*layout, "d.qcow2"),
            "d.qcow2: 4.9 MiB, gpt partition table, id 14131211-1615-1817-191A-1B1C1D1E1F20\n"
            " NR        START      SECTORS       SIZE  TYPE                   FS     LABEL\n"
            "  1         2048         2048      1 MiB  Linux filesystem       ext4   first\n"
            "  2         4096         4096      2 MiB  Linux filesystem       ext4   second\n");
}

TEST(InspectTest, NothingMountable) {
  Disk empty(8192);
  auto layout = InspectDisk(empty.Reader());
  ASSERT_TRUE(layout.ok());
  EXPECT_TRUE(absl::IsNotFound(ChooseMountTarget(*layout).status()));
  Disk unformatted = GptWith(0);
  layout = InspectDisk(unformatted.Reader());
  ASSERT_TRUE(layout.ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(ChooseMountTarget(*layout).status()));
}

TEST(InspectTest, JsonHasSfdisksFields) {
  Disk d = GptWith(1);
  auto layout = InspectDisk(d.Reader());
  ASSERT_TRUE(layout.ok());
  EXPECT_EQ(LayoutJson(*layout, "/dev/ublkb1").Serialize(common::JsonLayout::kLine),
            R"({"partitiontable": {"label": "gpt", "id": "14131211-1615-1817-191A-1B1C1D1E1F20", )"
            R"("device": "/dev/ublkb1", "unit": "sectors", "firstlba": 34, "lastlba": 9966, )"
            R"("sectorsize": 512, "partitions": [{"node": "/dev/ublkb1p1", "start": 2048, )"
            R"("size": 2048, "type": "0FC63DAF-8483-4772-8E79-3D69D8477DE4", )"
            R"("uuid": "43424140-4544-4746-4849-4A4B4C4D4E4F", "name": "a"}, )"
            R"({"node": "/dev/ublkb1p2", "start": 4096, "size": 4096, )"
            R"("type": "0FC63DAF-8483-4772-8E79-3D69D8477DE4", )"
            R"("uuid": "53525150-5554-5756-5859-5A5B5C5D5E5F"}]}, )"
            R"("filesystems": [{"node": "/dev/ublkb1p2", "partition": 2, "type": "ext4", )"
            R"("label": "second"}]})");
}

TEST(InspectTest, DosJsonNodesAndBootable) {
  Disk d(8192);
  d.Put32(440, 0xcafe);
  d.MbrEntry(0, 1, 0x80, 0x83, 2048, 2048);
  auto layout = InspectDisk(d.Reader());
  ASSERT_TRUE(layout.ok());
  EXPECT_EQ(LayoutJson(*layout, "disk.raw").Serialize(common::JsonLayout::kLine),
            R"({"partitiontable": {"label": "dos", "id": "0x0000cafe", "device": "disk.raw", )"
            R"("unit": "sectors", "sectorsize": 512, "partitions": [{"node": "disk.raw2", )"
            R"("start": 2048, "size": 2048, "type": "83", "bootable": true}]}, )"
            R"("filesystems": []})");
}

TEST(InspectTest, PartitionBeyondTheDiskIsListedNotProbed) {
  Disk d(8192);
  d.MbrEntry(0, 0, 0, 0x83, 8000, 4096);
  auto layout = InspectDisk(d.Reader());
  ASSERT_TRUE(layout.ok()) << layout.status();
  ASSERT_EQ(layout->fs.size(), 1u);
  EXPECT_EQ(layout->fs[0].type, "");
}

TEST(InspectTest, HumanSize) {
  EXPECT_EQ(HumanSize(0), "0 B");
  EXPECT_EQ(HumanSize(1023), "1023 B");
  EXPECT_EQ(HumanSize(1024), "1 KiB");
  EXPECT_EQ(HumanSize(1536), "1.5 KiB");
  EXPECT_EQ(HumanSize(128ull << 20), "128 MiB");
  EXPECT_EQ(HumanSize(~0ull), "16.0 EiB");
}

}  // namespace
}  // namespace uq::cli
