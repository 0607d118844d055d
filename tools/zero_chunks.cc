#include "tools/zero_chunks.h"

#include <algorithm>

#include "format/status_macros.h"
#include "tools/block_status.h"
#include "tools/image_lock.h"

namespace uq::tools {

absl::StatusOr<std::vector<bool>> ZeroChunks(const std::string& path, const std::string& format,
                                             const std::string& snapshot, uint64_t size_bytes,
                                             uint64_t chunk_bytes) {
  UQ_ASSIGN_OR_RETURN(Chain chain, Chain::Open(path, format, LockMode::kNone, snapshot));
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

}  // namespace uq::tools
