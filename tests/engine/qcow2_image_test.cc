// Targeted engine tests: open/close rules, header bits, snapshots, codecs.
#include "src/engine/qcow2_image.h"

#include <gtest/gtest.h>

#include "src/engine/check.h"
#include "src/engine/codec.h"
#include "tests/engine/test_util.h"

namespace uq::engine {
namespace {

TEST(CodecTest, ZlibRoundTrip) {
  std::vector<std::byte> in(65536);
  for (size_t i = 0; i < in.size(); ++i) in[i] = std::byte(i % 7);
  std::vector<std::byte> out(65535);
  int64_t n = CompressCluster(format::CompressionType::kZlib, in, out);
  ASSERT_GT(n, 0);
  std::vector<std::byte> back(65536);
  ASSERT_EQ(DecompressCluster(format::CompressionType::kZlib, std::span(out).first(n), back), 0);
  EXPECT_EQ(back, in);
}

}  // namespace
}  // namespace uq::engine
