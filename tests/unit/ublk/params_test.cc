#include "src/ublk/params.h"

#include <gtest/gtest.h>

#include "src/ublk/ublk_uapi.h"

namespace uq::ublk {
namespace {

TEST(ParamsTest, Qcow2ClusterGeometry) {
  Geometry g;
  g.size_bytes = 10ULL << 30;
  g.granularity_bytes = 64 * 1024;
  g.max_io_buf_bytes = 512 * 1024;
  Params p = ComputeParams(g);
  EXPECT_EQ(p.len, 64u);
  EXPECT_EQ(p.types, kParamTypeBasic | kParamTypeDiscard);
  EXPECT_EQ(p.basic.attrs, kAttrVolatileCache | kAttrFua);
  EXPECT_EQ(p.basic.logical_bs_shift, 9);
  EXPECT_EQ(p.basic.physical_bs_shift, 12);
  EXPECT_EQ(p.basic.io_min_shift, 16);
  EXPECT_EQ(p.basic.io_opt_shift, 16);
  EXPECT_EQ(p.basic.max_sectors, 1024u);
  EXPECT_EQ(p.basic.chunk_sectors, 128u);
  EXPECT_EQ(p.basic.dev_sectors, (10ULL << 30) >> 9);
  EXPECT_EQ(p.discard.discard_granularity, 64u * 1024);
  EXPECT_EQ(p.discard.max_discard_segments, 1);
  EXPECT_GT(p.discard.max_discard_sectors, 0u);
  EXPECT_GT(p.discard.max_write_zeroes_sectors, 0u);
}

TEST(ParamsTest, RawAndSmallClustersDoNotSplit) {
  Geometry g;
  g.size_bytes = 1 << 20;
  g.granularity_bytes = 4096;
  g.max_io_buf_bytes = 512 * 1024;
  EXPECT_EQ(ComputeParams(g).basic.chunk_sectors, 0u);
  g.granularity_bytes = 512;
  Params p = ComputeParams(g);
  EXPECT_EQ(p.basic.chunk_sectors, 0u);
  EXPECT_EQ(p.basic.io_min_shift, 12);  // never below the physical block
  EXPECT_EQ(p.discard.discard_granularity, 512u);
}

TEST(ParamsTest, HugeClustersClampIoHintsToBuffer) {
  Geometry g;
  g.size_bytes = 1ULL << 40;
  g.granularity_bytes = 2 * 1024 * 1024;
  g.max_io_buf_bytes = 512 * 1024;
  Params p = ComputeParams(g);
  EXPECT_EQ(p.basic.io_opt_shift, 19);
  EXPECT_EQ(p.basic.chunk_sectors, 4096u);
}

TEST(ParamsTest, ReadOnlyHasNoDiscard) {
  Geometry g;
  g.size_bytes = 1 << 20;
  g.granularity_bytes = 65536;
  g.read_only = true;
  g.max_io_buf_bytes = 1 << 20;
  Params p = ComputeParams(g);
  EXPECT_EQ(p.types, kParamTypeBasic);
  EXPECT_TRUE(p.basic.attrs & kAttrReadOnly);
  EXPECT_EQ(p.discard.discard_granularity, 0u);
}

TEST(ParamsTest, WritethroughAdvertisesNoVolatileCache) {
  Geometry g;
  g.size_bytes = 1 << 20;
  g.max_io_buf_bytes = 4096;
  g.writethrough = true;
  Params p = ComputeParams(g);
  EXPECT_EQ(p.basic.attrs & (kAttrVolatileCache | kAttrFua), 0u);
}

TEST(ParamsTest, SizeRoundsDownToSectors) {
  Geometry g;
  g.size_bytes = 1000;
  g.max_io_buf_bytes = 4096;
  EXPECT_EQ(ComputeParams(g).basic.dev_sectors, 1u);
}

TEST(UapiTest, IoctlEncodingMatchesKernel) {
  // _IOWR('u', 0x04, 32-byte struct) = 0xc0207504; _IOR('u', 0x02, ...) = 0x80207502.
  EXPECT_EQ(IoctlCtrl(kCmdAddDev), 0xc0207504u);
  EXPECT_EQ(IoctlCtrl(kCmdGetDevInfo), 0x80207502u);
  EXPECT_EQ(IoctlCtrl(kCmdGetQueueAffinity), 0x80207501u);
  EXPECT_EQ(IoctlCtrl(kCmdEndUserRecovery), 0xc0207511u);
  // _IOWR('u', 0x20, 16-byte struct) = 0xc0107520.
  EXPECT_EQ(IoctlIo(kIoFetchReq), 0xc0107520u);
  EXPECT_EQ(IoctlIo(kIoCommitAndFetchReq), 0xc0107521u);
}

}  // namespace
}  // namespace uq::ublk
