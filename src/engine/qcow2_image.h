// Qcow2Image: a qcow2 image served as a Device (docs/interop/qcow2.txt); a
// thin facade over the parts in ImageParts and the request paths.
//
// The parts, each with its own header and contract:
//   MetaFile       the files and the header on disk, sync, corrupt marking;
//                  the metadata lock and the change generation
//   RefcountStore  refcount table and block cache, the allocator, frees
//   L2Map          L1 table, L2 slice cache, entry lookup/decode/store,
//                  L2 table creation
//   WriteOrder     flush sequence, metadata write-through, dirty bit
//   ReadPath, WritePath, CompressedPath, ZeroPath   the request paths
//
// Requests are checked here, split at guest cluster boundaries, and the
// pieces run concurrently (each holds at most one cluster lock at a time, so
// they cannot deadlock); then write-through and the deferred-free flush run
// once per request.
//
// Ownership: the image owns its parts, files and the backing chain below it.
//
// Thread-safety: thread-safe. The N queue threads of one attach share one
// image (engine::ShareDevice): one L2 and refcount cache, one allocator, one
// dirty bit, one backing chain; each thread's I/O goes to its own ring and
// descriptors (io::PerLoopFile). Serialisation is by locks, not by a
// metadata owner thread: reads and overwrites of allocated clusters whose
// COPIED flag is set take only their guest cluster's lock (sharded) and the
// slice cache's shard and slice locks, and run wholly on the calling thread;
// allocation, refcount changes, L2 table creation and metadata write-back
// take MetaFile::lock() (one async mutex per image), header field writes the
// header lock inside it. Order: cluster lock -> metadata lock -> header lock.
// Locks rather than an owner thread because the slow path is rare after the
// first writes to a cluster and short when it happens (a cached refcount
// update), so a hop to another thread and back would cost more than the
// occasional wait; and a waiter is resumed on its own queue's thread
// (io::ResumeOn through the waiter's EventLoop eventfd), so its I/O stays on
// its own ring.
#ifndef UQ_SRC_ENGINE_QCOW2_IMAGE_H_
#define UQ_SRC_ENGINE_QCOW2_IMAGE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "absl/status/statusor.h"
#include "cache/slice_cache.h"
#include "format/header.h"
#include "src/engine/compressed.h"
#include "src/engine/device.h"
#include "src/engine/image.h"
#include "src/engine/image_parts.h"
#include "src/engine/read_path.h"
#include "src/engine/write_path.h"
#include "src/engine/zero_path.h"
#include "src/io/block_file.h"
#include "src/io/iovec.h"

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
  // options.snapshot is set, or the file is read-only. (qcow2_open.cc)
  static Task<absl::StatusOr<std::unique_ptr<Qcow2Image>>> Open(std::unique_ptr<io::BlockFile> file,
                                                                const OpenOptions& options);

  ~Qcow2Image() override;

  uint64_t size_bytes() const override { return p_->size_bytes; }
  bool read_only() const override { return p_->meta->read_only(); }
  uint32_t granularity_bytes() const override {
    return static_cast<uint32_t>(p_->geo.cluster_bytes);
  }
  Task<int> Read(uint64_t offset_bytes, std::span<const iovec> iov) override;
  Task<int> Write(uint64_t offset_bytes, std::span<const iovec> iov, bool fua) override;
  // Tells `allocated` as soon as a write of whole unallocated clusters has
  // its host clusters (WritePath::TryAllocateRange); other writes tell on
  // completion.
  Task<int> WriteTelling(uint64_t offset_bytes, std::span<const iovec> iov, bool fua,
                         AllocationNotice& allocated) override;
  Task<int> Discard(uint64_t offset_bytes, uint64_t length_bytes) override;
  Task<int> WriteZeroes(uint64_t offset_bytes, uint64_t length_bytes, bool may_unmap) override;
  Task<int> Flush() override;
  Task<absl::Status> Close() override;

  bool supports_compressed_writes() const override { return true; }
  // Writes one whole guest cluster compressed with the image's compression
  // type. REQUIRES: guest_offset_bytes cluster aligned; cluster.size() is the
  // cluster size, or less for the image's last partial cluster (zero padded).
  // Stores it uncompressed (a normal write) if compression does not shrink
  // it or the image has an external data file. Returns 0 or -errno.
  Task<int> WriteCompressed(uint64_t guest_offset_bytes,
                            std::span<const std::byte> cluster) override;
  int64_t CompressForWrite(std::span<const std::byte> cluster,
                           std::span<std::byte> out) const override;
  Task<int> WriteCompressedBytes(uint64_t guest_offset_bytes, std::span<const std::byte> cluster,
                                 std::span<const std::byte> compressed) override;

  // Every cluster unallocated and its host cluster freed (QEMU's full
  // discard), whatever the version and backing file.
  Task<int> MakeEmpty() override;

  // engine/resize.h's ResizeImage.
  Task<absl::Status> Resize(uint64_t new_size_bytes, GrowPreallocation prealloc) override;

  const format::Header& header() const { return p_->meta->header(); }
  uint64_t cluster_bytes() const { return p_->geo.cluster_bytes; }
  bool corrupt() const { return p_->meta->corrupt(); }
  Stats stats() const;
  const cache::SliceCache& l2_cache() const { return p_->l2->cache(); }
  const cache::SliceCache& refcount_cache() const { return p_->refs->cache(); }
  // The parts themselves, for tests and benchmarks of one part.
  ImageParts& parts_for_testing() { return *p_; }

 private:
  // Resizing changes the parts' size and L1 table (src/engine/resize.h).
  friend Task<absl::Status> ResizeImage(Qcow2Image& image, uint64_t new_size_bytes,
                                        GrowPreallocation prealloc);
  // Snapshots change the L1 table and the refcounts (src/engine/snapshot.h).
  friend ImageParts& SnapshotParts(Qcow2Image& image);

  explicit Qcow2Image(std::unique_ptr<ImageParts> parts);

  int CheckRequest(uint64_t offset_bytes, uint64_t length_bytes, bool write) const;
  // Runs the per-cluster pieces of a read or write concurrently; a write
  // tells `allocated` (if not null) where TryAllocateRange does.
  Task<int> ForEachPiece(uint64_t offset_bytes, std::span<const iovec> iov, bool write,
                         AllocationNotice* allocated = nullptr);
  // Write and WriteTelling.
  Task<int> WriteImpl(uint64_t offset_bytes, std::span<const iovec> iov, bool fua,
                      AllocationNotice* allocated);
  Task<int> RunOnePiece(bool write, uint64_t g, uint64_t n, std::span<const iovec> iov);
  Task<int> RunPiece(bool write, uint64_t g, uint64_t n, io::IovVec iov);
  // The zeroing requests' common frame (check, dirty bit, write-through).
  Task<int> ZeroRequest(uint64_t offset_bytes, uint64_t length_bytes, bool may_unmap, bool discard);
  // What every modifying request does after its pieces.
  Task<int> FinishWrite(uint64_t generation);

  std::unique_ptr<ImageParts> p_;
  CompressedPath compressed_;
  ReadPath read_;
  WritePath write_;
  ZeroPath zero_;
  std::atomic<bool> closed_{false};
};

}  // namespace uq::engine

#endif  // UQ_SRC_ENGINE_QCOW2_IMAGE_H_
