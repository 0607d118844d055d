// Cluster codecs: round trips, exact-length decoding, the zstd window cap and
// per-thread context reuse.
#include "src/engine/codec.h"

#include <gtest/gtest.h>
#include <zstd.h>

#include <cerrno>
#include <thread>
#include <vector>

#include "tests/alloc_counter.h"

namespace uq::engine {
namespace {

using format::CompressionType;
constexpr CompressionType kBoth[] = {CompressionType::kZlib, CompressionType::kZstd};

// Compressible but not trivial: a repeating 7-byte pattern.
std::vector<std::byte> Cluster(size_t bytes) {
  std::vector<std::byte> v(bytes);
  for (size_t i = 0; i < v.size(); ++i) v[i] = std::byte(i % 7);
  return v;
}

// Compresses `in`; the compressed bytes, or empty on failure.
std::vector<std::byte> Compress(CompressionType type, const std::vector<std::byte>& in) {
  std::vector<std::byte> out(in.size() - 1);
  const int64_t n = CompressCluster(type, in, out);
  EXPECT_GT(n, 0);
  out.resize(n > 0 ? static_cast<size_t>(n) : 0);
  return out;
}

TEST(CodecTest, RoundTripBothTypes) {
  for (auto type : {format::CompressionType::kZlib, format::CompressionType::kZstd}) {
    std::vector<std::byte> in(65536);
    for (size_t i = 0; i < in.size(); ++i) in[i] = std::byte(i % 7);
    std::vector<std::byte> out(65535);
    int64_t n = CompressCluster(type, in, out);
    ASSERT_GT(n, 0);
    std::vector<std::byte> back(65536);
    ASSERT_EQ(DecompressCluster(type, std::span(out).first(n), back), 0);
    EXPECT_EQ(back, in);
  }
}

TEST(CodecTest, DecompressionNeverOverrunsOneCluster) {
  for (auto type : {format::CompressionType::kZlib, format::CompressionType::kZstd}) {
    // A stream of two clusters' worth of data into a one-cluster buffer.
    std::vector<std::byte> in(8192, std::byte{5});
    std::vector<std::byte> out(8192);
    int64_t n = CompressCluster(type, in, out);
    ASSERT_GT(n, 0);
    std::vector<std::byte> guard(4096 + 64, std::byte{0xee});
    EXPECT_EQ(DecompressCluster(type, std::span(out).first(n), std::span(guard).first(4096)), -EIO);
    for (size_t i = 4096; i < guard.size(); ++i) ASSERT_EQ(guard[i], std::byte{0xee});
    // A stream shorter than the cluster is an error too.
    std::vector<std::byte> big(16384);
    EXPECT_EQ(DecompressCluster(type, std::span(out).first(n), big), -EIO);
    // Garbage is an error, not a crash.
    std::vector<std::byte> junk(100, std::byte{0x42});
    EXPECT_EQ(DecompressCluster(type, junk, std::span(guard).first(4096)), -EIO);
  }
}

// qcow2 stores a compressed cluster in whole sectors: the stream is followed
// by padding, which readers ignore.
TEST(CodecTest, TrailingSectorPaddingIsIgnored) {
  const auto in = Cluster(65536);
  for (auto type : kBoth) {
    auto stream = Compress(type, in);
    stream.resize((stream.size() + 511) / 512 * 512 + 512, std::byte{0});
    std::vector<std::byte> back(in.size());
    EXPECT_EQ(DecompressCluster(type, stream, back), 0);
    EXPECT_EQ(back, in);
  }
}

// A zstd frame written by a streaming compressor that did not know the size:
// no content size in the header and a window of 2^window_log.
std::vector<std::byte> ZstdFrameWithoutSize(const std::vector<std::byte>& in, int window_log) {
  ZSTD_CCtx* c = ZSTD_createCCtx();
  ZSTD_CCtx_setParameter(c, ZSTD_c_windowLog, window_log);
  ZSTD_CCtx_setParameter(c, ZSTD_c_contentSizeFlag, 0);
  std::vector<std::byte> out(ZSTD_compressBound(in.size()));
  ZSTD_outBuffer ob{out.data(), out.size(), 0};
  // Two calls: the first with e_continue, so the size is never pledged.
  ZSTD_inBuffer first{in.data(), 100, 0};
  ZSTD_compressStream2(c, &ob, &first, ZSTD_e_continue);
  ZSTD_inBuffer rest{in.data() + 100, in.size() - 100, 0};
  const size_t left = ZSTD_compressStream2(c, &ob, &rest, ZSTD_e_end);
  ZSTD_freeCCtx(c);
  EXPECT_EQ(left, 0u);
  EXPECT_EQ(ZSTD_getFrameContentSize(out.data(), ob.pos), ZSTD_CONTENTSIZE_UNKNOWN);
  out.resize(ob.pos);
  return out;
}

TEST(CodecTest, ZstdWindowIsCappedAtOneCluster) {
  const auto in = Cluster(65536);
  std::vector<std::byte> back(in.size());
  // A window of one cluster decodes (through the window buffer: no size).
  EXPECT_EQ(DecompressCluster(CompressionType::kZstd, ZstdFrameWithoutSize(in, 16), back), 0);
  EXPECT_EQ(back, in);
  // A frame asking for a 16 MiB window to fill a 64 KiB cluster is refused.
  EXPECT_EQ(DecompressCluster(CompressionType::kZstd, ZstdFrameWithoutSize(in, 24), back), -EIO);
  // Smaller clusters get smaller caps: 64 KiB of window for a 4 KiB cluster is too much.
  const auto small = Cluster(4096);
  std::vector<std::byte> small_back(small.size());
  EXPECT_EQ(DecompressCluster(CompressionType::kZstd, ZstdFrameWithoutSize(small, 16), small_back),
            -EIO);
  EXPECT_EQ(DecompressCluster(CompressionType::kZstd, ZstdFrameWithoutSize(small, 12), small_back),
            0);
  EXPECT_EQ(small_back, small);
}

// QEMU compresses a cluster with one ZSTD_compressStream2(..., ZSTD_e_end)
// call, which records the content size.
TEST(CodecTest, ZstdReadsQemuStyleFrames) {
  const auto in = Cluster(65536);
  ZSTD_CCtx* c = ZSTD_createCCtx();
  std::vector<std::byte> out(in.size());
  ZSTD_outBuffer ob{out.data(), out.size(), 0};
  ZSTD_inBuffer ib{in.data(), in.size(), 0};
  ASSERT_EQ(ZSTD_compressStream2(c, &ob, &ib, ZSTD_e_end), 0u);
  ZSTD_freeCCtx(c);
  out.resize(ob.pos);
  std::vector<std::byte> back(in.size());
  EXPECT_EQ(DecompressCluster(CompressionType::kZstd, out, back), 0);
  EXPECT_EQ(back, in);
}

// A warm thread reuses its contexts: no set-up, and for zlib (whose
// allocations go through our allocator hooks) no allocation at all.
TEST(CodecTest, ContextsAreSetUpOncePerThread) {
  const auto in = Cluster(65536);
  std::vector<std::byte> back(in.size());
  std::vector<std::byte> out(in.size() - 1);
  auto round_trips = [&](CompressionType type, int times) {
    for (int i = 0; i < times; ++i) {
      const int64_t n = CompressCluster(type, in, out);
      if (n <= 0 || DecompressCluster(type, std::span(out).first(n), back) != 0) return false;
    }
    return true;
  };
  std::thread t([&] {
    EXPECT_EQ(CodecStatsForThisThread().contexts_created, 0u);
    for (auto type : kBoth) ASSERT_TRUE(round_trips(type, 1));
    EXPECT_EQ(CodecStatsForThisThread().contexts_created, 4u);
    testing::AllocationCounter allocs;
    const bool ok = round_trips(CompressionType::kZlib, 200);
    const uint64_t n = allocs.count();
    EXPECT_TRUE(ok);
    EXPECT_EQ(n, 0u) << allocs.Describe();
    EXPECT_TRUE(round_trips(CompressionType::kZstd, 200));
    EXPECT_EQ(CodecStatsForThisThread().contexts_created, 4u);
  });
  t.join();
}

}  // namespace
}  // namespace uq::engine
