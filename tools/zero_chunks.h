// Which fixed-size chunks of an image read as zeros, and (convert -B) which
// ranges its top image leaves to its backing file, from metadata alone
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
// for convert -l; `allow_devices` (--allow-devices) as for Chain::Open.
absl::StatusOr<std::vector<bool>> ZeroChunks(const std::string& path, const std::string& format,
                                             const std::string& snapshot, bool allow_devices,
                                             uint64_t size_bytes, uint64_t chunk_bytes);

// How convert -B treats a range of the source (qemu-img convert's
// BLK_DATA / BLK_ZERO / BLK_BACKING_FILE).
enum class ExtentKind { kData, kZero, kBacking };
struct SourceExtent {
  uint64_t offset_bytes = 0;
  uint64_t length_bytes = 0;
  ExtentKind kind = ExtentKind::kData;
};

// The source's ranges as convert -B (`top_only`) or -C copies them,
// ascending and covering [0, size_bytes). -B: the top image's own block
// status (not its backing chain's, which the new backing file is taken to
// hold): data is copied, zero ranges are zeroed, ranges it leaves to its
// backing file are not written. Zero ranges at or past `backing_end_bytes`
// (the new backing file's size) read as zeros anyway and are not written
// either; with `zeros_as_data` (-S 0) the others are written as data. -C:
// the block status through the whole chain, data or zero. The chain is
// opened as by ZeroChunks.
absl::StatusOr<std::vector<SourceExtent>> SourceExtents(const std::string& path,
                                                        const std::string& format,
                                                        const std::string& snapshot,
                                                        bool allow_devices, uint64_t size_bytes,
                                                        bool top_only, uint64_t backing_end_bytes,
                                                        bool zeros_as_data);

}  // namespace uq::tools

#endif  // UQ_TOOLS_ZERO_CHUNKS_H_
