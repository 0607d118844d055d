#include "src/engine/codec.h"

#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdlib>

namespace uq::engine {
namespace {

// QEMU writes raw deflate with a 4 KiB window (windowBits -12).
constexpr int kDeflateWindowBits = -12;
// Readers accept any raw deflate window.
constexpr int kInflateWindowBits = -15;

thread_local CodecThreadStats tls_stats;

// zlib allocates through these, from this library's code rather than from
// inside libz, so an allocation counter linked into a test sees them.
voidpf ZAlloc(voidpf, uInt items, uInt size) { return std::calloc(items, size); }
void ZFree(voidpf, voidpf p) { std::free(p); }

// A z_stream set up once per thread and reset per cluster: inflateInit /
// deflateInit allocate the state (and deflate its ~270 KiB of tables), a
// reset does not.
class ZlibStream {
 public:
  explicit ZlibStream(bool deflate) : deflate_(deflate) {}
  ~ZlibStream() {
    if (!ready_) return;
    if (deflate_) {
      deflateEnd(&s_);
    } else {
      inflateEnd(&s_);
    }
  }
  ZlibStream(const ZlibStream&) = delete;
  ZlibStream& operator=(const ZlibStream&) = delete;

  // The stream, reset for a new cluster; nullptr if it cannot be set up.
  z_stream* Begin() {
    if (ready_) {
      const int r = deflate_ ? deflateReset(&s_) : inflateReset(&s_);
      return r == Z_OK ? &s_ : nullptr;
    }
    s_ = z_stream{};
    s_.zalloc = ZAlloc;
    s_.zfree = ZFree;
    const int r = deflate_ ? deflateInit2(&s_, Z_DEFAULT_COMPRESSION, Z_DEFLATED,
                                          kDeflateWindowBits, 9, Z_DEFAULT_STRATEGY)
                           : inflateInit2(&s_, kInflateWindowBits);
    if (r != Z_OK) return nullptr;
    ready_ = true;
    ++tls_stats.contexts_created;
    return &s_;
  }

