#include "format/create.h"

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "format/endian.h"
#include "format/tables.h"

namespace uq::format {
namespace {

// Applies the layout to a flat buffer standing in for the file.
std::vector<std::byte> Materialize(const ImageLayout& layout) {
  std::vector<std::byte> file(layout.file_size_bytes);
  uint64_t previous_end = 0;
  for (const WriteRange& w : layout.writes) {
    EXPECT_GE(w.offset_bytes, previous_end) << "writes overlap or are unordered";
    EXPECT_LE(w.offset_bytes + w.data.size(), file.size());
    std::copy(w.data.begin(), w.data.end(), file.begin() + w.offset_bytes);
    previous_end = w.offset_bytes + w.data.size();
  }
  return file;
}

// A small `qemu-img check`: counts references to each host cluster (header,
// refcount table and blocks, L1, L2, data) and compares them with the stored
// refcounts. Returns the number of mismatches.
int CheckRefcounts(const std::vector<std::byte>& file, const Header& h, bool data_in_image) {
  const uint64_t cs = h.cluster_size();
  const uint64_t clusters = file.size() / cs;
  std::vector<uint64_t> refs(clusters, 0);
  int errors = 0;
  auto ref = [&](uint64_t offset, uint64_t bytes) {
    for (uint64_t c = offset / cs; c < (offset + bytes + cs - 1) / cs; ++c) {
      if (c >= clusters) {
        ++errors;
        continue;
      }
      ++refs[c];
    }
  };
  ref(0, cs);
  ref(h.refcount_table_offset, uint64_t{h.refcount_table_clusters} * cs);
  ref(h.l1_table_offset, uint64_t{h.l1_size} * 8);
  const uint64_t per_block = cs * 8 >> h.refcount_order;
  std::map<uint64_t, uint64_t> stored;  // cluster index -> refcount
  for (uint64_t i = 0; i < uint64_t{h.refcount_table_clusters} * cs / 8; ++i) {
    absl::StatusOr<uint64_t> block =
        DecodeRefcountTableEntry(LoadBE64(file.data() + h.refcount_table_offset + i * 8));
    if (!block.ok()) return ++errors;
    if (*block == 0) continue;
    ref(*block, cs);
    std::span<const std::byte> span(file.data() + *block, cs);
    for (uint64_t j = 0; j < per_block; ++j) {
      const uint64_t rc = GetRefcount(span, h.refcount_order, j);
      if (rc) stored[i * per_block + j] = rc;
    }
  }
  for (uint32_t i = 0; i < h.l1_size; ++i) {
    absl::StatusOr<L1Entry> l1 = DecodeL1Entry(LoadBE64(file.data() + h.l1_table_offset + i * 8));
    if (!l1.ok()) return ++errors;
    if (l1->l2_offset == 0) continue;
    ref(l1->l2_offset, cs);
    for (uint64_t j = 0; j < h.l2_entries_per_table(); ++j) {
      const std::byte* p = file.data() + l1->l2_offset + j * h.l2_entry_bytes();
      absl::StatusOr<L2Entry> e = DecodeL2Entry(LoadBE64(p), h.extended_l2() ? LoadBE64(p + 8) : 0,
                                                h.cluster_bits, h.extended_l2(), h.has_data_file());
      if (!e.ok()) return ++errors;
      if (e->type == ClusterType::kNormal && data_in_image) ref(e->host_offset, cs);
    }
  }
  for (uint64_t c = 0; c < clusters; ++c) {
    const uint64_t s = stored.count(c) ? stored[c] : 0;
    if (s != refs[c]) {
      ADD_FAILURE() << "cluster " << c << " refcount " << s << " but " << refs[c] << " refs";
      ++errors;
    }
  }
  for (const auto& [c, rc] : stored) {
    if (c >= clusters) {
      ADD_FAILURE() << "refcount for cluster " << c << " past the end of the file";
      ++errors;
    }
  }
  return errors;
}

struct Case {
  std::string name;
  CreateOptions options;
};

std::vector<Case> Matrix() {
  std::vector<Case> cases;
  for (uint32_t bits : {9u, 12u, 16u, 21u}) {
    for (uint32_t order : {0u, 4u, 6u}) {
      for (bool prealloc : {false, true}) {
        CreateOptions o;
        // Preallocated images are materialized in memory: keep them small.
        o.size_bytes = !prealloc   ? (3ull << 30) + 4096
                       : bits == 9 ? (4ull << 20)
                                   : (40ull << 20) + 4096;
        o.cluster_bits = bits;
        o.refcount_order = order;
        o.preallocation = prealloc ? Preallocation::kMetadata : Preallocation::kOff;
        cases.push_back({"bits" + std::to_string(bits) + "_order" + std::to_string(order) +
                             (prealloc ? "_prealloc" : ""),
                         o});
      }
    }
  }
  CreateOptions v2;
  v2.version = 2;
  v2.size_bytes = 100 << 20;
  cases.push_back({"v2", v2});
  CreateOptions ext;
  ext.extended_l2 = true;
  ext.preallocation = Preallocation::kMetadata;
  ext.size_bytes = 100 << 20;
  ext.compression_type = CompressionType::kZstd;
  ext.lazy_refcounts = true;
  cases.push_back({"extended_l2_zstd_lazy_prealloc", ext});
  CreateOptions data;
  data.data_file = "data.raw";
  data.data_file_raw = true;
  data.preallocation = Preallocation::kMetadata;
  data.size_bytes = 1 << 30;
  cases.push_back({"data_file_raw_prealloc", data});
  CreateOptions backing;
  backing.backing_file = "../base.qcow2";
  backing.backing_format = "qcow2";
  backing.size_bytes = 0;
  cases.push_back({"backing_zero_size", backing});
  CreateOptions many_blocks;  // 1-bit refcounts, 512-byte clusters: many blocks
  many_blocks.cluster_bits = 9;
  many_blocks.refcount_order = 6;
  many_blocks.preallocation = Preallocation::kMetadata;
  many_blocks.size_bytes = 4 << 20;
  cases.push_back({"many_refcount_blocks", many_blocks});
  return cases;
}

TEST(CreateLayoutTest, EveryLayoutDecodesAndHasExactRefcounts) {
  for (const Case& c : Matrix()) {
    SCOPED_TRACE(c.name);
    absl::StatusOr<ImageLayout> layout = BuildImageLayout(c.options);
    ASSERT_TRUE(layout.ok()) << layout.status();
    ASSERT_EQ(layout->file_size_bytes % layout->header.cluster_size(), 0u);
    const std::vector<std::byte> file = Materialize(*layout);
    absl::StatusOr<Header> h = DecodeHeader(file, {.file_size_bytes = file.size()});
    ASSERT_TRUE(h.ok()) << h.status();
    EXPECT_EQ(h->version, c.options.version);
    EXPECT_EQ(h->size_bytes, (c.options.size_bytes + 511) / 512 * 512);
    EXPECT_EQ(h->cluster_bits, c.options.cluster_bits);
    EXPECT_EQ(h->refcount_order, c.options.refcount_order);
    EXPECT_EQ(h->extended_l2(), c.options.extended_l2);
    EXPECT_EQ(h->compression_type, c.options.compression_type);
    EXPECT_EQ(h->has_data_file(), !c.options.data_file.empty());
    EXPECT_EQ(h->backing_file, c.options.backing_file);
    if (!c.options.data_file.empty()) {
      EXPECT_EQ(h->data_file, c.options.data_file);
    }
    EXPECT_EQ(CheckRefcounts(file, *h, c.options.data_file.empty()), 0);

    // Preallocated images map every guest cluster; others map none.
    uint64_t mapped = 0;
    for (uint32_t i = 0; i < h->l1_size; ++i) {
      const L1Entry l1 = *DecodeL1Entry(LoadBE64(file.data() + h->l1_table_offset + i * 8));
      if (!l1.l2_offset) continue;
      for (uint64_t j = 0; j < h->l2_entries_per_table(); ++j) {
        const std::byte* p = file.data() + l1.l2_offset + j * h->l2_entry_bytes();
        const L2Entry e = *DecodeL2Entry(LoadBE64(p), h->extended_l2() ? LoadBE64(p + 8) : 0,
                                         h->cluster_bits, h->extended_l2(), h->has_data_file());
        if (e.type == ClusterType::kNormal) {
          ++mapped;
          if (!c.options.data_file.empty()) {
            // Raw data file: guest offset == host offset.
            EXPECT_EQ(e.host_offset, (i * h->l2_entries_per_table() + j) * h->cluster_size());
          }
          if (h->extended_l2()) {
            EXPECT_EQ(e.zero_bitmap, 0xffffffffu);
          }
        }
      }
    }
    const uint64_t guest_clusters = (h->size_bytes + h->cluster_size() - 1) / h->cluster_size();
    EXPECT_EQ(mapped, c.options.preallocation == Preallocation::kMetadata ? guest_clusters : 0u);
  }
}

TEST(CreateLayoutTest, QemuLikeLayoutForDefaults) {
  CreateOptions o;
  o.size_bytes = 1 << 30;
  absl::StatusOr<ImageLayout> layout = BuildImageLayout(o);
  ASSERT_TRUE(layout.ok());
  // As qemu-img create lays it out: header, reftable, refblock, L1.
  EXPECT_EQ(layout->header.refcount_table_offset, 0x10000u);
  EXPECT_EQ(layout->header.l1_table_offset, 0x30000u);
  EXPECT_EQ(layout->header.l1_size, 2u);
  EXPECT_EQ(layout->file_size_bytes, 0x40000u);
}

void ExpectRejected(const CreateOptions& o, const std::string& needle) {
  absl::StatusOr<ImageLayout> r = BuildImageLayout(o);
  ASSERT_FALSE(r.ok()) << "accepted; wanted " << needle;
  EXPECT_NE(std::string(r.status().message()).find(needle), std::string::npos)
      << r.status().message();
}

TEST(CreateLayoutTest, RejectsBadOptions) {
  CreateOptions o;
  o.size_bytes = 1 << 20;
  CreateOptions x = o;
  x.cluster_bits = 22;
  ExpectRejected(x, "cluster_size 4194304");
  x = o;
  x.refcount_order = 7;
  ExpectRejected(x, "refcount_bits 128");
  x = o;
  x.version = 2;
  x.lazy_refcounts = true;
  ExpectRejected(x, "compat=0.10 does not support lazy_refcounts");
  x = o;
  x.version = 2;
  x.extended_l2 = true;
  ExpectRejected(x, "compat=0.10 does not support extended_l2");
  x = o;
  x.extended_l2 = true;
  x.cluster_bits = 12;
  ExpectRejected(x, "extended_l2");
  x = o;
  x.data_file_raw = true;
  ExpectRejected(x, "data_file_raw");
  x = o;
  x.backing_file = "b";
  x.preallocation = Preallocation::kMetadata;
  ExpectRejected(x, "backing file");
  x = o;
  x.cluster_bits = 9;
  x.size_bytes = 1ull << 50;
  ExpectRejected(x, "size 1125899906842624 is too large");
}

}  // namespace
}  // namespace uq::format
