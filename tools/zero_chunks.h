// Which fixed-size chunks of an image read as zeros, from its metadata alone
// (qcow2-img convert skips them).
//
// Thread-safety: a plain function; it opens its own read-only view of the
// chain.
#ifndef UQ_TOOLS_ZERO_CHUNKS_H_
#define UQ_TOOLS_ZERO_CHUNKS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace uq::tools {

// Which chunks of `chunk_bytes` of the image at `path` read as zeros through
// its whole backing chain (QEMU's block status with want_zero: unallocated
// with no backing data, zero clusters, holes of a raw file), read from the
// chain's metadata without taking locks (the caller holds the image open and
// locked already). `format` is "qcow2", "raw" or "" to probe; `snapshot` as
// for convert -l.
absl::StatusOr<std::vector<bool>> ZeroChunks(const std::string& path, const std::string& format,
                                             const std::string& snapshot, uint64_t size_bytes,
                                             uint64_t chunk_bytes);

}  // namespace uq::tools

#endif  // UQ_TOOLS_ZERO_CHUNKS_H_
