// CompressedPath: compressed clusters (docs/interop/qcow2.txt, "Compressed
// clusters"): reading one back into a whole cluster, and storing a cluster
// whose compressed bytes the caller already made.
//
// Ordering: the compressed bytes are written (and, with metadata
// write-through, made durable: stale bytes under a compressed entry would not
// decompress, which is corruption, not old data) before the L2 entry points
// at them; the replaced entry's clusters are freed at the next flush.
//
// Thread-safety: thread-safe (the queue threads of one image call it at once);
// see ImageParts for the locks a request takes and their order.
#ifndef UQ_SRC_ENGINE_COMPRESSED_H_
#define UQ_SRC_ENGINE_COMPRESSED_H_

#include <cstdint>
#include <span>

#include "format/tables.h"
#include "src/engine/image_parts.h"
#include "src/io/task.h"

namespace uq::engine {

class CompressedPath {
 public:
  explicit CompressedPath(ImageParts* parts) : p_(parts) {}

  // Decompresses `e` into `cluster` (one cluster). A stream that does not
  // decompress to exactly one cluster marks the image corrupt.
  Task<int> Read(const format::L2Entry& e, std::span<std::byte> cluster);

  // Stores the first `compressed_bytes` of `buffer` (the codec's output for
  // the guest cluster at `guest_offset_bytes`, shorter than a cluster) as that
  // cluster's data, packed right after the previous compressed data
  // (RefcountStore::AllocateBytes).
  // REQUIRES: guest_offset_bytes cluster aligned; no external data file;
  // buffer.size() >= compressed_bytes.
  Task<int> Store(uint64_t guest_offset_bytes, std::span<const std::byte> buffer,
                  uint64_t compressed_bytes);

 private:
  ImageParts* p_;
};

}  // namespace uq::engine

#endif  // UQ_SRC_ENGINE_COMPRESSED_H_
