// Benchmarks of the engine's parts, one level below the Device API: the place
// for BM_L2Lookup_Hit, BM_L2Lookup_Miss (the L2 map: slot lookup with its
// slice cached / not cached) and BM_Alloc_Cluster (the refcount store and
// cluster allocator), added once the engine is split into those components
// (issue 7). Build them on an in-memory image as device_bench.cc does
// (bench_util.h: OpenBenchImage, MixedData) and register each with BENCHMARK().
