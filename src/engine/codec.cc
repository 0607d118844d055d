#include "src/engine/codec.h"

#include <zlib.h>
#include <zstd.h>

#include <cerrno>

namespace uq::engine {
namespace {

// QEMU writes raw deflate with a 4 KiB window (windowBits -12).
constexpr int kDeflateWindowBits = -12;
// Readers accept any raw deflate window.
constexpr int kInflateWindowBits = -15;

int64_t ZlibCompress(std::span<const std::byte> in, std::span<std::byte> out) {
  z_stream s{};
  if (deflateInit2(&s, Z_DEFAULT_COMPRESSION, Z_DEFLATED, kDeflateWindowBits, 9,
                   Z_DEFAULT_STRATEGY) != Z_OK) {
    return -ENOMEM;
  }
  s.next_in = reinterpret_cast<Bytef*>(const_cast<std::byte*>(in.data()));
  s.avail_in = static_cast<uInt>(in.size());
  s.next_out = reinterpret_cast<Bytef*>(out.data());
  s.avail_out = static_cast<uInt>(out.size());
  int r = deflate(&s, Z_FINISH);
  int64_t produced = static_cast<int64_t>(out.size() - s.avail_out);
  deflateEnd(&s);
  if (r != Z_STREAM_END) return 0;  // did not fit
  return produced;
}

int ZlibDecompress(std::span<const std::byte> in, std::span<std::byte> out) {
  z_stream s{};
  if (inflateInit2(&s, kInflateWindowBits) != Z_OK) return -ENOMEM;
  s.next_in = reinterpret_cast<Bytef*>(const_cast<std::byte*>(in.data()));
  s.avail_in = static_cast<uInt>(in.size());
  s.next_out = reinterpret_cast<Bytef*>(out.data());
  s.avail_out = static_cast<uInt>(out.size());
  int r = inflate(&s, Z_FINISH);
  bool ok = false;
  if (r == Z_STREAM_END) {
    ok = s.avail_out == 0;
  } else if ((r == Z_BUF_ERROR || r == Z_OK) && s.avail_out == 0) {
    // Output full before the end marker: the stream may still end here (the
    // end-of-block code not consumed yet) or carry more data, which is an
    // error. Probe with one spare byte.
    std::byte spare;
    s.next_out = reinterpret_cast<Bytef*>(&spare);
    s.avail_out = 1;
    r = inflate(&s, Z_FINISH);
    ok = s.avail_out == 1 && (r == Z_STREAM_END || r == Z_BUF_ERROR);
  }
  inflateEnd(&s);
  return ok ? 0 : -EIO;
}

int64_t ZstdCompress(std::span<const std::byte> in, std::span<std::byte> out) {
  size_t r = ZSTD_compress(out.data(), out.size(), in.data(), in.size(), ZSTD_CLEVEL_DEFAULT);
  if (ZSTD_isError(r)) {
    return 0;  // dstSize_tooSmall in practice: store uncompressed
  }
  return static_cast<int64_t>(r);
}

int ZstdDecompress(std::span<const std::byte> in, std::span<std::byte> out) {
  ZSTD_DCtx* ctx = ZSTD_createDCtx();
  if (ctx == nullptr) return -ENOMEM;
  ZSTD_inBuffer ib{in.data(), in.size(), 0};
  ZSTD_outBuffer ob{out.data(), out.size(), 0};
  bool ok = false;
  for (;;) {
    size_t r = ZSTD_decompressStream(ctx, &ob, &ib);
    if (ZSTD_isError(r)) break;
    if (r == 0) {  // frame complete; trailing sector padding is ignored
      ok = ob.pos == ob.size;
      break;
    }
    if (ob.pos == ob.size) {
      // Output full but the frame is not finished: only acceptable if it
      // produces nothing more.
      std::byte spare;
      ZSTD_outBuffer probe{&spare, 1, 0};
      size_t r2 = ZSTD_decompressStream(ctx, &probe, &ib);
      ok = !ZSTD_isError(r2) && probe.pos == 0 && r2 == 0;
      break;
    }
    if (ib.pos == ib.size) break;  // truncated stream
  }
  ZSTD_freeDCtx(ctx);
  return ok ? 0 : -EIO;
}

}  // namespace

int64_t CompressCluster(format::CompressionType type, std::span<const std::byte> in,
                        std::span<std::byte> out) {
  switch (type) {
    case format::CompressionType::kZlib:
      return ZlibCompress(in, out);
    case format::CompressionType::kZstd:
      return ZstdCompress(in, out);
  }
  return -EINVAL;
}

int DecompressCluster(format::CompressionType type, std::span<const std::byte> in,
                      std::span<std::byte> out) {
  switch (type) {
    case format::CompressionType::kZlib:
      return ZlibDecompress(in, out);
    case format::CompressionType::kZstd:
      return ZstdDecompress(in, out);
  }
  return -EINVAL;
}

}  // namespace uq::engine
