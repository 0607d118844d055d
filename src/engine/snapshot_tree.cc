// WalkTree and the active L1 table (snapshot_tree.h).
#include "src/engine/snapshot_tree.h"

#include "absl/strings/str_cat.h"
#include "format/endian.h"
#include "format/tables.h"

namespace uq::engine::snapshot_internal {
namespace {

// The host clusters one L2 entry references (none for an external data file).
struct Referenced {
  uint64_t first = 0;
  uint64_t count = 0;
  bool copied_applies = false;  // COPIED is meaningful (not compressed)
};

Task<int> EntryClusters(ImageParts& p, uint64_t raw, uint64_t bitmap, Referenced* out) {
  const Geometry& geo = p.geo;
  *out = Referenced{};
  auto e = format::DecodeL2Entry(raw, bitmap, geo.cluster_bits, geo.extended_l2);
  if (!e.ok())
    co_return co_await p.meta->MarkCorrupt(absl::StrCat("L2 entry: ", e.status().message()));
  const uint64_t end = p.meta->file().size_bytes();
  if ((e->type == format::ClusterType::kNormal || e->type == format::ClusterType::kZeroAlloc) &&
      e->host_offset != 0) {
    if (e->host_offset >= end) {
      co_return co_await p.meta->MarkCorrupt(
          absl::StrCat("L2 entry points at ", e->host_offset, ", past the end of the file"));
    }
    *out = {geo.ClusterIndex(e->host_offset), 1, true};
  } else if (e->type == format::ClusterType::kCompressed && e->compressed_length > 0) {
    if (e->compressed_offset >= end) {
      co_return co_await p.meta->MarkCorrupt(absl::StrCat(
          "compressed L2 entry points at ", e->compressed_offset, ", past the end of the file"));
    }
    const uint64_t first = geo.ClusterIndex(e->compressed_offset);
    const uint64_t last = geo.ClusterIndex(e->compressed_offset + e->compressed_length - 1);
    *out = {first, last - first + 1, false};
  }
  co_return 0;
}

// The L2 table an L1 entry names (0: none), checked against the file.
Task<int64_t> TableOf(ImageParts& p, uint64_t l1_raw) {
  const uint64_t table = l1_raw & format::kOffsetMask;
  if (table == 0) co_return 0;
  if (!p.geo.ClusterAligned(table) || table >= p.meta->file().size_bytes()) {
    co_return co_await p.meta->MarkCorrupt(
        absl::StrCat("L1 entry names an L2 table at ", table, ", unaligned or past the file"));
  }
  co_return static_cast<int64_t>(table);
}

// Refcount of `cluster` after `op` (kAddReference: incremented).
Task<int> Count(ImageParts& p, TreeOp op, uint64_t cluster, uint64_t* refcount) {
  if (op == TreeOp::kAddReference) co_return co_await p.refs->Add(cluster, 1, refcount);
  co_return co_await p.refs->Get(cluster, refcount);
}

}  // namespace

Task<int> WalkTree(ImageParts& p, std::vector<uint64_t>& l1, TreeOp op) {
  const Geometry& geo = p.geo;
  const uint32_t per_slice = geo.slice_bytes / geo.l2_entry_bytes;
  for (uint64_t& l1e : l1) {
    const int64_t table = co_await TableOf(p, l1e);
    if (table <= 0) {
      if (table < 0) co_return static_cast<int>(table);
      continue;
    }
    for (uint64_t s = 0; s < geo.cluster_bytes; s += geo.slice_bytes) {
      cache::SliceCache::Ref ref;
      int r = co_await p.l2->cache().Get(static_cast<uint64_t>(table) + s, &ref);
      if (r < 0) co_return r;
      bool changed = false;
      for (uint32_t j = 0; j < per_slice; ++j) {
        std::byte* at = ref.data().data() + j * geo.l2_entry_bytes;
        const uint64_t raw = format::LoadBE64(at);
        Referenced c;
        r = co_await EntryClusters(p, raw, geo.extended_l2 ? format::LoadBE64(at + 8) : 0, &c);
        if (r < 0) co_return r;
        if (op == TreeOp::kDropReference) {
          if (c.count > 0) p.refs->QueueFree(c.first, c.count);
          continue;
        }
        uint64_t refcount = 0;
        for (uint64_t k = 0; k < c.count && r >= 0; ++k) {
          r = co_await Count(p, op, c.first + k, &refcount);
        }
        if (r < 0) co_return r;
        if (!c.copied_applies) continue;
        const uint64_t want =
            refcount == 1 ? raw | format::kOflagCopied : raw & ~format::kOflagCopied;
        if (want == raw) continue;
        {
          auto data_lock = ref.LockData();
          format::StoreBE64(at, want);
        }
        changed = true;
      }
      if (changed) {
        ref.MarkDirty();
        p.meta->NoteChange();
      }
    }
    const uint64_t index = geo.ClusterIndex(static_cast<uint64_t>(table));
    uint64_t refcount = 0;
    int r = co_await Count(p, op, index, &refcount);
    if (r < 0) co_return r;
    if (op == TreeOp::kDropReference) {
      if (refcount <= 1) {
        co_await p.l2->cache().Drop(static_cast<uint64_t>(table), geo.cluster_bytes);
      }
      p.refs->QueueFree(index, 1);
      continue;
    }
    l1e = refcount == 1 ? l1e | format::kOflagCopied : l1e & ~format::kOflagCopied;
  }
  co_return 0;
}

std::vector<uint64_t> ActiveL1(ImageParts& p) {
  std::vector<uint64_t> l1(p.l2->l1_entries());
  for (size_t i = 0; i < l1.size(); ++i) l1[i] = p.l2->L1Raw(i);
  return l1;
}

void StoreActiveL1(ImageParts& p, const std::vector<uint64_t>& l1) {
  for (size_t i = 0; i < l1.size(); ++i) {
    if (p.l2->L1Raw(i) != l1[i]) p.l2->SetL1Entry(i, l1[i]);
  }
}

Task<int> RecomputeCopied(ImageParts& p) {
  co_await p.meta->lock().Lock();
  cache::MutexGuard guard(&p.meta->lock());
  std::vector<uint64_t> l1 = ActiveL1(p);
  int r = co_await WalkTree(p, l1, TreeOp::kRecomputeCopied);
  if (r >= 0) StoreActiveL1(p, l1);
  co_return r;
}

}  // namespace uq::engine::snapshot_internal
