// The stored refcounts: reading them, comparing them with the counted
// references (QEMU's compare_refcounts), repairing them in place, and
// writing a fresh refcount structure when they cannot be repaired in place.
#include <algorithm>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "format/endian.h"
#include "format/status_macros.h"
#include "format/tables.h"
#include "src/engine/check_internal.h"

namespace uq::engine::check_internal {
namespace {

constexpr uint64_t kRefTableOffsetMask = 0xfffffffffffffe00ull;
// Refcount blocks kept in memory at once (bytes).
constexpr uint64_t kBlockCacheBytes = 32ull << 20;
constexpr uint64_t kSectorBytes = 512;

uint32_t BlockBits(const Scan& s) { return s.h.cluster_bits + 3 - s.h.refcount_order; }

// The refcount block holding `cluster`'s count: its offset (0: none), or an
// error if the table entry is unusable.
absl::StatusOr<uint64_t> BlockOffset(Scan& s, uint64_t cluster) {
  const uint64_t index = cluster >> BlockBits(s);
  if (index >= s.reftable.size()) return 0;
  const uint64_t offset = s.reftable[index] & kRefTableOffsetMask;
  if (offset & (s.cluster_bytes - 1)) {
    if (!s.corruption_reported) {
      s.Message(absl::StrFormat(
          "qcow2: Image is corrupt: Refblock offset %#x unaligned (reftable index: %#x); further "
          "non-fatal corruption events will be suppressed",
          offset, index));
      s.corruption_reported = true;
    }
    return absl::DataLossError("Input/output error");
  }
  return offset;
}

Task<absl::StatusOr<std::vector<std::byte>*>> LoadBlock(Scan& s, uint64_t cluster,
                                                        uint64_t offset) {
  const uint64_t index = cluster >> BlockBits(s);
  auto it = s.block_cache.find(index);
  if (it != s.block_cache.end()) co_return &it->second;
  if ((s.block_cache.size() + 1) * s.cluster_bytes > kBlockCacheBytes) s.block_cache.clear();
  std::vector<std::byte> block(s.cluster_bytes);
  UQ_CO_RETURN_IF_ERROR(co_await ReadAt(s.file, offset, block));
  co_return &s.block_cache.emplace(index, std::move(block)).first->second;
}

}  // namespace

Task<absl::Status> LoadRefcountTable(Scan& s) {
  const uint64_t bytes = uint64_t{s.h.refcount_table_clusters} * s.cluster_bytes;
  std::vector<std::byte> raw(bytes);
  UQ_CO_RETURN_IF_ERROR(co_await ReadAt(s.file, s.h.refcount_table_offset, raw));
  s.reftable.resize(bytes / 8);
  for (uint64_t i = 0; i < s.reftable.size(); ++i) s.reftable[i] = format::LoadBE64(&raw[i * 8]);
  s.block_cache.clear();
  co_return absl::OkStatus();
}

Task<absl::StatusOr<uint64_t>> StoredRefcount(Scan& s, uint64_t cluster) {
  UQ_CO_ASSIGN_OR_RETURN(uint64_t offset, BlockOffset(s, cluster));
  if (offset == 0) co_return uint64_t{0};
  UQ_CO_ASSIGN_OR_RETURN(std::vector<std::byte> * block, co_await LoadBlock(s, cluster, offset));
  const uint64_t in_block = cluster & ((uint64_t{1} << BlockBits(s)) - 1);
  co_return format::GetRefcount(*block, s.h.refcount_order, in_block);
}

Task<absl::Status> SetStoredRefcount(Scan& s, uint64_t cluster, uint64_t value) {
  UQ_CO_ASSIGN_OR_RETURN(uint64_t offset, BlockOffset(s, cluster));
  if (offset == 0) co_return absl::FailedPreconditionError("no refcount block");
  UQ_CO_ASSIGN_OR_RETURN(std::vector<std::byte> * block, co_await LoadBlock(s, cluster, offset));
  const uint64_t in_block = cluster & ((uint64_t{1} << BlockBits(s)) - 1);
  format::SetRefcount(*block, s.h.refcount_order, in_block, value);
  // Write back the sector holding the entry.
  const uint64_t byte = (in_block << s.h.refcount_order) / 8;
  const uint64_t sector = byte / kSectorBytes * kSectorBytes;
  const uint64_t length = std::min<uint64_t>(kSectorBytes, s.cluster_bytes - sector);
  co_return co_await WriteAt(s.file, offset + sector,
                             std::span<const std::byte>(block->data() + sector, length));
}

Task<absl::Status> CompareRefcounts(Scan& s, RepairMode fix, uint64_t* highest_cluster) {
  *highest_cluster = 0;
  bool wrote = false;
  for (uint64_t i = 0; i < s.refs.size(); ++i) {
    // Where no refcount block exists every stored count is 0, so only the
    // clusters counted as referenced need a look: a sparse file may claim
    // billions of clusters.
    if (absl::StatusOr<uint64_t> block = BlockOffset(s, i); block.ok() && *block == 0) {
      const uint64_t block_end = ((i >> BlockBits(s)) + 1) << BlockBits(s);
      const uint64_t next = std::min({s.refs.SkipZeros(i), block_end, s.refs.size()});
      if (next > i) {
        i = next - 1;
        continue;
      }
    }
    absl::StatusOr<uint64_t> stored = co_await StoredRefcount(s, i);
    if (!stored.ok()) {
      s.Message(absl::StrFormat("Can't get refcount for cluster %d: %s", i,
                                std::string(stored.status().message())));
      ++s.counts.check_errors;
      continue;
    }
    const uint64_t counted = s.refs.Get(i);
    if (*stored > 0 || counted > 0) *highest_cluster = i;
    if (*stored == counted) continue;
    uint64_t* fixed = nullptr;
    if (*stored == 0) {
      s.rebuild = true;  // no block, or a block that says free: rebuild
    } else if (*stored > counted && fix != RepairMode::kNone) {
      fixed = &s.counts.leaks_fixed;
    } else if (*stored < counted && fix == RepairMode::kAll) {
      fixed = &s.counts.corruptions_fixed;
    }
    s.Message(absl::StrFormat("%s cluster %d refcount=%d reference=%d",
                              fixed != nullptr    ? "Repairing"
                              : *stored < counted ? "ERROR"
                                                  : "Leaked",
                              i, *stored, counted));
    if (fixed != nullptr) {
      wrote = true;
      if ((co_await SetStoredRefcount(s, i, counted)).ok()) {
        ++*fixed;
        continue;
      }
    }
    if (*stored < counted) {
      ++s.counts.corruptions;
    } else {
      ++s.counts.leaks;
    }
  }
  if (wrote && co_await s.file.Flush() < 0) co_return absl::DataLossError("flush failed");
  co_return absl::OkStatus();
}

Task<absl::Status> WriteRefcountBlocks(Scan& s, format::Header* h) {
  const uint64_t cs = s.cluster_bytes;
  const uint64_t per_block = RefcountsPerBlock(s);
  // Everything goes past both the end of the file and every counted cluster.
  const uint64_t base = std::max(s.refs.size(), s.file_clusters());
  uint64_t blocks = std::max<uint64_t>(1, (base + per_block - 1) / per_block);
  uint64_t table_clusters = 0;
  for (;;) {
    table_clusters = std::max<uint64_t>(1, (blocks * 8 + cs - 1) / cs);
    const uint64_t need = (base + blocks + table_clusters + per_block - 1) / per_block;
    if (need <= blocks) break;
    blocks = need;
  }
  // Blocks first, then the table after them.
  std::vector<uint64_t> block_at(blocks);
  for (uint64_t b = 0; b < blocks; ++b) block_at[b] = base + b;
  co_return co_await WriteRefcountStructureAt(s, block_at, base + blocks, table_clusters, h);
}

uint64_t RefcountsPerBlock(const Scan& s) { return uint64_t{1} << BlockBits(s); }

Task<absl::Status> WriteRefcountStructureAt(Scan& s, std::span<const uint64_t> block_at,
                                            uint64_t table_at, uint64_t table_clusters,
                                            format::Header* h) {
  const uint64_t cs = s.cluster_bytes;
  const uint64_t per_block = RefcountsPerBlock(s);
  if (table_clusters * cs > format::kMaxRefcountTableBytes) {
    co_return absl::ResourceExhaustedError("the new refcount table would exceed 8 MiB");
  }
  uint64_t end = table_at + table_clusters;
  for (const uint64_t c : block_at) end = std::max(end, c + 1);
  s.refs.Grow(end);
  for (const uint64_t c : block_at) s.refs.Set(c, 1);
  for (uint64_t c = table_at; c < table_at + table_clusters; ++c) s.refs.Set(c, 1);

  std::vector<std::byte> table(table_clusters * cs);
  std::vector<std::byte> block(cs);
  for (uint64_t b = 0; b < block_at.size(); ++b) {
    std::fill(block.begin(), block.end(), std::byte{0});
    for (uint64_t i = 0; i < per_block && b * per_block + i < s.refs.size(); ++i) {
      format::SetRefcount(block, s.h.refcount_order, i, s.refs.Get(b * per_block + i));
    }
    const uint64_t offset = block_at[b] * cs;
    UQ_CO_RETURN_IF_ERROR(co_await WriteAt(s.file, offset, block));
    format::StoreBE64(&table[b * 8], offset);
  }
  UQ_CO_RETURN_IF_ERROR(co_await WriteAt(s.file, table_at * cs, table));
  const int flushed = co_await s.file.Flush();
  if (flushed < 0) co_return absl::DataLossError("flush failed");
  h->refcount_table_offset = table_at * cs;
  h->refcount_table_clusters = static_cast<uint32_t>(table_clusters);
  co_return absl::OkStatus();
}

Task<absl::Status> SwitchHeader(Scan& s, const format::Header& h, HeaderFields fields) {
  // Bytes 24..99: size, crypt_method, l1_size, l1_table_offset, refcount
  // table offset and clusters, snapshot count and offset, the three feature
  // words, refcount_order; the write covers what `fields` asks for.
  std::byte buf[76];
  format::StoreBE64(buf, h.size_bytes);
  format::StoreBE32(buf + 8, h.crypt_method);
  format::StoreBE32(buf + 12, h.l1_size);
  format::StoreBE64(buf + 16, h.l1_table_offset);
  format::StoreBE64(buf + 24, h.refcount_table_offset);
  format::StoreBE32(buf + 32, h.refcount_table_clusters);
  format::StoreBE32(buf + 36, h.nb_snapshots);
  format::StoreBE64(buf + 40, h.snapshots_offset);
  format::StoreBE64(buf + 48, h.version >= 3 ? h.incompatible_features : 0);
  format::StoreBE64(buf + 56, h.compatible_features);
  format::StoreBE64(buf + 64, h.autoclear_features);
  format::StoreBE32(buf + 72, h.refcount_order);
  const uint64_t first = fields.size       ? format::kHeaderSizeAt
                         : fields.l1_table ? format::kHeaderL1SizeAt
                                           : format::kHeaderRefcountTableOffsetAt;
  // v2 headers end at byte 72.
  const uint64_t end = h.version < 3 ? 72 : fields.refcount_order ? 100 : 80;
  const std::span<const std::byte> bytes(buf + (first - format::kHeaderSizeAt), end - first);
  UQ_CO_RETURN_IF_ERROR(co_await WriteAt(s.file, first, bytes));
  const int flushed = co_await s.file.Flush();
  if (flushed < 0) co_return absl::DataLossError("flush failed");
  s.h = h;
  co_return co_await LoadRefcountTable(s);
}

Task<absl::Status> WriteNewRefcountStructure(Scan& s, bool clear_dirty, bool write_order) {
  format::Header h = s.h;
  UQ_CO_RETURN_IF_ERROR(co_await WriteRefcountBlocks(s, &h));
  // Only now does the header name the new structure, in one write.
  if (clear_dirty) h.incompatible_features &= ~format::kIncompatDirty;
  co_return co_await SwitchHeader(s, h, {.refcount_order = write_order});
}

}  // namespace uq::engine::check_internal
