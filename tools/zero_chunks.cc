#include "tools/zero_chunks.h"

#include <algorithm>

#include "format/status_macros.h"
#include "tools/block_status.h"
#include "tools/image_lock.h"

namespace uq::tools {

absl::StatusOr<std::vector<bool>> ZeroChunks(const std::string& path, const std::string& format,
                                             const std::string& snapshot, bool allow_devices,
                                             uint64_t size_bytes, uint64_t chunk_bytes) {
  UQ_ASSIGN_OR_RETURN(Chain chain,
                      Chain::Open(path, format, LockMode::kNone, snapshot, allow_devices));
  const uint64_t chunks = (size_bytes + chunk_bytes - 1) / chunk_bytes;
  std::vector<bool> zero(chunks, true);
  uint64_t offset = 0;
  while (offset < size_bytes) {
    UQ_ASSIGN_OR_RETURN(BlockStatus st, chain.StatusAbove(offset, size_bytes - offset));
    if (st.bytes == 0) return absl::InternalError("block status made no progress");
    const uint64_t end = std::min(size_bytes, offset + st.bytes);
    if (!st.zero) {
      for (uint64_t i = offset / chunk_bytes; i <= (end - 1) / chunk_bytes; ++i) zero[i] = false;
    }
    offset = end;
  }
  return zero;
}

absl::StatusOr<std::vector<SourceExtent>> SourceExtents(const std::string& path,
                                                        const std::string& format,
                                                        const std::string& snapshot,
                                                        bool allow_devices, uint64_t size_bytes,
                                                        bool top_only, uint64_t backing_end_bytes,
                                                        bool zeros_as_data) {
  UQ_ASSIGN_OR_RETURN(Chain chain,
                      Chain::Open(path, format, LockMode::kNone, snapshot, allow_devices));
  std::vector<SourceExtent> extents;
  auto add = [&](uint64_t offset, uint64_t end, ExtentKind kind) {
    if (end <= offset) return;
    if (!extents.empty() && extents.back().kind == kind) {
      extents.back().length_bytes = end - extents.back().offset_bytes;
    } else {
      extents.push_back(SourceExtent{offset, end - offset, kind});
    }
  };
  uint64_t offset = 0;
  while (offset < size_bytes) {
    UQ_ASSIGN_OR_RETURN(BlockStatus st, top_only
                                            ? chain.layer(0).Status(offset, size_bytes - offset)
                                            : chain.StatusAbove(offset, size_bytes - offset));
    if (st.bytes == 0) return absl::InternalError("block status made no progress");
    const uint64_t end = std::min(size_bytes, offset + st.bytes);
    if (st.zero) {
      const uint64_t split = std::clamp(backing_end_bytes, offset, end);
      add(offset, split, zeros_as_data ? ExtentKind::kData : ExtentKind::kZero);
      add(split, end, ExtentKind::kBacking);
    } else {
      add(offset, end, st.data ? ExtentKind::kData : ExtentKind::kBacking);
    }
    offset = end;
  }
  return extents;
}

}  // namespace uq::tools
