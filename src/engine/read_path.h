// ReadPath: guest reads, one piece (inside one guest cluster) at a time, from
// wherever each subcluster's bytes are: the data file, zeros, the backing
// chain or a compressed cluster. Also answers "does this range read as
// zero?" for the zeroing path, and fills the untouched parts of a cluster for
// copy-on-write.
//
// Thread-safety: thread-safe (the queue threads of one image call it at once);
// see ImageParts for the locks a request takes and their order.
#ifndef UQ_SRC_ENGINE_READ_PATH_H_
#define UQ_SRC_ENGINE_READ_PATH_H_

#include <sys/uio.h>

#include <cstdint>
#include <span>

#include "format/tables.h"
#include "src/engine/compressed.h"
#include "src/engine/image_parts.h"
#include "src/io/iovec.h"
#include "src/io/task.h"

namespace uq::engine {

class ReadPath {
 public:
  ReadPath(ImageParts* parts, CompressedPath* compressed) : p_(parts), compressed_(compressed) {}

  // Reads [g, g + n), inside one guest cluster, into `iov` (n bytes). Takes
  // the cluster's shared lock.
  Task<int> ReadPiece(uint64_t g, uint64_t n, std::span<const iovec> iov);

  // Reads [offset, offset + IovLength(iov)), which spans several clusters:
  // physically contiguous data clusters are read with one I/O, the other
  // pieces concurrently. Holds every cluster's shared lock meanwhile.
  Task<int> ReadRange(uint64_t offset_bytes, std::span<const iovec> iov);

  // Reads [g, g + n) of one source of entry `e` into `iov`. REQUIRES: the
  // cluster's lock (either kind); src != kCompressed.
  Task<int> ReadFrom(Source src, const format::L2Entry& e, uint64_t g, uint64_t n,
                     std::span<const iovec> iov);
  // Fills bytes [begin, end) of `cluster` (the guest cluster at
  // `cluster_offset`) from `src`. Same REQUIRES as ReadFrom.
  Task<int> FillFrom(Source src, const format::L2Entry& e, uint64_t cluster_offset, uint64_t begin,
                     uint64_t end, std::span<std::byte> cluster);

  // Sets *zero if every subcluster [g, g + n) (inside one cluster) touches
  // reads as zero without looking at data (zero flag, or nothing below).
  // Takes the cluster's shared lock.
  Task<int> ReadsZero(uint64_t g, uint64_t n, bool* zero);

 private:
  // The piece at `a` (n bytes) of a cluster whose entry is `e`. REQUIRES:
  // the cluster's lock.
  Task<int> ReadEntry(const GuestAddress& a, uint64_t n, std::span<const iovec> iov,
                      const format::L2Entry& e);
  // ReadEntry / a data read with the arguments in the frame (for io::Join).
  Task<int> ReadEntryOwned(GuestAddress a, uint64_t n, io::IovVec iov, format::L2Entry e);
  Task<int> ReadData(uint64_t host_offset_bytes, io::IovVec iov);
  Task<int> ReadBacking(uint64_t g, uint64_t n, std::span<const iovec> iov);

  ImageParts* p_;
  CompressedPath* compressed_;
};

}  // namespace uq::engine

#endif  // UQ_SRC_ENGINE_READ_PATH_H_
