#include "src/engine/qcow2_image.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "src/engine/codec.h"
#include "src/io/iovec.h"
#include "src/io/join.h"

namespace uq::engine {

Qcow2Image::Qcow2Image(std::unique_ptr<ImageParts> parts)
    : p_(std::move(parts)),
      compressed_(p_.get()),
      read_(p_.get(), &compressed_),
      write_(p_.get(), &read_, &compressed_),
      zero_(p_.get(), &read_, &write_) {}

Qcow2Image::~Qcow2Image() = default;

Qcow2Image::Stats Qcow2Image::stats() const {
  Stats s;
  s.clusters_allocated = p_->refs->stats().clusters_allocated;
  s.clusters_freed = p_->refs->stats().clusters_freed;
  s.cow_writes = p_->cow_writes.load(std::memory_order_relaxed);
  return s;
}

int Qcow2Image::CheckRequest(uint64_t offset_bytes, uint64_t length_bytes, bool write) const {
  if (closed_) return -EIO;
  if (write && p_->meta->read_only()) return -EROFS;
  if (write && (p_->meta->corrupt() || p_->meta->failed())) return -EIO;
  if ((offset_bytes | length_bytes) & 511) return -EINVAL;
  if (offset_bytes > p_->size_bytes || length_bytes > p_->size_bytes - offset_bytes) {
    return -EINVAL;
  }
  return 0;
}

Task<absl::Status> Qcow2Image::Close() {
  if (closed_.exchange(true)) co_return absl::OkStatus();
  absl::Status status;
  if (!p_->meta->read_only()) status = co_await p_->order->Close();
  if (p_->backing) {
    absl::Status b = co_await p_->backing->Close();
    if (status.ok()) status = b;
  }
  co_return status;
}

Task<int> Qcow2Image::Flush() { co_return co_await p_->order->Flush(); }

// ---------------------------------------------------------------------------
// Fan-out of a request into per-cluster pieces

Task<int> Qcow2Image::RunOnePiece(bool write, uint64_t g, uint64_t n, std::span<const iovec> iov) {
  if (write) co_return co_await write_.WritePiece(g, n, iov);
  co_return co_await read_.ReadPiece(g, n, iov);
}

Task<int> Qcow2Image::RunPiece(bool write, uint64_t g, uint64_t n, io::IovVec iov) {
  co_return co_await RunOnePiece(write, g, n, iov);
}

Task<int> Qcow2Image::ForEachPiece(uint64_t offset_bytes, std::span<const iovec> iov, bool write,
                                   AllocationNotice* allocated) {
  const uint64_t cluster = p_->geo.cluster_bytes;
  const uint64_t len = io::IovLength(iov);
  const uint64_t first = std::min(len, cluster - (offset_bytes & (cluster - 1)));
  // One cluster (the common small request): no fan-out.
  if (first == len) co_return co_await RunOnePiece(write, offset_bytes, len, iov);
  // Several: contiguous data clusters with one I/O where the whole request
  // maps to data (reads), or overwrites data we own alone (writes).
  if (!write) co_return co_await read_.ReadRange(offset_bytes, iov);
  {
    bool done = false;
    int r = co_await write_.TryOverwriteRange(offset_bytes, iov, &done);
    if (done) co_return r;
    r = co_await write_.TryAllocateRange(offset_bytes, iov, &done, allocated);
    if (done) co_return r;
  }
  io::Join join;
  uint64_t pos = 0;
  while (pos < len) {
    const uint64_t g = offset_bytes + pos;
    const uint64_t n = std::min(len - pos, cluster - (g & (cluster - 1)));
    io::IovVec sub;
    io::IovSlice(iov, pos, n, &sub);
    join.Start(RunPiece(write, g, n, std::move(sub)));
    pos += n;
  }
  co_return co_await join.Wait();
}

// ---------------------------------------------------------------------------
// Requests

Task<int> Qcow2Image::Read(uint64_t offset_bytes, std::span<const iovec> iov) {
  if (int r = CheckRequest(offset_bytes, io::IovLength(iov), false); r < 0) co_return r;
  co_return co_await ForEachPiece(offset_bytes, iov, false);
}

Task<int> Qcow2Image::FinishWrite(uint64_t generation) {
  int r = co_await p_->order->WriteThrough(generation);
  if (r < 0) co_return r;
  co_return co_await p_->order->MaybeFlushFrees();
}

Task<int> Qcow2Image::Write(uint64_t offset_bytes, std::span<const iovec> iov, bool fua) {
  return WriteImpl(offset_bytes, iov, fua, nullptr);
}

Task<int> Qcow2Image::WriteTelling(uint64_t offset_bytes, std::span<const iovec> iov, bool fua,
                                   AllocationNotice& allocated) {
  const int r = co_await WriteImpl(offset_bytes, iov, fua, &allocated);
  allocated.Tell();
  co_return r;
}

Task<int> Qcow2Image::WriteImpl(uint64_t offset_bytes, std::span<const iovec> iov, bool fua,
                                AllocationNotice* allocated) {
  if (int r = CheckRequest(offset_bytes, io::IovLength(iov), true); r < 0) co_return r;
  {
    int d = co_await p_->order->MarkDirty();
    if (d < 0) co_return d;
  }
  const uint64_t generation = p_->meta->generation();
  {
    int r = co_await ForEachPiece(offset_bytes, iov, true, allocated);
    if (r < 0) co_return r;
  }
  if (fua) co_return co_await p_->order->Flush();
  co_return co_await FinishWrite(generation);
}

Task<int> Qcow2Image::ZeroRequest(uint64_t offset_bytes, uint64_t length_bytes, bool may_unmap,
                                  bool discard) {
  if (int r = CheckRequest(offset_bytes, length_bytes, true); r < 0) co_return r;
  {
    int d = co_await p_->order->MarkDirty();
    if (d < 0) co_return d;
  }
  const uint64_t generation = p_->meta->generation();
  {
    int r = co_await zero_.Zero(offset_bytes, length_bytes, may_unmap, discard);
    if (r < 0) co_return r;
  }
  co_return co_await FinishWrite(generation);
}

Task<int> Qcow2Image::Discard(uint64_t offset_bytes, uint64_t length_bytes) {
  co_return co_await ZeroRequest(offset_bytes, length_bytes, true, true);
}

Task<int> Qcow2Image::MakeEmpty() {
  const uint64_t size = p_->size_bytes;
  if (int r = CheckRequest(0, size, true); r < 0) co_return r;
  {
    int d = co_await p_->order->MarkDirty();
    if (d < 0) co_return d;
  }
  const uint64_t generation = p_->meta->generation();
  {
    int r = co_await zero_.Unallocate(0, size);
    if (r < 0) co_return r;
  }
  co_return co_await FinishWrite(generation);
}

Task<int> Qcow2Image::WriteZeroes(uint64_t offset_bytes, uint64_t length_bytes, bool may_unmap) {
  co_return co_await ZeroRequest(offset_bytes, length_bytes, may_unmap, false);
}

Task<int> Qcow2Image::WriteCompressed(uint64_t g, std::span<const std::byte> cluster) {
  const uint64_t cluster_bytes = p_->geo.cluster_bytes;
  if (cluster.empty() || cluster.size() > cluster_bytes) co_return -EINVAL;
  auto in = p_->cluster_pool.Acquire();
  std::memcpy(in.data(), cluster.data(), cluster.size());
  std::memset(in.data() + cluster.size(), 0, cluster_bytes - cluster.size());
  auto out = p_->compressed_pool.Acquire();
  const int64_t n = CompressForWrite(in.span(), out.span());
  if (n < 0) co_return static_cast<int>(n);
  co_return co_await WriteCompressedBytes(g, cluster, out.span().first(static_cast<size_t>(n)));
}

int64_t Qcow2Image::CompressForWrite(std::span<const std::byte> cluster,
                                     std::span<std::byte> out) const {
  const uint64_t cluster_bytes = p_->geo.cluster_bytes;
  if (cluster.size() != cluster_bytes || out.size() < cluster_bytes) return -EINVAL;
  // An external data file holds clusters uncompressed.
  if (p_->meta->external_data()) return 0;
  // 0 (no gain) unless it fits in less than a cluster.
  return CompressCluster(p_->meta->header().compression_type, cluster,
                         out.first(cluster_bytes - 1));
}

Task<int> Qcow2Image::WriteCompressedBytes(uint64_t g, std::span<const std::byte> cluster,
                                           std::span<const std::byte> compressed) {
  const uint64_t cluster_bytes = p_->geo.cluster_bytes;
  const uint64_t len = cluster.size();
  if (!p_->geo.ClusterAligned(g)) co_return -EINVAL;
  if (len == 0 || len > cluster_bytes) co_return -EINVAL;
  if (len < cluster_bytes && g + len != p_->size_bytes) co_return -EINVAL;
  if (compressed.size() >= cluster_bytes) co_return -EINVAL;
  const uint64_t sectors_bytes = (len + 511) / 512 * 512;
  if (int r = CheckRequest(g, sectors_bytes, true); r < 0) co_return r;
  if (compressed.empty()) {
    // Stored as a normal cluster, zero padded to whole sectors.
    auto in = p_->cluster_pool.Acquire();
    std::memcpy(in.data(), cluster.data(), len);
    std::memset(in.data() + len, 0, sectors_bytes - len);
    iovec v{in.data(), sectors_bytes};
    co_return co_await Write(g, std::span<const iovec>(&v, 1), false);
  }
  {
    int d = co_await p_->order->MarkDirty();
    if (d < 0) co_return d;
  }
  const uint64_t generation = p_->meta->generation();
  {
    int r = co_await compressed_.Store(g, compressed, compressed.size());
    if (r < 0) co_return r;
  }
  co_return co_await p_->order->WriteThrough(generation);
}

}  // namespace uq::engine
