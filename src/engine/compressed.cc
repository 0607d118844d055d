#include "src/engine/compressed.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "src/engine/codec.h"

namespace uq::engine {

using format::ClusterType;
using format::L2Entry;

Task<int> CompressedPath::Read(const L2Entry& e, std::span<std::byte> cluster) {
  auto in = p_->compressed_pool.Acquire();
  std::span<std::byte> src = in.span().subspan(0, e.compressed_length);
  // The tail of the last sector may belong to a compressed cluster being
  // stored now (see ImageParts::compressed_sector_locks).
  const uint64_t last_sector = (e.compressed_offset + src.size() - 1) >> 9;
  co_await p_->compressed_sector_locks.Lock(last_sector, false);
  int64_t r;
  {
    cache::KeyedLockGuard sector(&p_->compressed_sector_locks, last_sector, false);
    r = co_await p_->meta->file().Read(e.compressed_offset, src);
  }
  if (r < 0) co_return static_cast<int>(r);
  int d = DecompressCluster(p_->meta->header().compression_type, src, cluster);
  if (d < 0) {
    co_return co_await p_->meta->MarkCorrupt(
        absl::StrCat("compressed cluster at host offset ", e.compressed_offset,
                     " does not decompress to ", p_->geo.cluster_bytes, " bytes"));
  }
  co_return 0;
}

Task<int> CompressedPath::Store(uint64_t g, std::span<const std::byte> buffer,
                                uint64_t compressed_bytes) {
  ClusterEntry ce;
  {
    int r = co_await p_->LockEntry(p_->geo.Locate(g), true, &ce);
    if (r < 0) co_return r;
  }
  // Packed right after the previous compressed cluster, as QEMU packs them.
  int64_t host;
  {
    co_await p_->meta->lock().Lock();
    cache::MutexGuard guard(&p_->meta->lock());
    host = co_await p_->refs->AllocateBytes(compressed_bytes);
  }
  if (host < 0) co_return static_cast<int>(host);
  // Only this cluster's own bytes: the ones after them may already hold the
  // next compressed cluster. The range is free, unless refcounts lie.
  int64_t w = co_await p_->meta->CheckWrite(static_cast<uint64_t>(host), compressed_bytes);
  if (w >= 0) {
    // Reads of the compressed cluster before this one read to the end of the
    // sector this one starts in (see ImageParts::compressed_sector_locks).
    const uint64_t first_sector = static_cast<uint64_t>(host) >> 9;
    co_await p_->compressed_sector_locks.Lock(first_sector, true);
    cache::KeyedLockGuard sector(&p_->compressed_sector_locks, first_sector, true);
    w = co_await p_->meta->file().Write(static_cast<uint64_t>(host),
                                        buffer.first(compressed_bytes));
  }
  // Write-through lets the L2 entry reach the disk before an fsync; stale
  // bytes under a compressed entry would not decompress (corruption, not
  // just old data), so the compressed data is made durable first. The
  // frontend never issues compressed writes; tools write few.
  if (w >= 0 && p_->order->writethrough()) w = co_await p_->meta->Sync();
  if (w < 0) {
    co_await p_->meta->lock().Lock();
    cache::MutexGuard guard(&p_->meta->lock());
    co_await p_->refs->UnallocateBytes(static_cast<uint64_t>(host), compressed_bytes);
    co_return static_cast<int>(w);
  }
  L2Entry ne;
  ne.type = ClusterType::kCompressed;
  ne.compressed_offset = static_cast<uint64_t>(host);
  ne.compressed_length = compressed_bytes;
  const L2Entry old = ce.entry;
  p_->l2->Store(ce.slot, ne);
  p_->l2->QueueFree(old);  // after the entry that replaces it (see WritePath)
  co_return 0;
}

}  // namespace uq::engine
