#include "format/header.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "format/endian.h"

namespace uq::format {
namespace {

using Bytes = std::vector<std::byte>;

std::vector<std::byte> ToBytes(const std::string& s) {
  std::vector<std::byte> out(s.size());
  std::memcpy(out.data(), s.data(), s.size());
  return out;
}

// A valid v3 header for a 1 GiB image with 64 KiB clusters, laid out as
// QEMU does: reftable at cluster 1, L1 at cluster 3.
Header ValidV3() {
  Header h;
  h.version = 3;
  h.cluster_bits = 16;
  h.size_bytes = 1ull << 30;
  h.l1_size = 4;  // enough for extended L2 entries too
  h.l1_table_offset = 3 << 16;
  h.refcount_table_offset = 1 << 16;
  h.refcount_table_clusters = 1;
  h.refcount_order = 4;
  return h;
}

constexpr uint64_t kFileSize = 4 << 16;

Bytes Encode(const Header& h) {
  Bytes buf(h.cluster_size());
  absl::Status s = EncodeHeader(h, buf);
  EXPECT_TRUE(s.ok()) << s;
  return buf;
}

absl::StatusOr<Header> Decode(const Bytes& buf, uint64_t file_size = kFileSize) {
  return DecodeHeader(buf, {.file_size_bytes = file_size});
}

// Expects a rejection whose message contains every one of `needles`.
void ExpectRejected(const absl::StatusOr<Header>& r, std::initializer_list<std::string> needles) {
  ASSERT_FALSE(r.ok()) << "accepted";
  const std::string msg(r.status().message());
  for (const std::string& n : needles) {
    EXPECT_NE(msg.find(n), std::string::npos) << "message '" << msg << "' lacks '" << n << "'";
  }
}

TEST(HeaderTest, V3RoundTripWithEveryExtension) {
  Header h = ValidV3();
  h.incompatible_features =
      kIncompatDirty | kIncompatDataFile | kIncompatCompression | kIncompatExtendedL2;
  h.compatible_features = kCompatLazyRefcounts;
  h.autoclear_features = kAutoclearBitmaps | kAutoclearDataFileRaw;
  h.refcount_order = 6;
  h.compression_type = CompressionType::kZstd;
  h.nb_snapshots = 2;
  h.snapshots_offset = 2 << 16;
  h.backing_file = "dir/base image.qcow2";
  h.backing_format = "qcow2";
  h.data_file = "data.raw";
  h.opaque_extensions.push_back({kExtBitmaps, ToBytes("0123456789abcdef_bitmap_dir")});
  h.opaque_extensions.push_back({0x12345678, ToBytes("unknown!")});
  h.opaque_extensions.push_back({0x0badf00d, {}});

  const Bytes buf = Encode(h);
  absl::StatusOr<Header> r = Decode(buf);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->version, 3u);
  EXPECT_EQ(r->cluster_bits, h.cluster_bits);
  EXPECT_EQ(r->size_bytes, h.size_bytes);
  EXPECT_EQ(r->l1_size, h.l1_size);
  EXPECT_EQ(r->l1_table_offset, h.l1_table_offset);
  EXPECT_EQ(r->refcount_table_offset, h.refcount_table_offset);
  EXPECT_EQ(r->refcount_table_clusters, h.refcount_table_clusters);
  EXPECT_EQ(r->nb_snapshots, h.nb_snapshots);
  EXPECT_EQ(r->snapshots_offset, h.snapshots_offset);
  EXPECT_EQ(r->incompatible_features, h.incompatible_features);
  EXPECT_EQ(r->compatible_features, h.compatible_features);
  EXPECT_EQ(r->autoclear_features, h.autoclear_features);
  EXPECT_EQ(r->refcount_order, 6u);
  EXPECT_EQ(r->header_length, 112u);
  EXPECT_EQ(r->compression_type, CompressionType::kZstd);
  EXPECT_EQ(r->backing_file, h.backing_file);
  EXPECT_EQ(r->backing_file_size, h.backing_file.size());
  EXPECT_EQ(r->backing_format, h.backing_format);
  EXPECT_EQ(r->data_file, h.data_file);
  EXPECT_FALSE(r->has_crypto_extension);
  ASSERT_EQ(r->opaque_extensions.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(r->opaque_extensions[i].type, h.opaque_extensions[i].type);
    EXPECT_EQ(r->opaque_extensions[i].data, h.opaque_extensions[i].data);
  }
  // The feature table names all eight known bits.
  EXPECT_EQ(r->feature_names.size(), 8u);
  EXPECT_EQ(FeatureBitName(*r, 0, 4), "extended L2 entries");
  EXPECT_EQ(FeatureBitName(*r, 1, 0), "lazy refcounts");
  EXPECT_EQ(FeatureBitName(*r, 2, 1), "raw external data");
  EXPECT_EQ(r->l2_entry_bytes(), 16u);
  // As QEMU, no feature table at 4 KiB clusters and below.
  h.cluster_bits = 12;
  h.incompatible_features &= ~kIncompatExtendedL2;  // needs 16 KiB clusters
  h.size_bytes = 8 << 20;                           // 4 L1 entries cover it
  h.opaque_extensions.clear();
  absl::StatusOr<Header> small = Decode(Encode(h));
  ASSERT_TRUE(small.ok()) << small.status();
  EXPECT_TRUE(small->feature_names.empty());

