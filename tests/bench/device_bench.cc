// 4 KiB requests through the public Device API (engine::OpenImage) on an
// in-memory image: the engine's per-request cost without a disk.
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "tests/bench/bench_util.h"

namespace uq::bench {
namespace {

constexpr uint64_t kRequestBytes = 4096;
constexpr uint64_t kClusterBytes = 65536;

// Random 4 KiB reads inside 16 MiB of allocated clusters.
void BM_Read4k_Allocated(benchmark::State& state) {
  constexpr uint64_t kDataBytes = 16 << 20;
  BenchImage img = OpenBenchImage(state, 1 << 30);
  if (img.device == nullptr) return;
  const std::vector<std::byte> data = MixedData(kClusterBytes, 2);
  for (uint64_t off = 0; off < kDataBytes; off += kClusterBytes) {
    if (engine::testing::WriteSync(*img.device, off, data) != 0) {
      state.SkipWithError("allocating write failed");
      return;
    }
  }
  std::vector<std::byte> buf(kRequestBytes);
  std::mt19937_64 rng(3);
  for (auto _ : state) {
    const uint64_t off = rng() % (kDataBytes / kRequestBytes) * kRequestBytes;
    if (engine::testing::ReadSync(*img.device, off, buf) != 0) {
      state.SkipWithError("read failed");
      return;
    }
    benchmark::DoNotOptimize(buf.data());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}
BENCHMARK(BM_Read4k_Allocated);

// 4 KiB writes, each into a cluster never written before (allocation of the
// cluster, its refcount and L2 entry; the first write of each 512 MiB also
// allocates an L2 table). The image is replaced, untimed, every kPerImage
// writes to bound the memory the in-memory file grows to; the default 64 KiB
// clusters.
void BM_Write4k_Allocating(benchmark::State& state) {
  constexpr uint64_t kPerImage = 1024;
  const std::vector<std::byte> data = MixedData(kRequestBytes, 4);
  BenchImage img;
  uint64_t written = kPerImage;
  for (auto _ : state) {
    if (written == kPerImage) {
      state.PauseTiming();
      img = OpenBenchImage(state, uint64_t{64} << 30, (kPerImage + 16) * kClusterBytes);
      written = 0;
      state.ResumeTiming();
      if (img.device == nullptr) return;
    }
    if (engine::testing::WriteSync(*img.device, written * kClusterBytes, data) != 0) {
      state.SkipWithError("allocating write failed");
      return;
    }
    ++written;
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}
BENCHMARK(BM_Write4k_Allocating);

}  // namespace
}  // namespace uq::bench
