// Benchmarks of the engine's parts, one level below the Device API, on an
// in-memory image: the L2 map's entry lookup with its slice cached or not,
// and the cluster allocator.
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "src/engine/qcow2_image.h"
#include "src/io/run_sync.h"
#include "tests/bench/bench_util.h"

namespace uq::bench {
namespace {

constexpr uint64_t kClusterBytes = 65536;

engine::Qcow2Image* AsQcow2(engine::Device* d) { return static_cast<engine::Qcow2Image*>(d); }

Task<int> Lookup(engine::ImageParts* p, uint64_t guest_offset, format::L2Entry* out) {
  engine::ClusterEntry ce;
  int r = co_await p->LockEntry(p->geo.Locate(guest_offset), false, &ce);
  *out = ce.entry;
  co_return r;
}

// A 64 GiB image with one allocated cluster in each of its 128 L2 tables, so
// every lookup finds a table; `l2_cache_bytes` decides hits or misses.
void RunLookups(benchmark::State& state, uint64_t l2_cache_bytes, uint64_t span_bytes) {
  format::CreateOptions o;
  o.size_bytes = uint64_t{64} << 30;
  auto file = engine::testing::MakeImage(o);
  engine::OpenOptions oo;
  oo.l2_cache_bytes = l2_cache_bytes;
  auto d = engine::testing::OpenSync(file.get(), std::move(oo));
  if (!d.ok()) {
    state.SkipWithError("opening the image failed");
    return;
  }
  const std::vector<std::byte> data(4096, std::byte{1});
  const uint64_t table_span = kClusterBytes * (kClusterBytes / 8);
  for (uint64_t off = 0; off < o.size_bytes; off += table_span) {
    if (engine::testing::WriteSync(**d, off, data) != 0) {
      state.SkipWithError("write failed");
      return;
    }
  }
  engine::ImageParts& parts = AsQcow2(d->get())->parts_for_testing();
  std::mt19937_64 rng(9);
  format::L2Entry e;
  for (auto _ : state) {
    const uint64_t off = rng() % (span_bytes / kClusterBytes) * kClusterBytes;
    if (io::RunSync(nullptr, Lookup(&parts, off, &e)) != 0) {
      state.SkipWithError("lookup failed");
      return;
    }
    benchmark::DoNotOptimize(e);
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}

// Lookups inside 16 GiB of guest disk: 32 slices of L2 entries, all cached.
void BM_L2Lookup_Hit(benchmark::State& state) { RunLookups(state, 8 << 20, uint64_t{16} << 30); }
BENCHMARK(BM_L2Lookup_Hit);

// Lookups over the whole 64 GiB with a two-slice cache: nearly every lookup
// reads its slice (from memory) and evicts another.
void BM_L2Lookup_Miss(benchmark::State& state) { RunLookups(state, 2 * 4096, uint64_t{64} << 30); }
BENCHMARK(BM_L2Lookup_Miss);

Task<int64_t> AllocateAndGiveBack(engine::ImageParts* p) {
  co_await p->meta->lock().Lock();
  cache::MutexGuard guard(&p->meta->lock());
  const int64_t host = co_await p->refs->Allocate(1);
  if (host >= 0) co_await p->refs->Unallocate(static_cast<uint64_t>(host));
  co_return host;
}

// One cluster allocated (free-space search, refcount 0 -> 1 under the
// metadata lock) and given back (1 -> 0), so the image does not grow.
void BM_Alloc_Cluster(benchmark::State& state) {
  BenchImage img = OpenBenchImage(state, uint64_t{1} << 30);
  if (img.device == nullptr) return;
  engine::ImageParts& parts = AsQcow2(img.device.get())->parts_for_testing();
  for (auto _ : state) {
    const int64_t host = io::RunSync(nullptr, AllocateAndGiveBack(&parts));
    if (host < 0) {
      state.SkipWithError("allocation failed");
      return;
    }
    benchmark::DoNotOptimize(host);
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}
BENCHMARK(BM_Alloc_Cluster);

}  // namespace
}  // namespace uq::bench