  // Re-encoding the decoded header is byte-identical: nothing is lost.
  EXPECT_EQ(Encode(*r), buf);
}

TEST(HeaderTest, V2RoundTrip) {
  Header h = ValidV3();
  h.version = 2;
  h.backing_file = "/abs/base.raw";
  const Bytes buf = Encode(h);
  EXPECT_EQ(LoadBE32(buf.data() + 4), 2u);
  absl::StatusOr<Header> r = Decode(buf);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->version, 2u);
  EXPECT_EQ(r->header_length, kHeaderV2Length);
  EXPECT_EQ(r->refcount_order, 4u);
  EXPECT_EQ(r->incompatible_features, 0u);
  EXPECT_EQ(r->backing_file, h.backing_file);
  EXPECT_EQ(r->backing_file_offset, kHeaderV2Length + 8);  // after the end marker
  EXPECT_TRUE(r->feature_names.empty());
  EXPECT_EQ(Encode(*r), buf);
}

TEST(HeaderTest, V3With104ByteHeaderMeansZlib) {
  Bytes buf = Encode(ValidV3());
  StoreBE32(buf.data() + 100, 104);
  // Byte 104 is now the extension area (type 0 = end): still a valid header.
  absl::StatusOr<Header> r = Decode(buf);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->header_length, 104u);
  EXPECT_EQ(r->compression_type, CompressionType::kZlib);
}

TEST(HeaderTest, EveryClusterSizeRoundTrips) {
  for (uint32_t bits = kMinClusterBits; bits <= kMaxClusterBits; ++bits) {
    Header h = ValidV3();
    h.cluster_bits = bits;
    h.size_bytes = 1ull << 20;
    h.refcount_table_offset = 1ull << bits;
    h.l1_table_offset = 3ull << bits;
    const uint64_t per_l1 = (1ull << bits) * ((1ull << bits) / 8);
    h.l1_size = static_cast<uint32_t>((h.size_bytes + per_l1 - 1) / per_l1);
    const Bytes buf = Encode(h);
    absl::StatusOr<Header> r = DecodeHeader(buf, {.file_size_bytes = 8ull << bits});
    ASSERT_TRUE(r.ok()) << "cluster_bits " << bits << ": " << r.status();
    EXPECT_EQ(r->cluster_bits, bits);
    absl::StatusOr<uint64_t> read_size = HeaderReadSize(buf);
    ASSERT_TRUE(read_size.ok());
    EXPECT_EQ(*read_size, 1ull << bits);
  }
}

