// Small helpers over iovec arrays shared by the BlockFile implementations.
#ifndef UQ_SRC_IO_IOVEC_H_
#define UQ_SRC_IO_IOVEC_H_

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <span>

namespace uq::io {

// Sum of iov_len. Saturates at UINT64_MAX instead of wrapping.
uint64_t IovLength(std::span<const iovec> iov);

// Copies the iovec's bytes, in order, to `dst` (which must hold IovLength bytes).
void CopyFromIov(std::span<const iovec> iov, std::byte* dst);

// Fills the iovec's buffers, in order, from `src` (IovLength bytes).
void CopyToIov(std::span<const iovec> iov, const std::byte* src);

// Zeroes every byte of the iovec from byte `from_bytes` (counted over the whole
// array) to its end.
void ZeroIovFrom(std::span<const iovec> iov, uint64_t from_bytes);

}  // namespace uq::io

#endif  // UQ_SRC_IO_IOVEC_H_
