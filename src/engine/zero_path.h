// ZeroPath: write-zeroes and discard.
//
// Whole clusters (whole subclusters with extended L2) become zero in the L2
// entry: the zero flag or bitmap, or an unallocated entry when nothing is
// below; with `may_unmap` their host clusters are freed at the next flush.
// The partial (sub)clusters at the edges of a range get real zeros through
// the write path, unless they already read as zero. A raw external data file
// must read as the guest disk on its own, and a version 2 image has no zero
// flag to hide a backing file: both get real zeros throughout.
//
// Discard follows QEMU's qcow2 driver: only whole clusters (the disk's last
// cluster counts as whole when the range reaches the end) are deallocated and
// read as zero; partly covered clusters keep their data; a version 2 image
// with a backing file ignores discards.
//
// Unallocate is QEMU's full discard (qcow2_make_empty, what qemu-img commit
// does to the committed image): whole clusters become unallocated, so the
// backing file shows through again, in any version.
//
// Thread-safety: thread-safe (the queue threads of one image call it at once);
// see ImageParts for the locks a request takes and their order.
#ifndef UQ_SRC_ENGINE_ZERO_PATH_H_
#define UQ_SRC_ENGINE_ZERO_PATH_H_

#include <cstdint>

#include "format/tables.h"
#include "src/engine/image_parts.h"
#include "src/engine/read_path.h"
#include "src/engine/write_path.h"
#include "src/io/task.h"

namespace uq::engine {

class ZeroPath {
 public:
  ZeroPath(ImageParts* parts, ReadPath* read, WritePath* write)
      : p_(parts), read_(read), write_(write) {}

  // Zeroes (or, with `discard`, discards) [offset, offset + length).
  // REQUIRES: the request was checked (aligned, in range, writable).
  Task<int> Zero(uint64_t offset_bytes, uint64_t length_bytes, bool may_unmap, bool discard);
  // Makes the whole clusters of [offset, offset + length) unallocated and
  // frees their host clusters (the disk's last cluster counts as whole when
  // the range reaches the end). REQUIRES: as Zero.
  Task<int> Unallocate(uint64_t offset_bytes, uint64_t length_bytes);

 private:
  // [g, g + n) inside one cluster.
  Task<int> ZeroPiece(uint64_t g, uint64_t n, bool may_unmap);
  // Real zeros over [g, g + n) unless it already reads as zero.
  Task<int> WriteZerosIfNeeded(uint64_t g, uint64_t n);
  // Marks the whole (sub)clusters [begin, end) of the cluster at `a` zero.
  // `unallocate`: the whole cluster becomes unallocated instead (Unallocate).
  Task<int> ZeroInEntry(const GuestAddress& a, uint64_t begin, uint64_t end, bool may_unmap,
                        bool unallocate = false);
  // The entry that makes [begin, end) of `old` read zero; *free_old if the
  // old host cluster is dropped. *rewrite if it cannot be said in the entry
  // (part of a compressed cluster): the caller writes real zeros instead.
  format::L2Entry ZeroedEntry(const format::L2Entry& old, uint64_t begin, uint64_t end,
                              bool may_unmap, bool* free_old, bool* rewrite) const;

  ImageParts* p_;
  ReadPath* read_;
  WritePath* write_;
};

}  // namespace uq::engine

#endif  // UQ_SRC_ENGINE_ZERO_PATH_H_