TEST(HeaderTest, ClearUnknownAutoclear) {
  Header h = ValidV3();
  h.autoclear_features = kAutoclearBitmaps | (1ull << 7);
  EXPECT_TRUE(ClearUnknownAutoclear(h));
  EXPECT_EQ(h.autoclear_features, kAutoclearBitmaps);
  EXPECT_FALSE(ClearUnknownAutoclear(h));
}

TEST(HeaderTest, FeatureBitNameFallsBackToTheImageTable) {
  Header h = ValidV3();
  h.feature_names.push_back({0, 9, "future thing"});
  EXPECT_EQ(FeatureBitName(h, 0, 0), "dirty bit");
  EXPECT_EQ(FeatureBitName(h, 0, 9), "future thing");
  EXPECT_EQ(FeatureBitName(h, 0, 10), "");
}

TEST(HeaderTest, EncodeRejectsWhatDoesNotFit) {
  Header h = ValidV3();
  h.cluster_bits = 9;
  h.backing_file = std::string(500, 'x');
  Bytes buf(512);
  absl::Status s = EncodeHeader(h, buf);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(std::string(s.message()).find("more than one cluster"), std::string::npos);
  h.backing_file = std::string(1024, 'x');
  h.cluster_bits = 16;
  Bytes big(1 << 16);
  EXPECT_FALSE(EncodeHeader(h, big).ok());
}

// --- Rejections: each names the field and its value. ---

TEST(HeaderRejectTest, Truncated) {
  Bytes buf = Encode(ValidV3());
  ExpectRejected(Decode(Bytes(buf.begin(), buf.begin() + 4)), {"truncated", "4 bytes"});
  ExpectRejected(Decode(Bytes(buf.begin(), buf.begin() + 80)), {"truncated", "80 bytes"});
  ExpectRejected(Decode(Bytes()), {"truncated"});
}

TEST(HeaderRejectTest, BadMagic) {
  Bytes buf = Encode(ValidV3());
  buf[0] = std::byte{'X'};
  ExpectRejected(Decode(buf), {"magic", "0x584649fb"});
  ExpectRejected(absl::StatusOr<Header>(HeaderReadSize(buf).status()), {"magic"});
}

TEST(HeaderRejectTest, Version1And4) {
  for (uint32_t v : {0u, 1u, 4u}) {
    Bytes buf = Encode(ValidV3());
    StoreBE32(buf.data() + 4, v);
    ExpectRejected(Decode(buf), {"version " + std::to_string(v)});
  }
}

TEST(HeaderRejectTest, ClusterBits8And22) {
  for (uint32_t bits : {0u, 8u, 22u, 63u}) {
    Bytes buf = Encode(ValidV3());
    StoreBE32(buf.data() + 20, bits);
    ExpectRejected(Decode(buf), {"cluster_bits " + std::to_string(bits), "(9..21)"});
    ExpectRejected(absl::StatusOr<Header>(HeaderReadSize(buf).status()),
                   {"cluster_bits " + std::to_string(bits)});
  }
}

TEST(HeaderRejectTest, HeaderLength) {
  for (uint32_t len : {0u, 72u, 96u}) {
    Bytes buf = Encode(ValidV3());
    StoreBE32(buf.data() + 100, len);
    ExpectRejected(Decode(buf), {"header_length " + std::to_string(len), "too small"});
  }
  Bytes buf = Encode(ValidV3());
  StoreBE32(buf.data() + 100, 108);
  ExpectRejected(Decode(buf), {"header_length 108", "multiple of 8"});
  StoreBE32(buf.data() + 100, 70000);
  ExpectRejected(Decode(buf), {"header_length 70000", "cluster size"});
}

