// Cluster decompression (src/engine/codec.h): the cost of reading one
// compressed cluster, without the I/O.
#include <benchmark/benchmark.h>

#include <vector>

#include "src/engine/codec.h"
#include "tests/bench/bench_util.h"

namespace uq::bench {
namespace {

// Decompresses one cluster of state.range(0) bytes per iteration.
void DecompressLoop(benchmark::State& state, format::CompressionType type) {
  const size_t cluster = static_cast<size_t>(state.range(0));
  const std::vector<std::byte> data = MixedData(cluster, 1);
  std::vector<std::byte> compressed(cluster);
  const int64_t n = engine::CompressCluster(type, data, compressed);
  if (n <= 0) {
    state.SkipWithError("cluster did not compress");
    return;
  }
  compressed.resize(static_cast<size_t>(n));
  std::vector<std::byte> out(cluster);
  for (auto _ : state) {
    if (engine::DecompressCluster(type, compressed, out) != 0) {
      state.SkipWithError("decompression failed");
      return;
    }
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * cluster));
  state.counters["ratio"] = static_cast<double>(cluster) / static_cast<double>(n);
}

void BM_Decompress_Zlib(benchmark::State& state) {
  DecompressLoop(state, format::CompressionType::kZlib);
}
void BM_Decompress_Zstd(benchmark::State& state) {
  DecompressLoop(state, format::CompressionType::kZstd);
}
BENCHMARK(BM_Decompress_Zlib)->Arg(4096)->Arg(65536);
BENCHMARK(BM_Decompress_Zstd)->Arg(4096)->Arg(65536);

}  // namespace
}  // namespace uq::bench
