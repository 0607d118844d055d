// Interim iovec helpers of the request paths (to move to src/io/iovec.h).
#ifndef UQ_SRC_ENGINE_IOV_UTIL_H_
#define UQ_SRC_ENGINE_IOV_UTIL_H_

#include <sys/uio.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include "absl/container/inlined_vector.h"

namespace uq::engine {

using IovVec = absl::InlinedVector<iovec, 8>;

inline uint64_t IovLen(std::span<const iovec> iov) {
  uint64_t n = 0;
  for (const iovec& v : iov) n += v.iov_len;
  return n;
}

// Appends the pieces of `iov` covering bytes [begin, begin + len).
inline void SliceIov(std::span<const iovec> iov, uint64_t begin, uint64_t len, IovVec* out) {
  for (const iovec& v : iov) {
    if (len == 0) break;
    if (begin >= v.iov_len) {
      begin -= v.iov_len;
      continue;
    }
    uint64_t n = std::min<uint64_t>(v.iov_len - begin, len);
    out->push_back({static_cast<std::byte*>(v.iov_base) + begin, n});
    begin = 0;
    len -= n;
  }
}

inline void ZeroIov(std::span<const iovec> iov) {
  for (const iovec& v : iov) std::memset(v.iov_base, 0, v.iov_len);
}

inline void CopyToIov(std::span<const iovec> iov, const std::byte* src) {
  for (const iovec& v : iov) {
    std::memcpy(v.iov_base, src, v.iov_len);
    src += v.iov_len;
  }
}

}  // namespace uq::engine

#endif  // UQ_SRC_ENGINE_IOV_UTIL_H_
