// Qcow2Image: a qcow2 image served as a Device (docs/interop/qcow2.txt).
//
// Ownership: the image owns its file, its external data file and its backing
// Device (the whole chain below it). Open() through OpenImage (image.h).
//
// Request handling: every request is split at guest cluster boundaries and the
// pieces run one after another inside the request's coroutine. Each piece holds
// a lock on its guest cluster: shared for reads and for writes into an
// allocated, exclusively owned (COPIED) cluster; exclusive for anything that
// changes the cluster's L2 entry (allocation, COW, zeroing, discard). So two
// writes into one unallocated cluster allocate it once: the second waits and
// then finds it allocated. Allocation, refcount updates and the write-back
// sequence are serialised by one metadata mutex; the data I/O never holds it.
//
// Crash ordering (DESIGN.md): refcounts are incremented in the refcount cache
// before an L2 entry points at the cluster; data and COW are written before the
// L2 entry changes; the L2 cache's write-back hook flushes refcounts and
// fsyncs before any L2 slice reaches the disk; new L2 tables are written before
// the in-memory L1 changes and the L1 table is only written in Flush after the
// L2 slices are durable; refcount decrements of freed clusters are queued and
// applied only after the L2/L1 change that freed them is durable (in Flush),
// so a freed cluster is never reused before its last reference is gone on
// disk.
//
// metadata_writethrough (image.h): the dirty bit is made durable before the
// first change, then each modifying request writes (no fsync) the slices, and
// the L1 table, dirtied so far (or relied on: NoteMetadataDependency) before
// it completes; the slice writes hold no mutex, so concurrent requests batch
// (one write of a slice covers every change made before it). With the dirty
// bit durable the L2 hook skips its fsync (refcounts are rebuilt after power
// loss) but still writes refcount blocks before L2 slices, so a killed
// process leaves only leaks. What the dirty bit cannot repair keeps an fsync:
// a new L2 table before its L1 entry, file growth before an entry points past
// the old end, and data before an L2 entry whose cluster holds bytes the
// request did not write (COW, reused clusters, compressed data).
//
// Thread-safety: one event loop thread. All per-request state lives in the
// request coroutines; shared state is the caches, the locks and the
// allocator (see cache/slice_cache.h for what multi-queue needs).
#ifndef UQ_SRC_ENGINE_QCOW2_IMAGE_H_
#define UQ_SRC_ENGINE_QCOW2_IMAGE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "absl/status/statusor.h"
#include "cache/slice_cache.h"
#include "cache/wait_list.h"
#include "format/header.h"
#include "format/tables.h"
#include "src/engine/device.h"
#include "src/engine/image.h"
#include "src/io/block_file.h"

namespace uq::engine {

class Qcow2Image final : public Device {
 public:
  struct Stats {
    uint64_t clusters_allocated = 0;
    uint64_t cow_writes = 0;
    uint64_t clusters_freed = 0;
  };

  // Opens `file` (validated header; repairs refcounts of a dirty image before a
  // writable open; refuses a writable open of a corrupt image). Backing and
  // data files come from options.opener. Writable unless options.read_only,
  // options.snapshot is set, or the file is read-only.
  static Task<absl::StatusOr<std::unique_ptr<Qcow2Image>>> Open(std::unique_ptr<io::BlockFile> file,
                                                                const OpenOptions& options);

  ~Qcow2Image() override;

  uint64_t size_bytes() const override { return size_bytes_; }
  bool read_only() const override { return read_only_; }
  uint32_t granularity_bytes() const override { return static_cast<uint32_t>(cluster_bytes_); }
  Task<int> Read(uint64_t offset_bytes, std::span<const iovec> iov) override;
  Task<int> Write(uint64_t offset_bytes, std::span<const iovec> iov, bool fua) override;
  Task<int> Discard(uint64_t offset_bytes, uint64_t length_bytes) override;
  Task<int> WriteZeroes(uint64_t offset_bytes, uint64_t length_bytes, bool may_unmap) override;
  Task<int> Flush() override;
  Task<absl::Status> Close() override;

