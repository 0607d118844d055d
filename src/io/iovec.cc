#include "src/io/iovec.h"

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

}  // namespace uq::io
