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
  co_return co_await l2->Decode(out->slot, a, &out->entry);
}

}  // namespace uq::engine