  // Writes one whole guest cluster compressed with the image's compression
  // type. REQUIRES: guest_offset_bytes cluster aligned; cluster.size() is the
  // cluster size, or less for the image's last partial cluster (zero padded).
  // Stores it uncompressed (a normal write) if compression does not shrink
  // it or the image has an external data file. Returns 0 or -errno.
  Task<int> WriteCompressed(uint64_t guest_offset_bytes, std::span<const std::byte> cluster);

  const format::Header& header() const { return header_; }
  uint64_t cluster_bytes() const { return cluster_bytes_; }
  bool corrupt() const { return corrupt_; }
  const Stats& stats() const { return stats_; }
  const cache::SliceCache& l2_cache() const { return *l2_cache_; }
  const cache::SliceCache& refcount_cache() const { return *refcount_cache_; }

 private:
  struct Slot;
  struct Chunk;
  class BufferPool;
  enum class Source : uint8_t { kData, kZero, kBacking, kCompressed };
  struct PendingFree {
    uint64_t cluster_index;
    uint64_t count;
  };

  Qcow2Image();

  io::BlockFile* data_file() { return data_file_ ? data_file_.get() : file_.get(); }
  bool external_data() const { return data_file_ != nullptr; }

  // --- metadata access -----------------------------------------------------
  Task<int> GetSlot(uint64_t guest_cluster, bool for_write, Slot* slot);
  Task<int> PrepareL2Table(uint64_t l1_index);
  Task<int> DecodeSlot(const Slot& slot, uint64_t guest_cluster, format::L2Entry* out);
  void StoreSlot(Slot& slot, const format::L2Entry& e);
  Source Classify(const format::L2Entry& e, uint32_t subcluster) const;
  Task<int> Corrupt(std::string what);

  // --- refcounts and allocation (REQUIRES: meta_mutex_ held) ---------------
  Task<int> GetRefcount(uint64_t cluster_index, uint64_t* out);
  Task<int> AddRefcount(uint64_t cluster_index, int64_t delta, uint64_t* new_value);
  Task<int64_t> AllocClusters(uint64_t count);
  // Sets *placed_cluster to the cluster index of a newly placed refcount block
  // (UINT64_MAX if none was needed).
  Task<int> EnsureRefblock(uint64_t cluster_index, uint64_t* placed_cluster);
  Task<int> L2WritebackHook();
  Task<int> ReadsZero(uint64_t guest_offset_bytes, uint64_t length_bytes, bool* zero);
  Task<int> GrowRefcountTable(uint64_t min_entries);
  Task<int> FlushLocked();
  Task<int> ApplyFrees(std::vector<PendingFree> frees);
  Task<int> SyncFiles();
  // metadata_writethrough: L2 entries may become durable before the data they
  // expose, so a cluster allocated past the end of the file must not be: the
  // file is extended (ahead, in steps) and fsynced first. A durable entry then
  // points inside the file (at stale bytes if its data write was lost, which
  // an unflushed write may legitimately read as), never past its end, which
  // the refcount rebuild would reject as corruption.
  Task<int> GrowFileDurably(uint64_t end_bytes);
  Task<int> WriteHeader();
  Task<int> WriteL1();
  void QueueFree(const format::L2Entry& e);

