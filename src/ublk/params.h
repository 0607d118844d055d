// Translating a Device's geometry into ublk_params (pure, unit-tested).
#ifndef UQ_SRC_UBLK_PARAMS_H_
#define UQ_SRC_UBLK_PARAMS_H_

#include <cstdint>

#include "src/ublk/ublk_uapi.h"

namespace uq::ublk {

struct Geometry {
  uint64_t size_bytes = 0;
  // Allocation unit of the image (qcow2 cluster size, 4096 for raw).
  uint32_t granularity_bytes = 4096;
  bool read_only = false;
  // Every write is durable when it completes (writethrough): no volatile
  // cache is advertised, so the kernel sends neither FLUSH nor FUA.
  bool writethrough = false;
  // The per-tag buffer size the kernel accepted (dev_info.max_io_buf_bytes).
  uint32_t max_io_buf_bytes = 0;
};

// Smallest granularity at which chunk_sectors is advertised: below it the
// block layer would split every request into tiny pieces, which costs more
// than the engine's own split at cluster boundaries.
inline constexpr uint32_t kMinChunkBytes = 64 * 1024;
// Upper bound of one DISCARD / WRITE_ZEROES request.
inline constexpr uint32_t kMaxDiscardBytes = 1U << 30;

// Logical 512 / physical 4096; io_min/io_opt = granularity (clamped to
// [4096, max_io_buf_bytes]); chunk_sectors = granularity when it is a power of
// two >= kMinChunkBytes; VOLATILE_CACHE | FUA so FLUSH and FUA reach the
// server (unless writethrough); READ_ONLY and no discard parameters for read-only devices.
// dev_sectors rounds the size down to whole sectors.
Params ComputeParams(const Geometry& geometry);

}  // namespace uq::ublk

#endif  // UQ_SRC_UBLK_PARAMS_H_
