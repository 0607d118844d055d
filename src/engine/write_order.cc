#include "src/engine/write_order.h"

#include <cerrno>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace uq::engine {

namespace {
// Queued frees above this many clusters trigger an internal flush.
constexpr uint64_t kFreeFlushThresholdClusters = 4096;
}  // namespace

WriteOrder::WriteOrder(MetaFile* meta, RefcountStore* refs, L2Map* l2, bool writethrough,
                       bool lazy_refcounts)
    : meta_(meta),
      refs_(refs),
      l2_(l2),
      writethrough_(writethrough),
      lazy_refcounts_(lazy_refcounts) {
  l2_->cache().set_writeback_hook([this]() { return L2WritebackHook(); });
}

Task<int> WriteOrder::L2WritebackHook() {
  // Write-through with a durable dirty bit: power loss rebuilds the
  // refcounts, so no fsync is needed. Refcounts are still written first, so
  // the file as a killed process leaves it never has an L2 entry whose
  // refcount is missing (`qemu-img check` without repair sees leaks only).
  if (writethrough_ && dirty_marked()) co_return co_await refs_->Flush();
  // Every L2 entry about to be written points at clusters whose refcount
  // increments and data writes happened before the copy was taken.
  int r = co_await refs_->Flush();
  if (r < 0) co_return r;
  co_return co_await meta_->Sync();
}

Task<int> WriteOrder::MarkDirty(bool always) {
  // Version 2 has no dirty bit: write-through keeps the hook's fsync there.
  const bool want = lazy_refcounts_ || ((writethrough_ || always) && meta_->version() >= 3);
  if (!want || dirty_marked()) co_return 0;
  co_await meta_->lock().Lock();
  cache::MutexGuard guard(&meta_->lock());
  if (dirty_marked()) co_return 0;
  int r = co_await meta_->SetIncompatibleFeature(format::kIncompatDirty, true);
  if (r >= 0) r = co_await meta_->Sync();
  if (r < 0) co_return r;
  dirty_marked_ = true;
  co_return 0;
}

Task<int> WriteOrder::FlushLocked() {
  if (meta_->read_only()) co_return 0;
  // Fail-stop: after a failed fsync nothing may report durability again.
  if (meta_->failed()) co_return -EIO;
  // Frees queued so far belong to L2/L1 changes already in the caches; they
  // are applied once those changes are durable.
  std::vector<RefcountStore::PendingFree> frees = refs_->TakePendingFrees();
  int r = 0;
  // Write-through skips the hook's fsync; keep data durable before L2
  // slices anyway.
  if (writethrough_ && dirty_marked() && l2_->cache().has_dirty()) r = co_await meta_->Sync();
  if (r >= 0) r = co_await l2_->cache().Flush();  // hook: refcounts + fsync first
  if (r >= 0) r = co_await refs_->Flush();
  if (r >= 0) r = co_await meta_->Sync();
  if (r >= 0 && l2_->l1_dirty()) {
    r = co_await l2_->WriteL1();
    if (r >= 0) r = co_await meta_->Sync();
  }
  if (r < 0) {
    refs_->RestorePendingFrees(std::move(frees));
    co_return r;
  }
  co_return co_await refs_->ApplyFrees(std::move(frees));
}

Task<int> WriteOrder::Flush() {
  if (meta_->read_only()) co_return 0;
  co_await meta_->lock().Lock();
  cache::MutexGuard guard(&meta_->lock());
  co_return co_await FlushLocked();
}

void WriteOrder::NoteDependency(const Slot& slot) {
  if (!writethrough_) return;
  if ((slot.ref.valid() && slot.ref.dirty()) || l2_->l1_dirty() || l2_->l1_writing()) {
    meta_->NoteChange();
  }
}

Task<int> WriteOrder::WriteThrough(uint64_t since_generation) {
  if (!writethrough_ || meta_->generation() == since_generation) co_return 0;
  // No metadata lock for the slices, so allocations go on while they are
  // written and concurrent requests batch: SliceCache::Flush returns only
  // once every change made before it reached the file, whoever writes it,
  // and the L2 hook writes refcount blocks after the L2 copies are taken, so
  // every refcount an L2 slice depends on is written before that slice.
  int r = co_await refs_->Flush();
  if (r >= 0) r = co_await l2_->cache().Flush();
  if (r < 0) co_return r;
  if (l2_->l1_dirty() || l2_->l1_writing()) {
    // The L1 table is written whole from a copy: one writer at a time (the
    // lock), so an older copy never lands after a newer one; waiting for the
    // lock also waits out a write already in flight.
    co_await meta_->lock().Lock();
    cache::MutexGuard guard(&meta_->lock());
    if (l2_->l1_dirty()) {
      // A new L2 table may have been allocated after our refcount flush:
      // its refcount goes first (and, without the dirty bit, durably).
      r = co_await refs_->Flush();
      if (r >= 0 && !dirty_marked()) r = co_await meta_->Sync();
      if (r >= 0) r = co_await l2_->WriteL1();
    }
  }
  co_return r;
}

Task<int> WriteOrder::MaybeFlushFrees() {
  if (refs_->pending_free_clusters() < kFreeFlushThresholdClusters) co_return 0;
  co_return co_await Flush();
}

Task<absl::Status> WriteOrder::Close() {
  co_await meta_->lock().Lock();
  cache::MutexGuard guard(&meta_->lock());
  if (meta_->failed()) {
    // Left as a crash would leave it: the dirty bit (if set) stays, and the
    // ordering rules kept what is on disk consistent up to the failure.
    co_return absl::DataLossError(
        absl::StrCat("close: the image failed earlier (", meta_->failure(),
                     "): writes since the last successful flush may be lost; the next writable "
                     "open repairs it"));
  }
  int r = co_await FlushLocked();
  if (r >= 0) r = co_await FlushLocked();
  if (r >= 0) co_await refs_->TrimReserve();
  if (r >= 0 && dirty_marked() && !meta_->corrupt()) {
    r = co_await meta_->SetIncompatibleFeature(format::kIncompatDirty, false);
    if (r >= 0) r = co_await meta_->Sync();
    if (r >= 0) dirty_marked_ = false;
  }
  if (r < 0) {
    co_return absl::DataLossError(absl::StrCat("close: flush failed: ", std::strerror(-r)));
  }
  co_return absl::OkStatus();
}

}  // namespace uq::engine
