// Cluster compression codecs: zlib raw deflate (as QEMU writes it, windowBits
// -12; any raw deflate stream is accepted on read) and zstd (one frame).
//
// Both work on caller buffers: decompression never writes past `out` and fails
// if the stream would produce more or fewer bytes than out.size().
//
// Contexts: each thread sets up one deflate, one inflate and one zstd
// compression and decompression context on first use, resets it per cluster
// and frees it when the thread exits, so a warm thread does not initialise or
// allocate anything per cluster.
//
// zstd window: decompression caps the window a frame may ask for at what
// out.size() needs (ZSTD_d_windowLogMax, the size rounded up to a power of
// two). A frame that records its content size (QEMU's and ours: both
// compress a whole cluster in one call) is decoded in one pass straight into
// `out`; any other frame asking for a larger window fails with -EIO instead
// of making the decoder allocate it.
//
// Thread-safety: safe from any thread; every context is thread-local.
#ifndef UQ_SRC_ENGINE_CODEC_H_
#define UQ_SRC_ENGINE_CODEC_H_

#include <cstddef>
#include <cstdint>
#include <span>

#include "format/header.h"

namespace uq::engine {

// Compresses `in` into `out`. Returns the compressed length, 0 if the result
// would not fit in out (incompressible), or -errno.
int64_t CompressCluster(format::CompressionType type, std::span<const std::byte> in,
                        std::span<std::byte> out);

// Decompresses `in` (which may carry trailing padding after the stream)
// into exactly out.size() bytes. Returns 0, or -EIO for a corrupt, short or
// over-long stream.
int DecompressCluster(format::CompressionType type, std::span<const std::byte> in,
                      std::span<std::byte> out);

// How many codec contexts the calling thread has set up (for tests: a warm
// thread sets up none per cluster).
struct CodecThreadStats {
  uint64_t contexts_created = 0;
};
CodecThreadStats CodecStatsForThisThread();

}  // namespace uq::engine

#endif  // UQ_SRC_ENGINE_CODEC_H_
