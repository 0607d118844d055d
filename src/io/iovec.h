// Helpers over iovec arrays: the one place iovec arithmetic lives, shared by
// the BlockFile implementations and the engine.
//
// Positions and lengths are in bytes counted over the whole array, as if its
// buffers were concatenated. None of these allocate (IovSlice stays inline up
// to IovVec's inline capacity).
#ifndef UQ_SRC_IO_IOVEC_H_
#define UQ_SRC_IO_IOVEC_H_

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <span>

#include "absl/container/inlined_vector.h"

namespace uq::io {

// An iovec array owned by value, e.g. the slice of a request that one piece of
// it works on. Eight entries inline cover a ublk request's single buffer and
// the slices the engine cuts from it without touching the heap.
using IovVec = absl::InlinedVector<iovec, 8>;

// Sum of iov_len. Saturates at UINT64_MAX instead of wrapping.
uint64_t IovLength(std::span<const iovec> iov);

// Copies the iovec's bytes, in order, to `dst` (which must hold IovLength bytes).
void CopyFromIov(std::span<const iovec> iov, std::byte* dst);

// Fills the iovec's buffers, in order, from `src` (IovLength bytes).
void CopyToIov(std::span<const iovec> iov, const std::byte* src);

// Zeroes every byte of the iovec from byte `from_bytes` (counted over the whole
// array) to its end.
void ZeroIovFrom(std::span<const iovec> iov, uint64_t from_bytes);

// Zeroes every byte of the iovec.
inline void ZeroIov(std::span<const iovec> iov) { ZeroIovFrom(iov, 0); }

// Appends to *out the pieces of `iov` that cover bytes
// [begin_bytes, begin_bytes + length_bytes): the first and last entries
// trimmed, empty entries skipped. Stops early if `iov` ends first (the slice
// is then shorter than length_bytes; callers pass ranges inside the array).
// `out` points into iov's buffers: it is valid as long as they are.
void IovSlice(std::span<const iovec> iov, uint64_t begin_bytes, uint64_t length_bytes, IovVec* out);

}  // namespace uq::io

#endif  // UQ_SRC_IO_IOVEC_H_
