// Deterministic simulation of the qcow2 engine (TigerBeetle-style): seeded
// random op streams against the engine on in-memory files, compared with a
// flat byte-array model. Many requests are in flight at once and the file
// operations complete in random order (MemFile deferred mode). After the run
// the image is closed, checked structurally (CheckImage), reopened and
// compared again.
//
// Environment: UQ_SIM_SEED overrides every test's seed; UQ_SIM_SCALE
// multiplies the op counts (soak: UQ_SIM_SCALE=50).
//
// The harness is Simulation (simulation_util.h); this file holds the
// configurations, one test each.
#include <gtest/gtest.h>

#include "format/header.h"
#include "tests/engine/simulation_util.h"

namespace uq::engine::testing {
namespace {

TEST(SimulationTest, Cluster64K) { Simulation(SimConfig{.seed = 101}).Run(); }

TEST(SimulationTest, Cluster512Refcount1Bit) {
  Simulation(SimConfig{.cluster_bits = 9,
                       .refcount_order = 0,
                       .size_bytes = 4 << 20,
                       .max_io_bytes = 8192,
                       .seed = 102})
      .Run();
}

TEST(SimulationTest, Cluster512Refcount64BitGrowsRefcountTable) {
  Simulation(SimConfig{.cluster_bits = 9,
                       .refcount_order = 6,
                       .size_bytes = 6 << 20,
                       .ops = 2500,
                       .max_io_bytes = 64 << 10,
                       .seed = 103})
      .Run();
}

TEST(SimulationTest, Cluster4KRefcount8BitTinyCacheQcow2Backing) {
  Simulation(SimConfig{.cluster_bits = 12,
                       .refcount_order = 3,
                       .backing = BackingKind::kQcow2,
                       .l2_cache_bytes = 2 * 4096,
                       .refcount_cache_bytes = 2 * 4096,
                       .size_bytes = 4 << 20,
                       .max_io_bytes = 32 << 10,
                       .seed = 104})
      .Run();
}

TEST(SimulationTest, ExtendedL2RawBacking) {
  Simulation(SimConfig{.cluster_bits = 15,
                       .refcount_order = 5,
                       .extended_l2 = true,
                       .backing = BackingKind::kRaw,
                       .backing_format_named = false,
                       .size_bytes = 8 << 20,
                       .seed = 105})
      .Run();
}

TEST(SimulationTest, ExtendedL2ZstdTinyCache) {
  Simulation(SimConfig{.cluster_bits = 14,
                       .refcount_order = 4,
                       .extended_l2 = true,
                       .l2_cache_bytes = 2 * 4096,
                       .refcount_cache_bytes = 2 * 4096,
                       .compression = format::CompressionType::kZstd,
                       .size_bytes = 4 << 20,
                       .seed = 106})
      .Run();
}

TEST(SimulationTest, Cluster2MRefcount2Bit) {
  Simulation(SimConfig{.cluster_bits = 21,
                       .refcount_order = 1,
                       .size_bytes = 24 << 20,
                       .ops = 300,
                       .max_inflight = 8,
                       .max_io_bytes = 1 << 20,
                       .seed = 107})
      .Run();
}

TEST(SimulationTest, Version2RawBacking) {
  Simulation(SimConfig{.cluster_bits = 12,
                       .version = 2,
                       .backing = BackingKind::kRaw,
                       .size_bytes = 4 << 20,
                       .max_io_bytes = 32 << 10,
                       .seed = 108})
      .Run();
}

TEST(SimulationTest, ODirectAlignmentSmallClustersCompressedBacking) {
  Simulation(SimConfig{.cluster_bits = 10,
                       .refcount_order = 4,
                       .backing = BackingKind::kQcow2,
                       .size_bytes = 4 << 20,
                       .max_io_bytes = 32 << 10,
                       .seed = 110,
                       .strict_alignment = 4096})
      .Run();
}

TEST(SimulationTest, LazyRefcountsCrashRepair) {
  Simulation(SimConfig{.cluster_bits = 13,
                       .refcount_order = 4,
                       .backing = BackingKind::kQcow2,
                       .lazy_refcounts = true,
                       .size_bytes = 4 << 20,
                       .max_io_bytes = 32 << 10,
                       .seed = 109})
      .Run();
}

// Requests concentrated on two or three clusters: they begin and end inside
// subclusters and meet each other there (COW, zeroing and allocation racing).
TEST(SimulationTest, HotClustersExtendedL2) {
  Simulation(SimConfig{.cluster_bits = 16,
                       .extended_l2 = true,
                       .size_bytes = 1 << 20,
                       .ops = 3000,
                       .seed = 111,
                       .hot_clusters = 2})
      .Run();
}

TEST(SimulationTest, HotClustersExtendedL2QcowBacking) {
  Simulation(SimConfig{.cluster_bits = 15,
                       .extended_l2 = true,
                       .backing = BackingKind::kQcow2,
                       .size_bytes = 1 << 20,
                       .ops = 3000,
                       .seed = 112,
                       .hot_clusters = 3})
      .Run();
}

TEST(SimulationTest, HotClustersStandardL2RawBacking) {
  Simulation(SimConfig{.cluster_bits = 14,
                       .backing = BackingKind::kRaw,
                       .size_bytes = 1 << 20,
                       .ops = 3000,
                       .seed = 113,
                       .hot_clusters = 2})
      .Run();
}

TEST(SimulationTest, HotClustersVersion2QcowBacking) {
  Simulation(SimConfig{.cluster_bits = 13,
                       .version = 2,
                       .backing = BackingKind::kQcow2,
                       .size_bytes = 1 << 20,
                       .ops = 3000,
                       .seed = 114,
                       .hot_clusters = 3})
      .Run();
}

}  // namespace
}  // namespace uq::engine::testing
