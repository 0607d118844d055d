#include "src/engine/check.h"

#include <algorithm>
#include <cstring>
#include <map>

#include "absl/strings/str_cat.h"
#include "format/endian.h"
#include "format/status_macros.h"
#include "format/tables.h"

namespace uq::engine {
namespace {

using format::ClusterType;

constexpr size_t kMaxMessages = 20;
constexpr uint64_t kMaxSnapshotTableBytes = 64ull << 20;

struct Tally {
  const format::Header* h = nullptr;
  uint64_t file_clusters = 0;
  std::vector<uint64_t> counts;  // computed references per cluster
  CheckResult result;
  // Active-layer entries whose COPIED flag must match refcount == 1.
  struct CopiedCheck {
    uint64_t cluster;
    bool copied;
    std::string what;
  };
  std::vector<CopiedCheck> copied_checks;

  void Problem(bool corruption, std::string msg) {
    if (corruption) {
      ++result.corruptions;
    } else {
      ++result.leaks;
    }
    if (result.messages.size() < kMaxMessages) result.messages.push_back(std::move(msg));
  }
  void AddRange(uint64_t offset, uint64_t bytes, const std::string& what) {
    if (bytes == 0) return;
    const uint64_t first = offset >> h->cluster_bits;
    const uint64_t last = (offset + bytes - 1) >> h->cluster_bits;
    for (uint64_t c = first; c <= last; ++c) {
      if (c >= file_clusters) {
        Problem(true, absl::StrCat("ERROR ", what, " at offset ", c << h->cluster_bits,
                                   " is beyond the end of the file"));
        continue;
      }
      ++counts[c];
    }
  }
};

Task<int64_t> ReadAll(io::BlockFile& file, uint64_t offset, std::span<std::byte> buf) {
  co_return co_await file.Read(offset, buf);
}

// Counts an L1 table, its L2 tables and their clusters.
Task<absl::Status> CountL1(io::BlockFile& file, Tally& t, uint64_t l1_offset, uint64_t l1_size,
                           bool active, const std::string& name) {
  const format::Header& h = *t.h;
  const uint64_t cs = h.cluster_size();
  if (l1_size == 0) co_return absl::OkStatus();
  if (l1_offset & (cs - 1)) {
    t.Problem(true, absl::StrCat("ERROR ", name, " L1 table offset ", l1_offset, " unaligned"));
    co_return absl::OkStatus();
  }
  t.AddRange(l1_offset, l1_size * 8, name + " L1 table");
  std::vector<std::byte> l1(l1_size * 8);
  int64_t r = co_await ReadAll(file, l1_offset, l1);
  if (r < 0) co_return absl::DataLossError(absl::StrCat("reading L1: ", std::strerror(-r)));
  std::vector<std::byte> l2(cs);
  for (uint64_t i = 0; i < l1_size; ++i) {
    auto l1e = format::DecodeL1Entry(format::LoadBE64(&l1[i * 8]));
    if (!l1e.ok()) {
      t.Problem(true, absl::StrCat("ERROR ", name, " L1[", i, "]: ", l1e.status().message()));
      continue;
    }
    if (l1e->l2_offset == 0) continue;
    if (l1e->l2_offset & (cs - 1)) {
      t.Problem(true, absl::StrCat("ERROR ", name, " L1[", i, "] L2 offset unaligned"));
      continue;
    }
    t.AddRange(l1e->l2_offset, cs, name + " L2 table");
    if (active) {
      t.copied_checks.push_back(
          {l1e->l2_offset >> h.cluster_bits, l1e->copied, absl::StrCat("L1[", i, "] (L2 table)")});
    }
    r = co_await ReadAll(file, l1e->l2_offset, l2);
    if (r < 0) co_return absl::DataLossError(absl::StrCat("reading L2: ", std::strerror(-r)));
    const uint64_t entries = h.l2_entries_per_table();
    for (uint64_t j = 0; j < entries; ++j) {
      const std::byte* p = &l2[j * h.l2_entry_bytes()];
      const uint64_t raw = format::LoadBE64(p);
      const uint64_t bitmap = h.extended_l2() ? format::LoadBE64(p + 8) : 0;
      auto e = format::DecodeL2Entry(raw, bitmap, h.cluster_bits, h.extended_l2());
      const uint64_t guest = ((i * entries) + j) << h.cluster_bits;
      if (!e.ok()) {
        t.Problem(true, absl::StrCat("ERROR ", name, " L2 entry for guest offset ", guest, ": ",
                                     e.status().message()));
        continue;
      }
      switch (e->type) {
        case ClusterType::kNormal:
        case ClusterType::kZeroAlloc:
          if (h.has_data_file()) {
            if (active && !e->copied) {
              t.Problem(true,
                        absl::StrCat("ERROR OFLAG_COPIED data cluster (data file) guest ", guest));
            }
            break;
          }
          t.AddRange(e->host_offset, cs, name + " data cluster");
          if (active) {
            t.copied_checks.push_back({e->host_offset >> h.cluster_bits, e->copied,
                                       absl::StrCat("data cluster for guest offset ", guest)});
          }
          break;
        case ClusterType::kCompressed:
          t.AddRange(e->compressed_offset, e->compressed_length, name + " compressed cluster");
          break;
        default:
          break;
      }
    }
  }
  co_return absl::OkStatus();
}

struct Loaded {
  format::Header header;
};

Task<absl::StatusOr<format::Header>> LoadHeader(io::BlockFile& file) {
  std::vector<std::byte> first(512);
  int64_t r = co_await file.Read(0, first);
  if (r < 0) co_return absl::DataLossError(absl::StrCat("reading header: ", std::strerror(-r)));
  UQ_CO_ASSIGN_OR_RETURN(uint64_t n, format::HeaderReadSize(first));
  std::vector<std::byte> buf(n);
  r = co_await file.Read(0, buf);
  if (r < 0) co_return absl::DataLossError(absl::StrCat("reading header: ", std::strerror(-r)));
  co_return format::DecodeHeader(buf, {.file_size_bytes = file.size_bytes()});
}

// The persistent dirty bitmaps (bitmaps extension): directory, bitmap tables
// and their data clusters. Counted only while the autoclear bit says the
// extension is consistent, as QEMU does.
Task<absl::Status> CountBitmaps(io::BlockFile& file, Tally& t) {
  const format::Header& h = *t.h;
  if (!(h.autoclear_features & format::kAutoclearBitmaps)) co_return absl::OkStatus();
  const format::HeaderExtension* ext = nullptr;
  for (const format::HeaderExtension& e : h.opaque_extensions) {
    if (e.type == format::kExtBitmaps) ext = &e;
  }
  if (ext == nullptr || ext->data.size() < 24) co_return absl::OkStatus();
  const uint32_t nb_bitmaps = format::LoadBE32(&ext->data[0]);
  const uint64_t dir_size = format::LoadBE64(&ext->data[8]);
  const uint64_t dir_offset = format::LoadBE64(&ext->data[16]);
  const uint64_t cs = h.cluster_size();
  if (dir_size > (64ull << 20) || (dir_offset & (cs - 1))) {
    t.Problem(true, "ERROR bitmap directory offset/size invalid");
    co_return absl::OkStatus();
  }
  t.AddRange(dir_offset, dir_size, "bitmap directory");
  std::vector<std::byte> dir(dir_size);
  int64_t r = co_await file.Read(dir_offset, dir);
  if (r < 0) co_return absl::DataLossError("reading bitmap directory");
  uint64_t pos = 0;
  for (uint32_t i = 0; i < nb_bitmaps; ++i) {
    if (pos + 24 > dir.size()) {
      t.Problem(true, "ERROR bitmap directory truncated");
      break;
    }
    const uint64_t table_offset = format::LoadBE64(&dir[pos]);
    const uint32_t table_entries = format::LoadBE32(&dir[pos + 8]);
    const uint16_t name_size = format::LoadBE16(&dir[pos + 18]);
    const uint32_t extra = format::LoadBE32(&dir[pos + 20]);
    pos += (24 + uint64_t{extra} + name_size + 7) / 8 * 8;
    if (table_offset & (cs - 1)) {
      t.Problem(true, "ERROR bitmap table offset unaligned");
      continue;
    }
    t.AddRange(table_offset, uint64_t{table_entries} * 8, "bitmap table");
    std::vector<std::byte> table(uint64_t{table_entries} * 8);
    r = co_await file.Read(table_offset, table);
    if (r < 0) co_return absl::DataLossError("reading bitmap table");
    for (uint32_t j = 0; j < table_entries; ++j) {
      const uint64_t off = format::LoadBE64(&table[j * 8]) & format::kOffsetMask;
      if (off != 0) t.AddRange(off, cs, "bitmap data cluster");
    }
  }
  co_return absl::OkStatus();
}

// Everything but the refcount structures.
Task<absl::Status> CountReferences(io::BlockFile& file, Tally& t) {
  const format::Header& h = *t.h;
  t.AddRange(0, h.cluster_size(), "header");
  UQ_CO_RETURN_IF_ERROR(
      co_await CountL1(file, t, h.l1_table_offset, h.l1_size, /*active=*/true, "active"));
  UQ_CO_RETURN_IF_ERROR(co_await CountBitmaps(file, t));
  UQ_CO_ASSIGN_OR_RETURN(std::vector<format::Snapshot> snaps, co_await ReadSnapshotTable(file, h));
  if (!snaps.empty()) {
    t.AddRange(h.snapshots_offset, format::SnapshotTableSize(snaps), "snapshot table");
  }
  for (const format::Snapshot& s : snaps) {
    UQ_CO_RETURN_IF_ERROR(co_await CountL1(file, t, s.l1_table_offset, s.l1_size,
                                           /*active=*/false, "snapshot '" + s.name + "'"));
  }
  co_return absl::OkStatus();
}

}  // namespace

Task<absl::StatusOr<std::vector<format::Snapshot>>> ReadSnapshotTable(io::BlockFile& file,
                                                                      const format::Header& h) {
  if (h.nb_snapshots == 0) co_return std::vector<format::Snapshot>{};
  if (h.snapshots_offset & (h.cluster_size() - 1) || h.snapshots_offset >= file.size_bytes()) {
    co_return absl::InvalidArgumentError(
        absl::StrCat("snapshot table offset ", h.snapshots_offset, " is invalid"));
  }
  const uint64_t n = std::min(file.size_bytes() - h.snapshots_offset, kMaxSnapshotTableBytes);
  std::vector<std::byte> buf(n);
  int64_t r = co_await file.Read(h.snapshots_offset, buf);
  if (r < 0) co_return absl::DataLossError(absl::StrCat("reading snapshots: ", std::strerror(-r)));
  co_return format::DecodeSnapshotTable(buf, h.nb_snapshots, h.cluster_bits);
}

Task<absl::StatusOr<CheckResult>> CheckImage(io::BlockFile& file) {
  UQ_CO_ASSIGN_OR_RETURN(format::Header h, co_await LoadHeader(file));
  const uint64_t cs = h.cluster_size();
  Tally t;
  t.h = &h;
  t.file_clusters = (file.size_bytes() + cs - 1) / cs;
  t.counts.assign(t.file_clusters, 0);
  UQ_CO_RETURN_IF_ERROR(co_await CountReferences(file, t));

  // Refcount table and blocks; load the stored refcounts.
  const uint64_t rt_bytes = uint64_t{h.refcount_table_clusters} * cs;
  t.AddRange(h.refcount_table_offset, rt_bytes, "refcount table");
  std::vector<std::byte> rt(rt_bytes);
  int64_t r = co_await file.Read(h.refcount_table_offset, rt);
  if (r < 0) co_return absl::DataLossError("reading refcount table");
  const uint32_t block_bits = h.cluster_bits + 3 - h.refcount_order;
  std::map<uint64_t, std::vector<std::byte>> blocks;
  for (uint64_t b = 0; b < rt_bytes / 8; ++b) {
    auto off = format::DecodeRefcountTableEntry(format::LoadBE64(&rt[b * 8]));
    if (!off.ok()) {
      t.Problem(true, absl::StrCat("ERROR refcount table[", b, "]: ", off.status().message()));
      continue;
    }
    if (*off == 0) continue;
    if (*off & (cs - 1)) {
      t.Problem(true, absl::StrCat("ERROR refcount block ", b, " offset unaligned"));
      continue;
    }
    t.AddRange(*off, cs, "refcount block");
    std::vector<std::byte> blk(cs);
    r = co_await file.Read(*off, blk);
    if (r < 0) co_return absl::DataLossError("reading refcount block");
    blocks.emplace(b, std::move(blk));
  }
  auto stored = [&](uint64_t c) -> uint64_t {
    auto it = blocks.find(c >> block_bits);
    if (it == blocks.end()) return 0;
    return format::GetRefcount(it->second, h.refcount_order, c & ((uint64_t{1} << block_bits) - 1));
  };
  for (uint64_t c = 0; c < t.file_clusters; ++c) {
    const uint64_t want = t.counts[c];
    const uint64_t have = stored(c);
    if (want > 0) ++t.result.referenced_clusters;
    if (have < want) {
      t.Problem(true, absl::StrCat("ERROR cluster ", c, " refcount=", have, " reference=", want));
    } else if (have > want) {
      t.Problem(false, absl::StrCat("Leaked cluster ", c, " refcount=", have, " reference=", want));
    }
  }
  for (const auto& [b, blk] : blocks) {
    for (uint64_t i = 0; i < (uint64_t{1} << block_bits); ++i) {
      const uint64_t c = (b << block_bits) + i;
      if (c < t.file_clusters) continue;
      if (format::GetRefcount(blk, h.refcount_order, i) != 0) {
        t.Problem(false, absl::StrCat("Leaked cluster ", c, " beyond the end of the file"));
      }
    }
  }
  for (const Tally::CopiedCheck& cc : t.copied_checks) {
    const bool one = stored(cc.cluster) == 1;
    if (one != cc.copied) {
      t.Problem(true, absl::StrCat("ERROR OFLAG_COPIED ", cc.what,
                                   ": refcount=", stored(cc.cluster), " copied=", cc.copied));
    }
  }
  co_return t.result;
}

Task<absl::Status> RebuildRefcounts(io::BlockFile& file, format::Header& h) {
  const uint64_t cs = h.cluster_size();
  Tally t;
  t.h = &h;
  t.file_clusters = (file.size_bytes() + cs - 1) / cs;
  t.counts.assign(t.file_clusters, 0);
  UQ_CO_RETURN_IF_ERROR(co_await CountReferences(file, t));
  if (t.result.corruptions > 0) {
    co_return absl::DataLossError(
        absl::StrCat("cannot rebuild refcounts: ", t.result.corruptions, " corruptions, first: ",
                     t.result.messages.empty() ? std::string() : t.result.messages.front()));
  }
  const uint32_t block_bits = h.cluster_bits + 3 - h.refcount_order;
  const uint64_t per_block = uint64_t{1} << block_bits;
  // New table and blocks go past the end of the file and count themselves.
  const uint64_t area = t.file_clusters;
  uint64_t nblocks = (area + per_block - 1) / per_block;
  uint64_t table_clusters = 0;
  for (;;) {
    table_clusters = std::max<uint64_t>(1, (nblocks * 8 + cs - 1) / cs);
    const uint64_t end = area + table_clusters + nblocks;
    const uint64_t need = (end + per_block - 1) / per_block;
    if (need <= nblocks) break;
    nblocks = need;
  }
  const uint64_t total = area + table_clusters + nblocks;
  t.counts.resize(total, 0);
  for (uint64_t c = area; c < total; ++c) t.counts[c] = 1;
  const uint64_t max_rc = format::MaxRefcount(h.refcount_order);
  std::vector<std::byte> blk(cs);
  std::vector<std::byte> table(table_clusters * cs);
  for (uint64_t b = 0; b < nblocks; ++b) {
    std::fill(blk.begin(), blk.end(), std::byte{0});
    for (uint64_t i = 0; i < per_block; ++i) {
      const uint64_t c = b * per_block + i;
      if (c >= total) break;
      if (t.counts[c] > max_rc) {
        co_return absl::DataLossError(absl::StrCat("cluster ", c, " has ", t.counts[c],
                                                   " references, more than refcount_bits allow"));
      }
      format::SetRefcount(blk, h.refcount_order, i, t.counts[c]);
    }
    const uint64_t off = (area + table_clusters + b) * cs;
    int64_t r = co_await file.Write(off, blk);
    if (r < 0) co_return absl::DataLossError("writing refcount block");
    format::StoreBE64(&table[b * 8], off);
  }
  int64_t r = co_await file.Write(area * cs, table);
  if (r < 0) co_return absl::DataLossError("writing refcount table");
  {
    int f = co_await file.Flush();
    if (f < 0) co_return absl::DataLossError("flush");
  }
  h.refcount_table_offset = area * cs;
  h.refcount_table_clusters = static_cast<uint32_t>(table_clusters);
  h.incompatible_features &= ~format::kIncompatDirty;
  std::vector<std::byte> hbuf(cs);
  UQ_CO_RETURN_IF_ERROR(format::EncodeHeader(h, hbuf));
  r = co_await file.Write(0, hbuf);
  if (r < 0) co_return absl::DataLossError("writing header");
  {
    int f = co_await file.Flush();
    if (f < 0) co_return absl::DataLossError("flush");
  }
  co_return absl::OkStatus();
}

}  // namespace uq::engine