TEST(HeaderRejectTest, UnknownIncompatibleBitIsNamed) {
  Header h = ValidV3();
  Bytes buf = Encode(h);
  StoreBE64(buf.data() + 72, 1ull << 5);
  ExpectRejected(Decode(buf), {"incompatible_features bit 5", "not supported"});
  // With a feature table naming the bit, the name is reported too.
  h.opaque_extensions.clear();
  Bytes named = Encode(h);
  // Overwrite the first entry of QEMU-style feature table with bit 5's name.
  for (size_t off = 112; off + 8 < named.size();) {
    const uint32_t type = LoadBE32(named.data() + off);
    const uint32_t len = LoadBE32(named.data() + off + 4);
    if (type == kExtFeatureTable) {
      std::byte* e = named.data() + off + 8;
      e[0] = std::byte{0};
      e[1] = std::byte{5};
      std::memset(e + 2, 0, 46);
      std::memcpy(e + 2, "teleport", 8);
      break;
    }
    ASSERT_NE(type, kExtEnd);
    off += 8 + ((len + 7) & ~7u);
  }
  StoreBE64(named.data() + 72, (1ull << 5) | (1ull << 40));
  ExpectRejected(Decode(named), {"bit 5 (teleport)", "bit 40"});
}

TEST(HeaderRejectTest, RefcountOrder) {
  Bytes buf = Encode(ValidV3());
  StoreBE32(buf.data() + 96, 7);
  ExpectRejected(Decode(buf), {"refcount_order 7", "(0..6)"});
}

TEST(HeaderRejectTest, Encrypted) {
  for (uint32_t m : {1u, 2u}) {
    Bytes buf = Encode(ValidV3());
    StoreBE32(buf.data() + 32, m);
    ExpectRejected(Decode(buf), {"crypt_method " + std::to_string(m), "encrypted"});
  }
  Header h = ValidV3();
  h.opaque_extensions.push_back({kExtCrypto, Bytes(16)});
  Bytes buf = Encode(h);
  ExpectRejected(Decode(buf), {"encryption", "not supported"});
}

TEST(HeaderRejectTest, CompressionType) {
  Bytes buf = Encode(ValidV3());
  buf[104] = std::byte{2};
  ExpectRejected(Decode(buf), {"compression_type 2"});
  buf[104] = std::byte{1};  // zstd without incompatible bit 3
  ExpectRejected(Decode(buf), {"compression_type 1", "bit 3"});
}

TEST(HeaderRejectTest, L1PastEndOfFile) {
  Header h = ValidV3();
  h.l1_table_offset = 100 << 16;
  ExpectRejected(Decode(Encode(h)), {"l1_table_offset 0x640000", "past the end of the file"});
}

TEST(HeaderRejectTest, L1Unaligned) {
  Header h = ValidV3();
  h.l1_table_offset = (3 << 16) + 512;
  ExpectRejected(Decode(Encode(h)), {"l1_table_offset 0x30200", "aligned"});
}

TEST(HeaderRejectTest, L1TooSmallAndTooLarge) {
  Header h = ValidV3();
  h.l1_size = 1;
  ExpectRejected(Decode(Encode(h)), {"l1_size 1", "too small"});
  h.l1_size = (32 << 20) / 8 + 1;
  ExpectRejected(Decode(Encode(h), 1ull << 40), {"l1_size 4194305", "too large"});
  h = ValidV3();
  h.size_bytes = ~0ull >> 1;
  h.cluster_bits = 9;
  h.refcount_table_offset = 512;
  h.l1_table_offset = 1024;
  ExpectRejected(Decode(Encode(h), 1ull << 40), {"size 9223372036854775807", "too large"});
}

TEST(HeaderRejectTest, RefcountTableOverlapsHeader) {
  Header h = ValidV3();
  h.refcount_table_offset = 0;
  ExpectRejected(Decode(Encode(h)), {"refcount_table_offset 0x0", "overlaps the header"});
}

