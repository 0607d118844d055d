#include "src/engine/image_parts.h"

namespace uq::engine {

Task<int> ImageParts::LockEntry(const GuestAddress& a, bool exclusive, ClusterEntry* out) {
  co_await cluster_locks.Lock(a.cluster, exclusive);
  out->lock.Adopt(&cluster_locks, a.cluster, exclusive);
  int r;
  if (exclusive) {
    r = co_await l2->FindForWrite(a, &out->slot);
  } else {
    r = co_await l2->Find(a, &out->slot);
  }
  if (r < 0) co_return r;
  const RawL2Entry raw = l2->Raw(out->slot);
  if (out->decoded && raw == out->raw) co_return 0;
  r = co_await l2->Decode(out->slot, a, &out->entry);
  if (r < 0) co_return r;
  out->decoded = true;
  out->raw = raw;
  co_return 0;
}

Task<int> ImageParts::LockRange(uint64_t offset_bytes, uint64_t length_bytes, bool exclusive,
                                LockedRange* out) {
  out->offset_bytes = offset_bytes;
  out->length_bytes = length_bytes;
  out->cluster_bytes = geo.cluster_bytes;
  const uint64_t first = offset_bytes >> geo.cluster_bits;
  const uint64_t last = (offset_bytes + length_bytes - 1) >> geo.cluster_bits;
  out->clusters.resize(last - first + 1);
  for (size_t i = 0; i < out->clusters.size(); ++i) {
    int r = co_await LockEntry(geo.Locate(out->PieceOffset(i)), exclusive, &out->clusters[i]);
    if (r < 0) co_return r;
  }
  co_return 0;
}

bool PlainData(const Geometry& geo, const format::L2Entry& e, uint64_t in_cluster_bytes,
               uint64_t n) {
  if (e.type != format::ClusterType::kNormal) return false;
  if (!geo.extended_l2) return true;
  const uint32_t mask =
      SubclusterMask(geo.Subcluster(in_cluster_bytes),
                     geo.Subcluster(in_cluster_bytes + n + geo.subcluster_bytes - 1));
  return (e.alloc_bitmap & mask) == mask;
}

}  // namespace uq::engine
