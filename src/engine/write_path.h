// WritePath: guest writes, one piece (inside one guest cluster) at a time.
//
// A piece first tries the fast path: under the cluster's shared lock, an
// allocated cluster we own alone (COPIED, or any cluster of an external data
// file) whose touched subclusters are all allocated is overwritten in place;
// nothing in the metadata changes. Otherwise, under the exclusive lock, the
// piece picks its target cluster (the old one if we own it, the guest offset
// in an external data file, or a newly allocated one), copies what it does
// not overwrite (copy-on-write from the old cluster, a compressed cluster,
// zeros or the backing file), writes, and only then stores the new L2 entry.
//
// Ordering (DESIGN.md): COW and new data are written before the L2 entry that
// exposes them; a replaced cluster is freed at the next flush. With metadata
// write-through the new entry may reach the disk before an fsync, so the data
// is made durable first unless the cluster holds only bytes this request
// wrote, or it is fresh space that reads as zero after power loss anyway.
//
// Thread-safety: thread-safe (the queue threads of one image call it at once);
// see ImageParts for the locks a request takes and their order.
#ifndef UQ_SRC_ENGINE_WRITE_PATH_H_
#define UQ_SRC_ENGINE_WRITE_PATH_H_

#include <sys/uio.h>

#include <cstdint>
#include <span>

#include "format/tables.h"
#include "src/engine/compressed.h"
#include "src/engine/image_parts.h"
#include "src/engine/read_path.h"
#include "src/io/iovec.h"
#include "src/io/task.h"

namespace uq::engine {

class WritePath {
 public:
  WritePath(ImageParts* parts, ReadPath* read, CompressedPath* compressed)
      : p_(parts), read_(read), compressed_(compressed) {}

  // Writes [g, g + n), inside one guest cluster, from `iov` (n bytes), or
  // zeros if `iov` is empty.
  Task<int> WritePiece(uint64_t g, uint64_t n, std::span<const iovec> iov);

  // The fast path for a request spanning several clusters: if every piece
  // overwrites allocated data we own alone, writes physically contiguous
  // clusters with one I/O each and sets *done; otherwise changes nothing
  // (the caller writes piece by piece).
  Task<int> TryOverwriteRange(uint64_t offset_bytes, std::span<const iovec> iov, bool* done);

  // The allocating path for a request of whole clusters (standard L2, no
  // external data file): if no cluster of it has a host cluster yet
  // (unallocated or zero entries), allocates them in contiguous runs and
  // writes each run with one I/O before storing its entries, and sets *done;
  // otherwise changes nothing. Where the per-piece path writes one cluster
  // per I/O, this is what makes a large sequential write (convert, dd, a
  // guest's streaming write) one write per request. Tells `allocated` (if
  // not null) once the last run has its host clusters.
  Task<int> TryAllocateRange(uint64_t offset_bytes, std::span<const iovec> iov, bool* done,
                             AllocationNotice* allocated = nullptr);

 private:
  // Where the piece's cluster goes.
  struct Target {
    uint64_t host = 0;       // host (or data file) offset of the cluster
    bool in_place = false;   // the old cluster, owned by us alone
    bool allocated = false;  // new from the allocator: given back on failure
    bool fresh = false;      // past every cluster ever used: zero after power loss too
  };
  // What gets written: bytes [begin, end) of the cluster, the request's in
  // the middle, copied bytes around them; and the entry that then maps it.
  struct Cow {
    uint64_t begin = 0;
    uint64_t end = 0;
    // The rest of the cluster must read as zero and may not: zero the whole
    // cluster (fallocate) before writing [begin, end).
    bool zero_first = false;
    format::L2Entry entry;
  };

  // The fast path. Sets *done if it handled the piece (result in the
  // return); otherwise *ce holds the entry it saw, its lock released.
  Task<int> TryOverwrite(const GuestAddress& a, std::span<const iovec> iov, uint32_t touched,
                         ClusterEntry* ce, bool* done);
  Task<int> ChooseTarget(const GuestAddress& a, const format::L2Entry& old, Target* t);
  // Fills the copied parts of `cluster` and plans the write.
  Task<int> PrepareCow(const GuestAddress& a, uint64_t n, const format::L2Entry& old,
                       const Target& t, std::span<std::byte> cluster, Cow* cow);
  // Standard L2: the cluster's bytes outside the request read as zero
  // (zero entry, or nothing below it).
  bool ReadsZeroAround(const GuestAddress& a, const format::L2Entry& old) const;
  Task<int> WriteCluster(const GuestAddress& a, uint64_t n, std::span<const iovec> iov,
                         const Target& t, const Cow& cow, std::span<std::byte> cluster);
  // Write-through: data durable before an entry that exposes bytes the
  // request did not write.
  Task<int> SyncBeforeEntry(const GuestAddress& a, uint64_t n, const format::L2Entry& old,
                            const Target& t, const Cow& cow);
  Task<void> GiveBack(const Target& t);
  // TryAllocateRange for clusters from `first` of the locked range: one
  // allocation of up to max_count contiguous clusters (*done: how many; once
  // they reach the range's end, `allocated`, if not null, is told), one data
  // write, then the entries.
  Task<int> AllocateRun(LockedRange& range, size_t first, size_t max_count,
                        std::span<const iovec> iov, AllocationNotice* allocated, size_t* done);
  // One data write with its iovec in the frame (for io::Join).
  Task<int> WriteData(uint64_t host_offset_bytes, io::IovVec iov);

  ImageParts* p_;
  ReadPath* read_;
  CompressedPath* compressed_;
};

}  // namespace uq::engine

#endif  // UQ_SRC_ENGINE_WRITE_PATH_H_