TEST(HeaderRejectTest, L1OverlapsHeaderOrRefcountTable) {
  Header h = ValidV3();
  h.l1_table_offset = 0;
  ExpectRejected(Decode(Encode(h)), {"l1_table_offset 0x0", "overlaps the header"});
  h.l1_table_offset = 1 << 16;
  ExpectRejected(Decode(Encode(h)), {"l1_table_offset 0x10000", "refcount table"});
}

TEST(HeaderRejectTest, RefcountTableBounds) {
  Header h = ValidV3();
  h.refcount_table_offset = (1 << 16) + 8;
  ExpectRejected(Decode(Encode(h)), {"refcount_table_offset 0x10008", "aligned"});
  h = ValidV3();
  h.refcount_table_clusters = 0;
  ExpectRejected(Decode(Encode(h)), {"refcount_table_clusters 0"});
  h.refcount_table_clusters = 129;  // > 8 MiB at 64 KiB clusters
  ExpectRejected(Decode(Encode(h)), {"refcount_table_clusters 129", "too large"});
  h = ValidV3();
  h.refcount_table_offset = 50 << 16;
  ExpectRejected(Decode(Encode(h)), {"refcount_table_offset 0x320000", "past the end"});
}

TEST(HeaderRejectTest, SnapshotTableBounds) {
  Header h = ValidV3();
  h.nb_snapshots = 1;
  h.snapshots_offset = (2 << 16) + 4;
  ExpectRejected(Decode(Encode(h)), {"snapshots_offset 0x20004", "aligned"});
  h.snapshots_offset = 64 << 16;
  ExpectRejected(Decode(Encode(h)), {"snapshots_offset 0x400000", "past the end"});
  h.nb_snapshots = 65537;
  ExpectRejected(Decode(Encode(h)), {"nb_snapshots 65537"});
}

TEST(HeaderRejectTest, BackingFileName) {
  Header h = ValidV3();
  h.backing_file = "base";
  Bytes buf = Encode(h);
  StoreBE32(buf.data() + 16, 1024);
  ExpectRejected(Decode(buf), {"backing_file_size 1024"});
  buf = Encode(h);
  StoreBE64(buf.data() + 8, 70000);
  ExpectRejected(Decode(buf), {"backing_file_offset 70000"});
  buf = Encode(h);
  StoreBE64(buf.data() + 8, (1 << 16) - 2);  // name would cross the cluster end
  ExpectRejected(Decode(buf), {"backing_file_size 4"});
}

TEST(HeaderRejectTest, ExtensionLengthPastArea) {
  Header h = ValidV3();
  h.opaque_extensions.push_back({0x11111111, ToBytes("abcdefgh")});
  Bytes buf = Encode(h);
  // Find the opaque extension and give it an absurd length.
  for (size_t off = 112; off + 8 < buf.size();) {
    const uint32_t type = LoadBE32(buf.data() + off);
    const uint32_t len = LoadBE32(buf.data() + off + 4);
    if (type == 0x11111111) {
      StoreBE32(buf.data() + off + 4, 0x7fffffff);
      break;
    }
    ASSERT_NE(type, kExtEnd);
    off += 8 + ((len + 7) & ~7u);
  }
  ExpectRejected(Decode(buf), {"header extension 0x11111111", "length 2147483647"});
}

TEST(HeaderRejectTest, ExtendedL2NeedsLargeClusters) {
  Header h = ValidV3();
  h.cluster_bits = 13;
  h.refcount_table_offset = 1 << 13;
  h.l1_table_offset = 3 << 13;
  h.l1_size = 1024;
  h.incompatible_features = kIncompatExtendedL2;
  ExpectRejected(Decode(Encode(h), 1 << 20), {"cluster_bits 13", "extended L2"});
}

TEST(HeaderRejectTest, DataFileRawWithoutDataFile) {
  Header h = ValidV3();
  h.autoclear_features = kAutoclearDataFileRaw;
  ExpectRejected(Decode(Encode(h)), {"autoclear_features bit 1"});
}

}  // namespace
}  // namespace uq::format
