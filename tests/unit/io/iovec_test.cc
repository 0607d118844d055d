#include "src/io/iovec.h"

#include <gtest/gtest.h>

#include <cstring>
#include <limits>
#include <vector>

#include "tests/unit/io/test_util.h"

namespace uq::io {
namespace {

using testing::AllZero;
using testing::Pattern;

// Three buffers of 10, 0 and 20 bytes over one 30-byte backing array.
class IovecTest : public ::testing::Test {
 protected:
  IovecTest() : bytes_(Pattern(1, 30)) {
    iov_[0] = {bytes_.data(), 10};
    iov_[1] = {bytes_.data() + 10, 0};
    iov_[2] = {bytes_.data() + 10, 20};
  }
  // The slice's pieces as (offset into bytes_, length) pairs.
  std::vector<std::pair<ptrdiff_t, size_t>> Slice(uint64_t begin, uint64_t len) {
    IovVec out;
    IovSlice(iov_, begin, len, &out);
    std::vector<std::pair<ptrdiff_t, size_t>> r;
    for (const iovec& v : out)
      r.emplace_back(static_cast<std::byte*>(v.iov_base) - bytes_.data(), v.iov_len);
    return r;
  }

  std::vector<std::byte> bytes_;
  iovec iov_[3];
};

using Pieces = std::vector<std::pair<ptrdiff_t, size_t>>;

TEST_F(IovecTest, SliceTrimsEndsAndSkipsEmptyEntries) {
  EXPECT_EQ(Slice(0, 30), (Pieces{{0, 10}, {10, 20}}));
  EXPECT_EQ(Slice(3, 12), (Pieces{{3, 7}, {10, 5}}));
  EXPECT_EQ(Slice(10, 5), (Pieces{{10, 5}}));  // starts exactly at an entry boundary
  EXPECT_EQ(Slice(4, 6), (Pieces{{4, 6}}));    // ends exactly at one
  EXPECT_EQ(Slice(29, 1), (Pieces{{29, 1}}));
}

TEST_F(IovecTest, SliceOfNothingOrPastTheEnd) {
  EXPECT_EQ(Slice(5, 0), Pieces{});
  EXPECT_EQ(Slice(30, 5), Pieces{});
  EXPECT_EQ(Slice(25, 50), (Pieces{{25, 5}}));  // clipped where the array ends
}

TEST_F(IovecTest, SliceAppends) {
  IovVec out;
  IovSlice(iov_, 0, 2, &out);
  IovSlice(iov_, 12, 2, &out);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].iov_base, bytes_.data());
  EXPECT_EQ(out[1].iov_base, bytes_.data() + 12);
  EXPECT_EQ(IovLength(out), 4u);
}

TEST_F(IovecTest, ZeroIovAndZeroIovFrom) {
  ZeroIovFrom(iov_, 8);
  EXPECT_EQ(std::memcmp(bytes_.data(), Pattern(1, 8).data(), 8), 0);
  EXPECT_TRUE(AllZero(bytes_.data() + 8, 22));
  const auto fresh = Pattern(2, 30);
  std::memcpy(bytes_.data(), fresh.data(), fresh.size());  // iov_ keeps pointing at bytes_
  ZeroIov(std::span<const iovec>(iov_).first(1));
  EXPECT_TRUE(AllZero(bytes_.data(), 10));
  EXPECT_EQ(std::memcmp(bytes_.data() + 10, fresh.data() + 10, 20), 0);
}

TEST_F(IovecTest, CopyRoundTripAndLength) {
  EXPECT_EQ(IovLength(iov_), 30u);
  std::vector<std::byte> flat(30);
  CopyFromIov(iov_, flat.data());
  EXPECT_EQ(flat, bytes_);
  auto other = Pattern(3, 30);
  CopyToIov(iov_, other.data());
  EXPECT_EQ(bytes_, other);
  iovec huge[2] = {{nullptr, std::numeric_limits<size_t>::max()}, {nullptr, 2}};
  EXPECT_EQ(IovLength(huge), std::numeric_limits<uint64_t>::max());
}

}  // namespace
}  // namespace uq::io
