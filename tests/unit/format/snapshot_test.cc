#include "format/snapshot.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "format/endian.h"

namespace uq::format {
namespace {

std::vector<Snapshot> Sample() {
  Snapshot a;
  a.l1_table_offset = 5 << 16;
  a.l1_size = 16;
  a.id = "1";
  a.name = "before upgrade";
  a.date_sec = 1700000000;
  a.date_nsec = 123456789;
  a.vm_clock_nsec = 987654321012ull;
  a.vm_state_size = 4096;
  a.extra_data.resize(24);
  StoreBE64(a.extra_data.data(), 4096);
  StoreBE64(a.extra_data.data() + 8, 1ull << 30);
  StoreBE64(a.extra_data.data() + 16, ~0ull);
  Snapshot b;
  b.l1_table_offset = 9 << 16;
  b.l1_size = 1;
  b.id = "22";
  b.name = "x";  // 40 + 0 + 2 + 1 = 43 bytes: needs padding
  Snapshot c = a;
  c.id = "333";
  c.extra_data.push_back(std::byte{0x7f});  // unknown trailing extra field
  return {a, b, c};
}

TEST(SnapshotTest, RoundTrip) {
  const std::vector<Snapshot> snaps = Sample();
  const size_t size = SnapshotTableSize(snaps);
  EXPECT_EQ(size % 8, 0u);
  EXPECT_EQ(size, 80u + 48u + 88u);
  std::vector<std::byte> buf(size);
  EncodeSnapshotTable(snaps, buf);
  absl::StatusOr<std::vector<Snapshot>> back = DecodeSnapshotTable(buf, 3, 16);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    const Snapshot& x = snaps[i];
    const Snapshot& y = (*back)[i];
    EXPECT_EQ(y.l1_table_offset, x.l1_table_offset);
    EXPECT_EQ(y.l1_size, x.l1_size);
    EXPECT_EQ(y.id, x.id);
    EXPECT_EQ(y.name, x.name);
    EXPECT_EQ(y.date_sec, x.date_sec);
    EXPECT_EQ(y.date_nsec, x.date_nsec);
    EXPECT_EQ(y.vm_clock_nsec, x.vm_clock_nsec);
    EXPECT_EQ(y.vm_state_size, x.vm_state_size);
    EXPECT_EQ(y.extra_data, x.extra_data);
  }
  EXPECT_EQ((*back)[0].disk_size_bytes(), 1ull << 30);
  EXPECT_EQ((*back)[1].disk_size_bytes(), 0u);
  // Re-encoding is byte-identical.
  std::vector<std::byte> again(size);
  EncodeSnapshotTable(*back, again);
  EXPECT_EQ(again, buf);
}

TEST(SnapshotTest, LastEntryPaddingMayBeMissing) {
  std::vector<Snapshot> snaps = {Sample()[1]};
  std::vector<std::byte> buf(SnapshotTableSize(snaps));
  EncodeSnapshotTable(snaps, buf);
  buf.resize(43);
  absl::StatusOr<std::vector<Snapshot>> back = DecodeSnapshotTable(buf, 1, 16);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ((*back)[0].name, "x");
}

void ExpectRejected(std::vector<std::byte> buf, uint32_t count, const std::string& needle) {
  absl::StatusOr<std::vector<Snapshot>> r = DecodeSnapshotTable(buf, count, 16);
  ASSERT_FALSE(r.ok()) << "accepted; wanted " << needle;
  EXPECT_NE(std::string(r.status().message()).find(needle), std::string::npos)
      << r.status().message();
}

TEST(SnapshotTest, Rejections) {
  const std::vector<Snapshot> snaps = Sample();
  std::vector<std::byte> buf(SnapshotTableSize(snaps));
  EncodeSnapshotTable(snaps, buf);
  // More entries than the table holds.
  ExpectRejected(buf, 4, "snapshot 3");
  // Truncated inside the fixed part and inside the strings.
  ExpectRejected(std::vector<std::byte>(buf.begin(), buf.begin() + 30), 1, "truncated");
  ExpectRejected(std::vector<std::byte>(buf.begin(), buf.begin() + 70), 1, "needs");
  // Unaligned L1 table.
  std::vector<std::byte> bad = buf;
  StoreBE64(bad.data(), (5 << 16) + 8);
  ExpectRejected(bad, 3, "l1_table_offset 327688");
  // Too much extra data.
  bad = buf;
  StoreBE32(bad.data() + 36, 1025);
  ExpectRejected(bad, 3, "extra_data_size 1025");
  // L1 table over 32 MiB.
  bad = buf;
  StoreBE32(bad.data() + 8, (32 << 20) / 8 + 1);
  ExpectRejected(bad, 3, "l1_size 4194305");
}

}  // namespace
}  // namespace uq::format
