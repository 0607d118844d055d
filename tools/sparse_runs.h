// qemu-img convert's sparse detection (-S): which parts of a buffer read
// from the source are written to the target and which are left out (or
// zeroed) as zeros.
//
// A buffer is cut into runs at 512-byte sector granularity. A run that starts
// with zero sectors is a zero run; a run that starts with data takes in
// every later zero stretch shorter than `min_sectors` (so that small holes do
// not split writes). Run ends are moved to multiples of `alignment_sectors`
// (absolute, from offset 0 of the image): data ends round up, zero ends
// round down, and a zero stretch that is only the tail before the next
// multiple counts as data. These are the rules of qemu-img 7.2's
// is_allocated_sectors_min, so a raw target ends up with the same holes.
//
// Thread-safety: a plain function.
#ifndef UQ_TOOLS_SPARSE_RUNS_H_
#define UQ_TOOLS_SPARSE_RUNS_H_

#include <cstddef>
#include <cstdint>
#include <span>

namespace uq::tools {

struct SparseRun {
  uint64_t length_bytes = 0;  // > 0 when `bytes` is not empty
  bool data = false;
};

// The first run of `bytes`, which start at image offset `offset_bytes` (a
// sector multiple). REQUIRES: min_sectors >= 1; alignment_sectors a power of
// two. The last sector may be partial (a raw image's tail).
SparseRun NextSparseRun(std::span<const std::byte> bytes, uint64_t offset_bytes,
                        uint32_t min_sectors, uint32_t alignment_sectors);

// The power of two at or below `n` (n >= 1): qemu-img aligns runs to the
// sparse size rounded down this way.
uint32_t PowerOfTwoFloor(uint32_t n);

}  // namespace uq::tools

#endif  // UQ_TOOLS_SPARSE_RUNS_H_
