// Differential test: short random op streams on small images, applied by
// qemu-io and by `qcow2-img io`, with QEMU as the referee.
//
// Each stream starts from a small image (2-8 clusters, sometimes with a partial
// last cluster) made by qemu-img and prepared by qemu-io (pattern writes, zero
// writes, compressed clusters, and for overlays the backing file's contents).
// It then runs 4-12 random operations (write, write-zeroes with and without
// unmap, discard, flush, reads) whose offsets and lengths are multiples of 512
// bytes picked without regard to alignment, half of them near a subcluster or
// cluster edge so that requests begin and end inside (sub)clusters. A flat
// model follows the guest contents; discards follow QEMU's qcow2 driver (whole
// clusters read as zero, partly covered clusters keep their contents, version
// 2 images with a backing file ignore discards).
//
// Per stream:
//   1. qemu-io runs the stream on one copy, then a sweep of `read -P` over the
//      whole disk: the model agrees with QEMU;
//   2. `qcow2-img io` runs the same stream and sweep on another copy;
//   3. qemu-io runs the sweep on our result (what QEMU reads from our image is
//      what our reader read), so both results hold identical contents;
//   4. `qemu-img check` of our result exits 0 (no corruption, no leak).
// qemu-io runs one process per batch of streams (open/close per image); a
// batch that fails is rerun stream by stream to name the failing streams.
//
// Streams per variant: 300 by default, 25,000 with UQ_LONG=1, or
// UQ_DIFF_STREAMS=N. The run's seed is printed; stream k of a run has seed
// SEED + k, and UQ_DIFF_SEED=SEED UQ_DIFF_FIRST=k UQ_DIFF_STREAMS=1 reruns it
// alone (the failure message prints that command line).
//
// The harness is in differential_util.h; this file holds the test and its
// variants.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <iostream>
#include <random>
#include <vector>

#include "tests/interop/engine/differential_util.h"

namespace uq::interop::differential {
namespace {

TEST_P(Differential, SameContentsAsQemu) {
  const Variant& v = GetParam();
  const uint64_t run_seed = EnvU64("UQ_DIFF_SEED", std::random_device{}());
  const uint64_t count = EnvU64("UQ_DIFF_STREAMS", EnvU64("UQ_LONG", 0) ? 25000 : 300);
  const uint64_t first = EnvU64("UQ_DIFF_FIRST", 0);
  std::cout << "[ seed ] " << v.name << " UQ_DIFF_SEED=" << run_seed << ", " << count
            << " streams from " << first << "\n";
  constexpr uint64_t kBatch = 100;
  int batch = 0;
  for (uint64_t begin = first; begin < first + count && failures_ < 5; begin += kBatch) {
    std::vector<Stream> streams;
    for (uint64_t k = begin; k < std::min(first + count, begin + kBatch); ++k) {
      streams.push_back(StreamMaker(v, run_seed + k).Make());
    }
    ASSERT_NO_FATAL_FAILURE(RunBatch(streams, run_seed, begin, batch++));
  }
  std::cout << "[ done ] " << v.name << ": " << count << " streams, " << failures_ << " failed\n";
}

INSTANTIATE_TEST_SUITE_P(
    Streams, Differential,
    ::testing::Values(Variant{"std64k", 16, false, 3, Backing::kNone},
                      Variant{"std4k_v2", 12, false, 2, Backing::kNone},
                      Variant{"ext32k", 15, true, 3, Backing::kNone},
                      Variant{"ext128k", 17, true, 3, Backing::kNone},
                      Variant{"std64k_qcow2_backing", 16, false, 3, Backing::kQcow2},
                      Variant{"ext64k_raw_backing", 16, true, 3, Backing::kRaw},
                      Variant{"ext16k_qcow2_backing", 14, true, 3, Backing::kQcow2},
                      Variant{"std16k_v2_raw_backing", 14, false, 2, Backing::kRaw}),
    [](const ::testing::TestParamInfo<Variant>& info) { return info.param.name; });

}  // namespace
}  // namespace uq::interop::differential
