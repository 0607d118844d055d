// WriteOrder: when metadata reaches the disk, and in which order (DESIGN.md,
// "Ordering rules"): the flush sequence, metadata write-through, the dirty
// bit and the L2 cache's write-back hook.
//
// Flush: data fdatasync -> dirty refcount blocks (by the L2 hook) -> fsync ->
// dirty L2 slices -> refcount blocks dirtied meanwhile -> fsync -> L1 table ->
// fsync; then the frees queued before the flush are applied (their L2/L1
// change is durable now).
//
// Metadata write-through (OpenOptions.metadata_writethrough): the dirty bit is
// made durable before the first change; each modifying request then writes
// (without fsync) the refcount and L2 slices and the L1 table dirtied so far,
// or relied on (NoteDependency), before it completes, so a killed process
// loses no completed request. The slice writes hold no lock, so concurrent
// requests batch (one write of a slice covers every change made before it).
// With the dirty bit durable the L2 hook skips its fsync (refcounts are
// rebuilt after power loss) but still writes refcount blocks before L2
// slices, so a killed process leaves only leaks. What the dirty bit cannot
// repair keeps an fsync (the allocator, L2Map and the write path say where).
//
// Lazy refcounts (compat bit): the dirty bit is set before the first write,
// as QEMU does, and cleared on a clean close.
//
// Thread-safety: thread-safe. Flush, MarkDirty and WriteThrough take
// MetaFile::lock() where they need it; FlushLocked REQUIRES it. A FLUSH on
// any queue covers writes completed on every queue: fdatasync is per file,
// not per descriptor.
#ifndef UQ_SRC_ENGINE_WRITE_ORDER_H_
#define UQ_SRC_ENGINE_WRITE_ORDER_H_

#include <atomic>
#include <cstdint>

#include "absl/status/status.h"
#include "src/engine/l2_map.h"
#include "src/engine/meta_file.h"
#include "src/engine/refcounts.h"
#include "src/io/task.h"

namespace uq::engine {

class WriteOrder {
 public:
  // Installs itself as the L2 cache's write-back hook.
  WriteOrder(MetaFile* meta, RefcountStore* refs, L2Map* l2, bool writethrough,
             bool lazy_refcounts);
  WriteOrder(const WriteOrder&) = delete;
  WriteOrder& operator=(const WriteOrder&) = delete;

  bool writethrough() const { return writethrough_; }
  // The dirty bit is durable: refcounts are rebuilt after a crash.
  bool dirty_marked() const { return dirty_marked_.load(std::memory_order_acquire); }

  // Makes the dirty bit durable before the first change, when the image
  // needs it (lazy refcounts, or write-through on a version 3 image), or
  // always on a version 3 image with `always` (snapshot operations, whose
  // refcount and COPIED flag changes cannot reach the disk together).
  Task<int> MarkDirty(bool always = false);
  // Every write completed before the call is durable when it returns.
  Task<int> Flush();
  Task<int> FlushLocked();
  // Write-through: writes the metadata changed since `since_generation`
  // (MetaFile::generation() when the request started). No-op otherwise.
  Task<int> WriteThrough(uint64_t since_generation);
  // Write-through: a request that relies on an entry another request changed
  // but has not written yet (e.g. the second of two writes into one new
  // cluster takes the fast path) must not complete before it is written.
  void NoteDependency(const Slot& slot);
  // Flushes when enough frees are queued, so freed space becomes reusable
  // even if the guest never flushes.
  Task<int> MaybeFlushFrees();
  // Flushes (twice: applying frees dirties refcounts) and clears the dirty
  // bit. No request may be in flight.
  Task<absl::Status> Close();

 private:
  Task<int> L2WritebackHook();

  MetaFile* meta_;
  RefcountStore* refs_;
  L2Map* l2_;
  bool writethrough_;
  bool lazy_refcounts_;
  std::atomic<bool> dirty_marked_{false};
};

}  // namespace uq::engine

#endif  // UQ_SRC_ENGINE_WRITE_ORDER_H_
