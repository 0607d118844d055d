#include "format/bitmaps.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "format/endian.h"

namespace uq::format {
namespace {

std::vector<std::byte> Extension(uint32_t nb, uint64_t dir_size, uint64_t dir_offset) {
  std::vector<std::byte> e(24);
  StoreBE32(e.data(), nb);
  StoreBE64(e.data() + 8, dir_size);
  StoreBE64(e.data() + 16, dir_offset);
  return e;
}

// Appends one directory entry, padded to 8 bytes.
void AddEntry(std::vector<std::byte>& dir, const std::string& name, uint32_t flags,
              uint8_t granularity_bits, uint32_t extra = 0) {
  const size_t at = dir.size();
  const size_t size = 24 + extra + name.size();
  dir.resize(at + ((size + 7) & ~size_t{7}));
  std::byte* p = dir.data() + at;
  StoreBE64(p, 0x50000);
  StoreBE32(p + 8, 1);
  StoreBE32(p + 12, flags);
  p[16] = std::byte{1};
  p[17] = std::byte{granularity_bits};
  StoreBE16(p + 18, static_cast<uint16_t>(name.size()));
  StoreBE32(p + 20, extra);
  for (size_t i = 0; i < name.size(); ++i) p[24 + extra + i] = std::byte(name[i]);
}

Header WithBitmaps(std::vector<std::byte> ext, bool autoclear = true) {
  Header h;
  h.autoclear_features = autoclear ? kAutoclearBitmaps : 0;
  h.opaque_extensions.push_back({kExtBitmaps, std::move(ext)});
  return h;
}

TEST(BitmapsTest, DecodesDirectory) {
  std::vector<std::byte> dir;
  AddEntry(dir, "b0", kBitmapFlagAuto, 16);
  AddEntry(dir, "second-with-extra", kBitmapFlagInUse, 17, 5);
  const Header h = WithBitmaps(Extension(2, dir.size(), 0x40000));
  absl::StatusOr<std::optional<BitmapsExtension>> ext = FindBitmapsExtension(h);
  ASSERT_TRUE(ext.ok()) << ext.status();
  ASSERT_TRUE(ext->has_value());
  EXPECT_EQ((*ext)->nb_bitmaps, 2u);
  EXPECT_EQ((*ext)->directory_offset, 0x40000u);
  absl::StatusOr<std::vector<BitmapInfo>> list = DecodeBitmapDirectory(dir, **ext, 16);
  ASSERT_TRUE(list.ok()) << list.status();
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ((*list)[0].name, "b0");
  EXPECT_EQ((*list)[0].flags, kBitmapFlagAuto);
  EXPECT_EQ((*list)[0].granularity_bits, 16);
  EXPECT_EQ((*list)[1].name, "second-with-extra");
  EXPECT_EQ((*list)[1].extra_data.size(), 5u);
  EXPECT_EQ((*list)[1].granularity_bits, 17);
}

TEST(BitmapsTest, IgnoredWithoutAutoclearBit) {
  const Header h = WithBitmaps(Extension(1, 32, 0x40000), false);
  absl::StatusOr<std::optional<BitmapsExtension>> ext = FindBitmapsExtension(h);
  ASSERT_TRUE(ext.ok());
  EXPECT_FALSE(ext->has_value());
}

void ExpectRejected(const absl::Status& s, const std::string& needle) {
  ASSERT_FALSE(s.ok()) << "accepted; wanted " << needle;
  EXPECT_NE(std::string(s.message()).find(needle), std::string::npos) << s.message();
}

TEST(BitmapsTest, Rejections) {
  ExpectRejected(FindBitmapsExtension(WithBitmaps(Extension(0, 32, 0x40000))).status(),
                 "nb_bitmaps 0");
  ExpectRejected(FindBitmapsExtension(WithBitmaps(Extension(70000, 1 << 22, 0x40000))).status(),
                 "nb_bitmaps 70000");
  ExpectRejected(FindBitmapsExtension(WithBitmaps(Extension(1, 32, 0x40008))).status(),
                 "bitmap_directory_offset 262152");
  ExpectRejected(FindBitmapsExtension(WithBitmaps(Extension(1, 65ull << 20, 0x40000))).status(),
                 "bitmap_directory_size");
  ExpectRejected(FindBitmapsExtension(WithBitmaps(std::vector<std::byte>(16))).status(),
                 "length 16");

  const BitmapsExtension ext{
      .nb_bitmaps = 1, .directory_size_bytes = 32, .directory_offset = 0x40000};
  std::vector<std::byte> dir;
  AddEntry(dir, "x", 0, 8);
  ExpectRejected(DecodeBitmapDirectory(dir, ext, 16).status(), "granularity_bits 8");
  dir.clear();
  AddEntry(dir, "x", 0, 16);
  dir[16] = std::byte{2};
  ExpectRejected(DecodeBitmapDirectory(dir, ext, 16).status(), "type 2");
  dir.clear();
  AddEntry(dir, "name", 0, 16);
  ExpectRejected(DecodeBitmapDirectory(std::span(dir).first(26), ext, 16).status(), "needs");
  ExpectRejected(DecodeBitmapDirectory(std::span(dir).first(10), ext, 16).status(), "truncated");
  StoreBE64(dir.data(), 0x50200);
  ExpectRejected(DecodeBitmapDirectory(dir, ext, 16).status(), "bitmap_table_offset 328192");
}

}  // namespace
}  // namespace uq::format