  // --- data path -------------------------------------------------------------
  Task<int> ReadChunk(uint64_t guest_offset_bytes, uint64_t length_bytes,
                      std::span<const iovec> iov);
  Task<int> ReadFrom(Source src, const format::L2Entry& e, uint64_t guest_offset_bytes,
                     uint64_t length_bytes, std::span<const iovec> iov);
  Task<int> ReadBacking(uint64_t guest_offset_bytes, uint64_t length_bytes,
                        std::span<const iovec> iov);
  Task<int> ReadCompressed(const format::L2Entry& e, std::span<std::byte> cluster);
  Task<int> FillFrom(Source src, const format::L2Entry& e, uint64_t guest_cluster_offset,
                     uint64_t begin, uint64_t end, std::span<std::byte> cluster);
  // iov == empty span means "zeros".
  Task<int> WriteChunk(uint64_t guest_offset_bytes, uint64_t length_bytes,
                       std::span<const iovec> iov);
  Task<int> ZeroChunk(uint64_t guest_offset_bytes, uint64_t length_bytes, bool may_unmap);
  // `discard`: QEMU's discard semantics (whole clusters only, none on a
  // version 2 image with a backing file) instead of write-zeroes'.
  Task<int> ZeroRange(uint64_t offset_bytes, uint64_t length_bytes, bool may_unmap, bool discard);
  // Runs the per-cluster pieces of a read or write concurrently (each holds
  // at most one cluster lock at a time, so they cannot deadlock).
  struct Fanout;
  Task<int> ForEachChunk(uint64_t offset_bytes, std::span<const iovec> iov, bool write);
  Task<void> RunPiece(bool write, uint64_t guest_offset_bytes, uint64_t length_bytes,
                      absl::InlinedVector<iovec, 8> iov, Fanout* fanout);
  Task<int> MarkDirtyOnce();
  // metadata_writethrough: writes every dirty metadata slice / the L1 table
  // to the file (no fsync) if metadata changed since `since_gen`.
  Task<int> WriteThroughMetadata(uint64_t since_gen);
  // metadata_writethrough: a request that relies on an L2 entry (or L1 entry)
  // another, still running request changed but has not yet written must not
  // complete before it is written either (e.g. two writes into one new
  // cluster: the second takes the fast path): bumps meta_gen_ so the
  // request's write-through pass runs.
  void NoteMetadataDependency(const Slot& slot);
  Task<int> MaybeFlushFrees();
  int CheckRequest(uint64_t offset_bytes, uint64_t length_bytes, bool write) const;

  std::unique_ptr<io::BlockFile> file_;
  std::unique_ptr<io::BlockFile> data_file_;
  std::unique_ptr<Device> backing_;
  uint64_t backing_size_bytes_ = 0;
  format::Header header_;
  bool read_only_ = true;
  bool corrupt_ = false;
  bool data_file_raw_ = false;
  bool lazy_refcounts_ = false;
  bool dirty_marked_ = false;
  bool metadata_writethrough_ = false;
  // Bumped by every in-memory metadata change (L2 entry, refcount, L1) and by
  // NoteMetadataDependency, so a request that changed nothing and relied on
  // nothing unwritten skips the write-through pass.
  uint64_t meta_gen_ = 0;
  uint32_t l1_writes_in_flight_ = 0;
  bool closed_ = false;
  uint64_t size_bytes_ = 0;

  uint32_t cluster_bits_ = 16;
  uint64_t cluster_bytes_ = 0;
  bool extended_l2_ = false;
  uint32_t l2_bits_ = 0;  // log2(entries per L2 table)
  uint32_t l2_entry_bytes_ = 8;
  uint64_t subcluster_bytes_ = 0;  // cluster_bytes_ / 32 with extended L2, else cluster
  uint32_t refcount_order_ = 4;
  uint32_t refblock_bits_ = 0;        // log2(refcounts per refcount block)
  uint32_t refcount_slice_bits_ = 0;  // log2(refcounts per refcount cache slice)

  std::vector<uint64_t> l1_;  // raw entries
  uint64_t l1_offset_bytes_ = 0;
  bool l1_dirty_ = false;
  std::vector<uint64_t> reftable_;  // refcount block offsets (0 = none)

  std::unique_ptr<cache::SliceCache> l2_cache_;
  std::unique_ptr<cache::SliceCache> refcount_cache_;
  cache::AsyncMutex meta_mutex_;
  cache::KeyedRwLock cluster_locks_;
  std::vector<PendingFree> pending_frees_;
  uint64_t pending_free_clusters_ = 0;
  uint64_t free_hint_ = 0;          // no free cluster below this index
  uint64_t host_end_clusters_ = 0;  // clusters in use end below this index
  std::unique_ptr<BufferPool> cluster_pool_;
  std::unique_ptr<BufferPool> compressed_pool_;
  std::vector<std::byte> zeros_;  // one cluster of zeros, never written
  Stats stats_;
};

}  // namespace uq::engine

#endif  // UQ_SRC_ENGINE_QCOW2_IMAGE_H_
