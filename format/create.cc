#include "format/create.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "format/endian.h"
#include "format/status_macros.h"
#include "format/tables.h"

namespace uq::format {
namespace {

uint64_t DivRoundUp(uint64_t a, uint64_t b) { return a / b + (a % b != 0); }

absl::Status Invalid(std::string msg) { return absl::InvalidArgumentError(std::move(msg)); }

}  // namespace

absl::Status ValidateCreateOptions(const CreateOptions& o) {
  if (o.version != 2 && o.version != 3) {
    return Invalid(absl::StrCat("version ", o.version, " is not supported (2 or 3)"));
  }
  if (o.cluster_bits < kMinClusterBits || o.cluster_bits > kMaxClusterBits) {
    return Invalid(absl::StrCat("cluster_size ", uint64_t{1} << std::min(o.cluster_bits, 63u),
                                " must be a power of two between 512 and 2M"));
  }
  if (o.refcount_order > 6) {
    return Invalid(absl::StrCat("refcount_bits ", uint64_t{1} << std::min(o.refcount_order, 63u),
                                " must be a power of two up to 64"));
  }
  if (o.version == 2) {
    const char* what = nullptr;
    if (o.lazy_refcounts) what = "lazy_refcounts";
    if (o.refcount_order != 4) what = "refcount_bits other than 16";
    if (o.extended_l2) what = "extended_l2";
    if (o.compression_type != CompressionType::kZlib) what = "compression_type other than zlib";
    if (!o.data_file.empty()) what = "data_file";
    if (what) return Invalid(absl::StrCat("compat=0.10 does not support ", what));
  }
  if (o.extended_l2 && o.cluster_bits < 14) {
    return Invalid(absl::StrCat("extended_l2 needs a cluster_size of at least 16384, not ",
                                uint64_t{1} << o.cluster_bits));
  }
  if (o.data_file_raw && o.data_file.empty()) {
    return Invalid("data_file_raw=on requires data_file");
  }
  if (!o.backing_file.empty() && o.preallocation != Preallocation::kOff) {
    return Invalid("preallocation=metadata cannot be used with a backing file");
  }
  if (!o.backing_file.empty() && o.data_file_raw) {
    return Invalid("data_file_raw=on cannot be used with a backing file");
  }
  if (o.backing_file.size() > 1023) {
    return Invalid(
        absl::StrCat("backing file name is ", o.backing_file.size(), " bytes (max 1023)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<ImageLayout> BuildImageLayout(const CreateOptions& o) {
  UQ_RETURN_IF_ERROR(ValidateCreateOptions(o));
  ImageLayout layout;
  Header& h = layout.header;
  h.version = o.version;
  h.cluster_bits = o.cluster_bits;
  // QEMU rounds the virtual size up to whole 512-byte sectors.
  if (o.size_bytes > (uint64_t{1} << 63)) {
    return Invalid(absl::StrCat("size ", o.size_bytes, " is too large"));
  }
  h.size_bytes = (o.size_bytes + 511) & ~uint64_t{511};
  h.refcount_order = o.refcount_order;
  h.header_length = o.version == 2 ? kHeaderV2Length : 112;
  h.compression_type = o.compression_type;
  if (o.extended_l2) h.incompatible_features |= kIncompatExtendedL2;
  if (o.compression_type != CompressionType::kZlib) {
    h.incompatible_features |= kIncompatCompression;
  }
  if (!o.data_file.empty()) {
    h.incompatible_features |= kIncompatDataFile;
    h.data_file = o.data_file;
  }
  if (o.data_file_raw) h.autoclear_features |= kAutoclearDataFileRaw;
  if (o.lazy_refcounts) h.compatible_features |= kCompatLazyRefcounts;
  h.backing_file = o.backing_file;
  if (!o.backing_file.empty()) h.backing_format = o.backing_format;

  const uint64_t cluster_size = h.cluster_size();
  const uint64_t l2_entries = h.l2_entries_per_table();
  const uint64_t l1_size = DivRoundUp(h.size_bytes, cluster_size * l2_entries);
  if (l1_size * 8 > kMaxL1Bytes) {
    return Invalid(absl::StrCat("size ", h.size_bytes, " is too large for cluster_size ",
                                cluster_size, " (the L1 table would exceed 32 MiB)"));
  }
  h.l1_size = static_cast<uint32_t>(l1_size);
  const uint64_t l1_clusters = DivRoundUp(l1_size * 8, cluster_size);
  const bool prealloc = o.preallocation == Preallocation::kMetadata;
  const uint64_t l2_tables = prealloc ? l1_size : 0;
  // With an external data file the data clusters live there, at their guest
  // offsets, and take no refcounts in the image file (QEMU does the same).
  const uint64_t data_clusters =
      prealloc && o.data_file.empty() ? DivRoundUp(h.size_bytes, cluster_size) : 0;

  // Refcount table and blocks must also cover themselves: iterate to a fixed
  // point (it converges in a few rounds since each block covers many clusters).
  const uint64_t refcounts_per_block = (cluster_size * 8) >> o.refcount_order;
  const uint64_t fixed_clusters = 1 + l1_clusters + l2_tables + data_clusters;
  uint64_t reftable_clusters = 1;
  uint64_t refblocks = 1;
  for (;;) {
    const uint64_t total = fixed_clusters + reftable_clusters + refblocks;
    const uint64_t need_blocks = DivRoundUp(total, refcounts_per_block);
    const uint64_t need_table = DivRoundUp(need_blocks * 8, cluster_size);
    if (need_blocks <= refblocks && need_table <= reftable_clusters) break;
    refblocks = std::max(refblocks, need_blocks);
    reftable_clusters = std::max(reftable_clusters, need_table);
  }
  if (reftable_clusters * cluster_size > kMaxRefcountTableBytes) {
    return Invalid(absl::StrCat("size ", h.size_bytes,
                                " needs a refcount table over 8 MiB with cluster_size ",
                                cluster_size, " and refcount_bits ", 1u << o.refcount_order));
  }
  const uint64_t total_clusters = fixed_clusters + reftable_clusters + refblocks;

  const uint64_t reftable_offset = cluster_size;
  const uint64_t refblocks_offset = reftable_offset + reftable_clusters * cluster_size;
  const uint64_t l1_offset = refblocks_offset + refblocks * cluster_size;
  const uint64_t l2_offset = l1_offset + l1_clusters * cluster_size;
  const uint64_t data_offset = l2_offset + l2_tables * cluster_size;
  h.refcount_table_offset = reftable_offset;
  h.refcount_table_clusters = static_cast<uint32_t>(reftable_clusters);
  h.l1_table_offset = l1_size ? l1_offset : 0;
  layout.file_size_bytes = total_clusters * cluster_size;

  WriteRange header_range{0, std::vector<std::byte>(cluster_size)};
  UQ_RETURN_IF_ERROR(EncodeHeader(h, header_range.data));
  layout.writes.push_back(std::move(header_range));

  WriteRange reftable{reftable_offset, std::vector<std::byte>(reftable_clusters * cluster_size)};
  for (uint64_t i = 0; i < refblocks; ++i) {
    StoreBE64(reftable.data.data() + i * 8, refblocks_offset + i * cluster_size);
  }
  layout.writes.push_back(std::move(reftable));

  WriteRange blocks{refblocks_offset, std::vector<std::byte>(refblocks * cluster_size)};
  for (uint64_t c = 0; c < total_clusters; ++c) {
    SetRefcount(blocks.data, o.refcount_order, c, 1);
  }
  layout.writes.push_back(std::move(blocks));

  if (l1_size) {
    WriteRange l1{l1_offset, std::vector<std::byte>(l1_clusters * cluster_size)};
    for (uint64_t i = 0; i < l2_tables; ++i) {
      StoreBE64(l1.data.data() + i * 8,
                EncodeL1Entry({.l2_offset = l2_offset + i * cluster_size, .copied = true}));
    }
    layout.writes.push_back(std::move(l1));
  }

  if (l2_tables) {
    WriteRange l2{l2_offset, std::vector<std::byte>(l2_tables * cluster_size)};
    const uint64_t guest_clusters = DivRoundUp(h.size_bytes, cluster_size);
    const uint32_t entry_bytes = h.l2_entry_bytes();
    for (uint64_t c = 0; c < guest_clusters; ++c) {
      L2Entry e;
      e.type = ClusterType::kNormal;
      e.copied = true;
      e.host_offset = o.data_file.empty() ? data_offset + c * cluster_size : c * cluster_size;
      if (o.extended_l2) {
        // As QEMU does: the cluster is reserved, its subclusters read as zero.
        e.zero_bitmap = 0xffffffffu;
      }
      const EncodedL2 enc = EncodeL2Entry(e, h.cluster_bits, o.extended_l2);
      std::byte* p = l2.data.data() + c * entry_bytes;
      StoreBE64(p, enc.entry);
      if (o.extended_l2) StoreBE64(p + 8, enc.bitmap);
    }
    layout.writes.push_back(std::move(l2));
  }
  return layout;
}

}  // namespace uq::format