 private:
  const bool deflate_;
  bool ready_ = false;
  z_stream s_{};
};

// The calling thread's zstd contexts, created on first use.
struct ZstdContexts {
  ZSTD_CCtx* compress = nullptr;
  ZSTD_DCtx* decompress = nullptr;
  ~ZstdContexts() {
    ZSTD_freeCCtx(compress);
    ZSTD_freeDCtx(decompress);
  }
};

thread_local ZlibStream tls_deflate(/*deflate=*/true);
thread_local ZlibStream tls_inflate(/*deflate=*/false);
thread_local ZstdContexts tls_zstd;

// Points a stream at its input and output buffers.
void PointAt(z_stream* s, std::span<const std::byte> in, std::span<std::byte> out) {
  s->next_in = reinterpret_cast<Bytef*>(const_cast<std::byte*>(in.data()));
  s->avail_in = static_cast<uInt>(in.size());
  s->next_out = reinterpret_cast<Bytef*>(out.data());
  s->avail_out = static_cast<uInt>(out.size());
}

int64_t ZlibCompress(std::span<const std::byte> in, std::span<std::byte> out) {
  z_stream* s = tls_deflate.Begin();
  if (s == nullptr) return -ENOMEM;
  PointAt(s, in, out);
  const int r = deflate(s, Z_FINISH);
  if (r != Z_STREAM_END) return 0;  // did not fit
  return static_cast<int64_t>(out.size() - s->avail_out);
}

int ZlibDecompress(std::span<const std::byte> in, std::span<std::byte> out) {
  z_stream* s = tls_inflate.Begin();
  if (s == nullptr) return -ENOMEM;
  PointAt(s, in, out);
  int r = inflate(s, Z_FINISH);
  if (r == Z_STREAM_END) return s->avail_out == 0 ? 0 : -EIO;
  if ((r == Z_BUF_ERROR || r == Z_OK) && s->avail_out == 0) {
    // Output full before the end marker: the stream may still end here (the
    // end-of-block code not consumed yet) or carry more data, which is an
    // error. Probe with one spare byte.
    std::byte spare;
    s->next_out = reinterpret_cast<Bytef*>(&spare);
    s->avail_out = 1;
    r = inflate(s, Z_FINISH);
    return s->avail_out == 1 && (r == Z_STREAM_END || r == Z_BUF_ERROR) ? 0 : -EIO;
  }
  return -EIO;
}

// This thread's zstd context in `slot`, made on first use (null: no memory).
template <typename Ctx>
Ctx* Lazily(Ctx*& slot, Ctx* (*create)()) {
  if (slot == nullptr) {
    slot = create();
    if (slot != nullptr) ++tls_stats.contexts_created;
  }
  return slot;
}

int64_t ZstdCompress(std::span<const std::byte> in, std::span<std::byte> out) {
  ZSTD_CCtx* ctx = Lazily(tls_zstd.compress, &ZSTD_createCCtx);
  if (ctx == nullptr) return -ENOMEM;
  // One-shot with the size known: the frame records its content size and a
  // window no larger than the cluster, which ZstdDecompress requires.
  const size_t r =
      ZSTD_compressCCtx(ctx, out.data(), out.size(), in.data(), in.size(), ZSTD_CLEVEL_DEFAULT);
  if (ZSTD_isError(r)) return 0;  // dstSize_tooSmall in practice: store uncompressed
  return static_cast<int64_t>(r);
}

// log2 of the window one cluster of `bytes` needs, within zstd's bounds.
int WindowLogFor(size_t bytes) {
  static const ZSTD_bounds bounds = ZSTD_dParam_getBounds(ZSTD_d_windowLogMax);
  const int log = static_cast<int>(std::bit_width(std::max<size_t>(bytes, 1) - 1));
  return std::clamp(log, bounds.lowerBound, bounds.upperBound);
}

int ZstdDecompress(std::span<const std::byte> in, std::span<std::byte> out) {
  ZSTD_DCtx* ctx = Lazily(tls_zstd.decompress, &ZSTD_createDCtx);
  if (ctx == nullptr) return -ENOMEM;
  // The streaming decoder, so that ZSTD_d_windowLogMax applies. A complete
  // frame that records its content size (QEMU's and ours do) is decoded in
  // one pass straight into `out`; other frames go through the context's
  // window buffer, which the cap keeps to one cluster.
  ZSTD_DCtx_reset(ctx, ZSTD_reset_session_only);
  if (ZSTD_isError(ZSTD_DCtx_setParameter(ctx, ZSTD_d_windowLogMax, WindowLogFor(out.size())))) {
    return -EIO;
  }
  ZSTD_inBuffer ib{in.data(), in.size(), 0};
  ZSTD_outBuffer ob{out.data(), out.size(), 0};
  for (;;) {
    const size_t r = ZSTD_decompressStream(ctx, &ob, &ib);
    if (ZSTD_isError(r)) return -EIO;                 // corrupt, or asks for a larger window
    if (r == 0) return ob.pos == ob.size ? 0 : -EIO;  // trailing sector padding is ignored
    if (ob.pos == ob.size) {
      // Output full but the frame is not finished: only acceptable if it
      // produces nothing more.
      std::byte spare;
      ZSTD_outBuffer probe{&spare, 1, 0};
      const size_t r2 = ZSTD_decompressStream(ctx, &probe, &ib);
      return !ZSTD_isError(r2) && probe.pos == 0 && r2 == 0 ? 0 : -EIO;
    }
    if (ib.pos == ib.size) return -EIO;  // truncated stream
  }
}

// One entry per compression type the format knows.
struct Codec {
  int64_t (*compress)(std::span<const std::byte> in, std::span<std::byte> out);
  int (*decompress)(std::span<const std::byte> in, std::span<std::byte> out);
};

const Codec* CodecFor(format::CompressionType type) {
  static constexpr Codec kZlib{ZlibCompress, ZlibDecompress};
  static constexpr Codec kZstd{ZstdCompress, ZstdDecompress};
  switch (type) {
    case format::CompressionType::kZlib:
      return &kZlib;
    case format::CompressionType::kZstd:
      return &kZstd;
  }
  return nullptr;
}

}  // namespace

int64_t CompressCluster(format::CompressionType type, std::span<const std::byte> in,
                        std::span<std::byte> out) {
  const Codec* codec = CodecFor(type);
  return codec ? codec->compress(in, out) : -EINVAL;
}

int DecompressCluster(format::CompressionType type, std::span<const std::byte> in,
                      std::span<std::byte> out) {
  const Codec* codec = CodecFor(type);
  return codec ? codec->decompress(in, out) : -EINVAL;
}

CodecThreadStats CodecStatsForThisThread() { return tls_stats; }

}  // namespace uq::engine
