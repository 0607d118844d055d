// The request machinery below the engine: what one Task await and one
// in-memory 4 KiB read cost (coroutine frames come from the frame pool).
#include <benchmark/benchmark.h>

#include <vector>

#include "src/io/mem_file.h"
#include "src/io/run_sync.h"

namespace uq::bench {
namespace {

Task<int> Leaf(int v) { co_return v + 1; }
Task<int> Caller(int v) { co_return co_await Leaf(v); }

// Two frames created, run and freed per iteration.
void BM_TaskAwait(benchmark::State& state) {
  int v = 0;
  for (auto _ : state) {
    v = io::RunSync(nullptr, Caller(v));
    benchmark::DoNotOptimize(v);
  }
}
BENCHMARK(BM_TaskAwait);

void BM_MemFileRead4k(benchmark::State& state) {
  io::MemFile mem(io::MemFile::Mode::kImmediate, std::vector<std::byte>(1 << 20));
  std::vector<std::byte> buf(4096);
  uint64_t off = 0;
  for (auto _ : state) {
    if (io::RunSync(nullptr, mem.Read(off, buf)) != 4096) {
      state.SkipWithError("read failed");
      return;
    }
    off = (off + 4096) % (1 << 20);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * buf.size()));
}
BENCHMARK(BM_MemFileRead4k);

}  // namespace
}  // namespace uq::bench
