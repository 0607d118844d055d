#include "src/engine/read_path.h"

#include <algorithm>
#include <cerrno>

#include "src/io/iovec.h"
#include "src/io/join.h"

namespace uq::engine {

using format::ClusterType;
using format::L2Entry;

Task<int> ReadPath::ReadPiece(uint64_t g, uint64_t n, std::span<const iovec> iov) {
  const GuestAddress a = p_->geo.Locate(g);
  ClusterEntry ce;
  {
    int r = co_await p_->LockEntry(a, false, &ce);
    if (r < 0) co_return r;
  }
  ce.slot.ref.Reset();
  co_return co_await ReadEntry(a, n, iov, ce.entry);
}

Task<int> ReadPath::ReadRange(uint64_t offset_bytes, std::span<const iovec> iov) {
  LockedRange range;
  {
    int r = co_await p_->LockRange(offset_bytes, io::IovLength(iov), /*exclusive=*/false, &range);
    if (r < 0) co_return r;
  }
  io::Join join;
  auto data = [&](size_t i) {
    const ClusterEntry& c = range.clusters[i];
    return PlainData(p_->geo, c.entry, range.PieceOffset(i) & (p_->geo.cluster_bytes - 1),
                     range.PieceLength(i));
  };
  auto run = [&](size_t first, size_t count) {
    const uint64_t begin = range.PieceOffset(first);
    const uint64_t end =
        range.PieceOffset(first + count - 1) + range.PieceLength(first + count - 1);
    const uint64_t host =
        range.clusters[first].entry.host_offset + (begin & (p_->geo.cluster_bytes - 1));
    io::IovVec slice;
    io::IovSlice(iov, begin - offset_bytes, end - begin, &slice);
    join.Start(ReadData(host, std::move(slice)));
  };
  auto other = [&](size_t i) {
    const uint64_t g = range.PieceOffset(i);
    io::IovVec slice;
    io::IovSlice(iov, g - offset_bytes, range.PieceLength(i), &slice);
    join.Start(ReadEntryOwned(p_->geo.Locate(g), range.PieceLength(i), std::move(slice),
                              range.clusters[i].entry));
  };
  p_->ForEachDataRun(range, data, run, other);
  co_return co_await join.Wait();
}

Task<int> ReadPath::ReadData(uint64_t host_offset_bytes, io::IovVec iov) {
  int64_t r = co_await p_->meta->data_file().ReadV(host_offset_bytes, iov);
  co_return r < 0 ? static_cast<int>(r) : 0;
}

Task<int> ReadPath::ReadEntryOwned(GuestAddress a, uint64_t n, io::IovVec iov, L2Entry e) {
  co_return co_await ReadEntry(a, n, iov, e);
}

Task<int> ReadPath::ReadEntry(const GuestAddress& a, uint64_t n, std::span<const iovec> iov,
                              const L2Entry& e) {
  const uint64_t g = a.offset_bytes;
  if (e.type == ClusterType::kCompressed) {
    auto buf = p_->cluster_pool.Acquire();
    int r = co_await compressed_->Read(e, buf.span());
    if (r < 0) co_return r;
    io::CopyToIov(iov, buf.data() + a.in_cluster_bytes);
    co_return 0;
  }
  // Runs of subclusters with the same source, one I/O each.
  const uint64_t sub = p_->geo.subcluster_bytes;
  uint64_t pos = 0;
  while (pos < n) {
    const Source src = p_->l2->Classify(e, p_->geo.Subcluster(a.in_cluster_bytes + pos));
    uint64_t end = pos;
    while (end < n && p_->l2->Classify(e, p_->geo.Subcluster(a.in_cluster_bytes + end)) == src) {
      end = std::min(n, ((a.in_cluster_bytes + end) / sub + 1) * sub - a.in_cluster_bytes);
    }
    io::IovVec piece;
    io::IovSlice(iov, pos, end - pos, &piece);
    int r = co_await ReadFrom(src, e, g + pos, end - pos, piece);
    if (r < 0) co_return r;
    pos = end;
  }
  co_return 0;
}

Task<int> ReadPath::ReadFrom(Source src, const L2Entry& e, uint64_t g, uint64_t n,
                             std::span<const iovec> iov) {
  switch (src) {
    case Source::kZero:
      io::ZeroIov(iov);
      co_return 0;
    case Source::kBacking:
      co_return co_await ReadBacking(g, n, iov);
    case Source::kData: {
      int64_t r = co_await p_->meta->data_file().ReadV(
          e.host_offset + (g & (p_->geo.cluster_bytes - 1)), iov);
      co_return r < 0 ? static_cast<int>(r) : 0;
    }
    case Source::kCompressed:
      break;
  }
  co_return -EIO;
}

Task<int> ReadPath::ReadBacking(uint64_t g, uint64_t n, std::span<const iovec> iov) {
  if (!p_->backing || g >= p_->backing_size_bytes) {
    io::ZeroIov(iov);
    co_return 0;
  }
  // The backing file may end inside the range: zeros after its end.
  const uint64_t m = std::min(n, p_->backing_size_bytes - g);
  io::IovVec head;
  io::IovSlice(iov, 0, m, &head);
  int r = co_await p_->backing->Read(g, head);
  if (r < 0) co_return r;
  if (m < n) {
    io::IovVec tail;
    io::IovSlice(iov, m, n - m, &tail);
    io::ZeroIov(tail);
  }
  co_return 0;
}

Task<int> ReadPath::FillFrom(Source src, const L2Entry& e, uint64_t cluster_offset, uint64_t begin,
                             uint64_t end, std::span<std::byte> cluster) {
  if (begin >= end) co_return 0;
  iovec v{cluster.data() + begin, end - begin};
  co_return co_await ReadFrom(src, e, cluster_offset + begin, end - begin,
                              std::span<const iovec>(&v, 1));
}

Task<int> ReadPath::ReadsZero(uint64_t g, uint64_t n, bool* zero) {
  *zero = false;
  const GuestAddress a = p_->geo.Locate(g);
  ClusterEntry ce;
  {
    int r = co_await p_->LockEntry(a, false, &ce);
    if (r < 0) co_return r;
  }
  const L2Entry& e = ce.entry;
  p_->order->NoteDependency(ce.slot);  // a caller may skip a write on the answer
  // Every subcluster the range touches, partly covered ones included:
  // stepping from the range's start by a subcluster would skip the last one
  // when the start is not subcluster aligned.
  const uint64_t sub = p_->geo.subcluster_bytes;
  const uint64_t first_sc = a.in_cluster_bytes / sub;
  const uint64_t end_sc = (a.in_cluster_bytes + n + sub - 1) / sub;
  for (uint64_t sc = first_sc; sc < end_sc; ++sc) {
    const Source s = p_->l2->Classify(e, static_cast<uint32_t>(sc));
    // A backing subcluster reads zero only if the backing file ends before
    // the part of it this range covers.
    const uint64_t from = a.cluster_offset_bytes() + std::max(a.in_cluster_bytes, sc * sub);
    const bool z = s == Source::kZero ||
                   (s == Source::kBacking && (!p_->backing || from >= p_->backing_size_bytes));
    if (!z) co_return 0;
  }
  *zero = true;
  co_return 0;
}

}  // namespace uq::engine
