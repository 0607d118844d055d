#include "src/io/iovec.h"

#include <algorithm>
#include <cstring>
#include <limits>

namespace uq::io {

uint64_t IovLength(std::span<const iovec> iov) {
  uint64_t total = 0;
  for (const iovec& v : iov) {
    if (v.iov_len > std::numeric_limits<uint64_t>::max() - total) {
      return std::numeric_limits<uint64_t>::max();
    }
    total += v.iov_len;
  }
  return total;
}

void CopyFromIov(std::span<const iovec> iov, std::byte* dst) {
  for (const iovec& v : iov) {
    if (v.iov_len == 0) continue;
    std::memcpy(dst, v.iov_base, v.iov_len);
    dst += v.iov_len;
  }
}

void CopyToIov(std::span<const iovec> iov, const std::byte* src) {
  for (const iovec& v : iov) {
    if (v.iov_len == 0) continue;
    std::memcpy(v.iov_base, src, v.iov_len);
    src += v.iov_len;
  }
}

void ZeroIovFrom(std::span<const iovec> iov, uint64_t from_bytes) {
  for (const iovec& v : iov) {
    if (from_bytes >= v.iov_len) {
      from_bytes -= v.iov_len;
      continue;
    }
    std::memset(static_cast<std::byte*>(v.iov_base) + from_bytes, 0, v.iov_len - from_bytes);
    from_bytes = 0;
  }
}

void IovSlice(std::span<const iovec> iov, uint64_t begin_bytes, uint64_t length_bytes,
              IovVec* out) {
  for (const iovec& v : iov) {
    if (length_bytes == 0) break;
    if (begin_bytes >= v.iov_len) {
      begin_bytes -= v.iov_len;
      continue;
    }
    const uint64_t n = std::min<uint64_t>(v.iov_len - begin_bytes, length_bytes);
    out->push_back({static_cast<std::byte*>(v.iov_base) + begin_bytes, n});
    begin_bytes = 0;
    length_bytes -= n;
  }
}

}  // namespace uq::io
