// The engine simulation with real threads: 2 or 4 std::threads, each with its
// own executor (a run queue standing in for a ublk queue's event loop), issue
// seeded random requests concurrently against ONE Qcow2Image on in-memory
// files, compared with a flat byte-array model. Every file operation yields
// to the issuing thread's run queue (YieldFile), so each thread keeps many
// requests in flight and completes them in random order, while the other
// threads do the same against the same caches, allocator and locks.
//
// The model stays exact because no two requests whose byte ranges overlap
// are in flight at once if either mutates (a shared in-flight registry; reads
// may overlap reads). Requests in one cluster, one L2 slice or one refcount
// block do run concurrently from different threads: that is the point.
// After the threads join, the image is closed and checked (no leaks, no
// corruption), reopened and compared with the model; a second, shorter
// threaded phase runs on the reopened image, then check and compare again.
//
// Thread interleavings are not reproducible from the seed; the seed fixes
// the configuration and every thread's op stream, so a failing seed is worth
// rerunning a few times.
//
// Environment: UQ_SIM_SEED overrides every test's seed; UQ_SIM_SCALE
// multiplies the op counts.
//
// The harness is ThreadedSimulation (threaded_simulation_util.h); this file
// holds the configurations and runs each with 2 and 4 threads.
#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <string>
#include <tuple>

#include "format/header.h"
#include "tests/engine/threaded_simulation_util.h"

namespace uq::engine::testing {
namespace {

struct NamedConfig {
  const char* name;
  ThreadedConfig config;
};

const NamedConfig kConfigs[] = {
    {"Cluster64K", {.seed = 201}},
    {"ExtendedL2Cluster64KQcow2Backing",
     {.extended_l2 = true, .backing = BackingKind::kQcow2, .seed = 202}},
    {"ExtendedL2Cluster128KRawBacking",
     {.cluster_bits = 17,
      .extended_l2 = true,
      .backing = BackingKind::kRaw,
      .size_bytes = 16 << 20,
      .seed = 203}},
    {"Cluster4KTinyCachesQcow2Backing",
     {.cluster_bits = 12,
      .refcount_order = 3,
      .backing = BackingKind::kQcow2,
      .l2_cache_bytes = 2 * 4096,
      .refcount_cache_bytes = 2 * 4096,
      .size_bytes = 4 << 20,
      .max_io_bytes = 32 << 10,
      .seed = 204}},
    {"Cluster512TinyCachesRefcount1Bit",
     {.cluster_bits = 9,
      .refcount_order = 0,
      .l2_cache_bytes = 2 * 512,
      .refcount_cache_bytes = 2 * 512,
      .size_bytes = 2 << 20,
      .max_io_bytes = 8192,
      .seed = 205}},
    {"ExtendedL2ZstdTinyCaches",
     {.cluster_bits = 14,
      .extended_l2 = true,
      .l2_cache_bytes = 2 * 4096,
      .refcount_cache_bytes = 2 * 4096,
      .compression = format::CompressionType::kZstd,
      .size_bytes = 4 << 20,
      .seed = 206}},
    {"HotClustersExtendedL2",
     {.extended_l2 = true, .size_bytes = 1 << 20, .hot_clusters = 2, .seed = 207}},
    {"HotClustersExtendedL2Cluster128KQcow2Backing",
     {.cluster_bits = 17,
      .extended_l2 = true,
      .backing = BackingKind::kQcow2,
      .size_bytes = 2 << 20,
      .hot_clusters = 3,
      .seed = 208}},
    {"HotClustersStandardL2RawBacking",
     {.cluster_bits = 14,
      .backing = BackingKind::kRaw,
      .size_bytes = 1 << 20,
      .hot_clusters = 2,
      .seed = 209}},
    // Refcount blocks fill up and the refcount table grows while every
    // thread allocates.
    {"Cluster512Refcount64BitGrowsRefcountTable",
     {.cluster_bits = 9,
      .refcount_order = 6,
      .size_bytes = 6 << 20,
      .max_io_bytes = 64 << 10,
      .seed = 213}},
    // The first write of each thread races to set the dirty bit.
    {"LazyRefcountsQcow2Backing",
     {.cluster_bits = 13,
      .backing = BackingKind::kQcow2,
      .lazy_refcounts = true,
      .size_bytes = 4 << 20,
      .max_io_bytes = 32 << 10,
      .seed = 214}},
    // Partitioned (see stripe_bytes): every thread in every cluster, one
    // subcluster each.
    {"PartitionedSubclustersExtendedL2QcowBacking",
     {.extended_l2 = true,
      .backing = BackingKind::kQcow2,
      .size_bytes = 1 << 20,
      .ops = 40000,
      .seed = 210,
      .stripe_bytes = 2048}},
    {"PartitionedSectorsStandardL2RawBacking",
     {.cluster_bits = 14,
      .backing = BackingKind::kRaw,
      .size_bytes = 1 << 20,
      .ops = 40000,
      .seed = 211,
      .stripe_bytes = 4096}},
    {"PartitionedClustersTinyCaches",
     {.cluster_bits = 12,
      .refcount_order = 3,
      .l2_cache_bytes = 2 * 4096,
      .refcount_cache_bytes = 2 * 4096,
      .size_bytes = 4 << 20,
      .ops = 20000,
      .max_io_bytes = 32 << 10,
      .seed = 212,
      .stripe_bytes = 4 * 4096}},
};

class ThreadedSimulationTest : public ::testing::TestWithParam<std::tuple<size_t, int>> {};

TEST_P(ThreadedSimulationTest, MatchesModel) {
  const auto [config, threads] = GetParam();
  ThreadedConfig c = kConfigs[config].config;
  c.seed += static_cast<uint64_t>(threads) * 100;  // 2 and 4 threads get different streams
  ThreadedSimulation(c, threads).Run();
}

INSTANTIATE_TEST_SUITE_P(All, ThreadedSimulationTest,
                         ::testing::Combine(::testing::Range<size_t>(0, std::size(kConfigs)),
                                            ::testing::Values(2, 4)),
                         [](const ::testing::TestParamInfo<std::tuple<size_t, int>>& info) {
                           return std::string(kConfigs[std::get<0>(info.param)].name) + "_" +
                                  std::to_string(std::get<1>(info.param)) + "Threads";
                         });

}  // namespace
}  // namespace uq::engine::testing
