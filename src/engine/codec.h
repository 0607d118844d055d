// Cluster compression codecs: zlib raw deflate (as QEMU writes it, windowBits
// -12; any raw deflate stream is accepted on read) and zstd (one frame).
//
// Both work on caller buffers: decompression never writes past `out` and fails
// if the stream would produce more or fewer bytes than out.size().
//
// Thread-safety: stateless functions; safe from any thread.
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

}  // namespace uq::engine

#endif  // UQ_SRC_ENGINE_CODEC_H_
