#include "src/io/fault_file.h"

#include <gtest/gtest.h>

#include <cerrno>

#include "src/io/mem_file.h"
#include "src/io/run_sync.h"
#include "tests/unit/io/test_util.h"

namespace uq::io {
namespace {

class FaultFileTest : public ::testing::Test {
 protected:
  int64_t Write(uint64_t offset, size_t n) {
    std::vector<std::byte> buf(n, std::byte{1});
    return RunSync(nullptr, fault_.Write(offset, buf));
  }
  int64_t Read(uint64_t offset, size_t n) {
    std::vector<std::byte> buf(n);
    return RunSync(nullptr, fault_.Read(offset, buf));
  }

  MemFile mem_;
  FaultFile fault_{&mem_};
};

TEST_F(FaultFileTest, PassesThroughWithoutRules) {
  EXPECT_EQ(Write(0, 10), 10);
  EXPECT_EQ(Read(0, 10), 10);
  EXPECT_EQ(RunSync(nullptr, fault_.Flush()), 0);
  EXPECT_EQ(fault_.size_bytes(), 10u);
  EXPECT_EQ(fault_.ops_seen(), 3u);
  EXPECT_EQ(fault_.faults_injected(), 0u);
}

TEST_F(FaultFileTest, FailNthOperationOnce) {
  fault_.FailNth(3, ENOSPC);
  EXPECT_EQ(Write(0, 4), 4);
  EXPECT_EQ(Read(0, 4), 4);
  EXPECT_EQ(Write(4, 4), -ENOSPC);  // third op
  EXPECT_EQ(Write(4, 4), 4);        // once
  EXPECT_EQ(mem_.size_bytes(), 8u);
  EXPECT_EQ(fault_.faults_injected(), 1u);
}

TEST_F(FaultFileTest, FailNthOfKindCountsOnlyThatKind) {
  int id = fault_.FailNthOf(OpKind::kWrite, 2, EIO);
  EXPECT_EQ(Read(0, 1), 1);
  EXPECT_EQ(Write(0, 1), 1);
  EXPECT_EQ(Read(0, 1), 1);
  EXPECT_EQ(Write(100, 1), -EIO);
  // Failed before reaching the base: the write never happened.
  EXPECT_EQ(mem_.size_bytes(), 1u);
  EXPECT_EQ(fault_.rule_fired(id), 1u);
}

TEST_F(FaultFileTest, AlwaysFailsEveryFlush) {
  fault_.FailAlways(OpKind::kFlush, EIO);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(RunSync(nullptr, fault_.Flush()), -EIO);
  EXPECT_EQ(Write(0, 1), 1);
  EXPECT_EQ(mem_.counters().flushes, 0u);
}

TEST_F(FaultFileTest, RangeRuleMatchesOnlyOverlappingOps) {
  fault_.AddRule({.kinds = OpKindBit(OpKind::kWrite) | OpKindBit(OpKind::kWriteZeroes),
                  .offset_bytes = 4096,
                  .length_bytes = 512,
                  .error = EIO,
                  .once = false});
  EXPECT_EQ(Write(0, 4096), 4096);    // ends right before the range
  EXPECT_EQ(Write(4608, 100), 100);   // starts right after
  EXPECT_EQ(Write(4000, 100), -EIO);  // overlaps the start
  EXPECT_EQ(Write(4600, 100), -EIO);  // overlaps the end
  EXPECT_EQ(RunSync(nullptr, fault_.WriteZeroes(4096, 1)), -EIO);
  EXPECT_EQ(RunSync(nullptr, fault_.Discard(4096, 512)), 0);  // kind not selected
  EXPECT_EQ(Read(4096, 512), 512);
  EXPECT_EQ(RunSync(nullptr, fault_.Flush()), 0);  // no range: never matches
}

TEST_F(FaultFileTest, FailAfterIoAppliesButReportsError) {
  fault_.AddRule(
      {.kinds = OpKindBit(OpKind::kWrite), .error = EIO, .effect = FaultEffect::kFailAfterIo});
  EXPECT_EQ(Write(0, 16), -EIO);
  EXPECT_EQ(mem_.size_bytes(), 16u);
  EXPECT_EQ(mem_.data()[0], std::byte{1});
}

TEST_F(FaultFileTest, SkipThenFailAndRemoveRule) {
  int id = fault_.AddRule({.kinds = OpKindBit(OpKind::kRead), .skip = 1, .once = false});
  EXPECT_EQ(Read(0, 1), 1);
  EXPECT_EQ(Read(0, 1), -EIO);
  EXPECT_EQ(Read(0, 1), -EIO);
  fault_.RemoveRule(id);
  EXPECT_EQ(Read(0, 1), 1);
}

TEST_F(FaultFileTest, RecordingLogsEveryOperation) {
  fault_.set_recording(true);
  fault_.FailNthOf(OpKind::kTruncate, 1);
  EXPECT_EQ(Write(10, 5), 5);
  EXPECT_EQ(RunSync(nullptr, fault_.Discard(0, 3)), 0);
  EXPECT_EQ(RunSync(nullptr, fault_.Truncate(7)), -EIO);
  const auto& log = fault_.log();
  ASSERT_EQ(log.size(), 3u);
  EXPECT_EQ(log[0].kind, OpKind::kWrite);
  EXPECT_EQ(log[0].offset_bytes, 10u);
  EXPECT_EQ(log[0].length_bytes, 5u);
  EXPECT_FALSE(log[0].faulted);
  EXPECT_EQ(log[1].kind, OpKind::kDiscard);
  EXPECT_EQ(log[2].kind, OpKind::kTruncate);
  EXPECT_TRUE(log[2].faulted);
  EXPECT_EQ(fault_.ops_seen(OpKind::kWrite), 1u);
  EXPECT_EQ(mem_.size_bytes(), 15u);
}

// The fault-matrix pattern: discover the writes of a scenario, then fail each
// one in turn, checking the failure surfaces to the caller.
Task<int> Scenario(BlockFile* f) {
  std::vector<std::byte> buf(512, std::byte{9});
  for (int i = 0; i < 4; ++i) {
    int64_t r = co_await f->Write(512 * i, buf);
    if (r < 0) co_return static_cast<int>(r);
  }
  co_return co_await f->Flush();
}

TEST(FaultFileMatrixTest, EveryWritePointTimesErrnoTimesOnceAlways) {
  MemFile probe_mem;
  FaultFile probe(&probe_mem);
  probe.set_recording(true);
  ASSERT_EQ(RunSync(nullptr, Scenario(&probe)), 0);
  uint64_t writes = probe.ops_seen(OpKind::kWrite);
  ASSERT_EQ(writes, 4u);
  for (uint64_t n = 1; n <= writes; ++n) {
    for (int err : {EIO, ENOSPC}) {
      for (bool once : {true, false}) {
        MemFile mem;
        FaultFile fault(&mem);
        const auto& w = probe.log()[n - 1];
        fault.AddRule({.kinds = OpKindBit(OpKind::kWrite),
                       .offset_bytes = w.offset_bytes,
                       .length_bytes = w.length_bytes,
                       .error = err,
                       .once = once});
        EXPECT_EQ(RunSync(nullptr, Scenario(&fault)), -err) << n;
        EXPECT_EQ(mem.size_bytes(), 512 * (n - 1)) << n;
      }
    }
  }
}

}  // namespace
}  // namespace uq::io
