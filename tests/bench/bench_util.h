// Helpers shared by the microbenchmarks: an in-memory qcow2 image opened
// through the public Device API, as the engine tests build theirs.
#ifndef UQ_TESTS_BENCH_BENCH_UTIL_H_
#define UQ_TESTS_BENCH_BENCH_UTIL_H_

#include <benchmark/benchmark.h>

#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "tests/engine/test_util.h"

namespace uq::bench {

// A fresh image of `size_bytes` on a MemFile, opened writable. `device` is
// null (and the benchmark marked failed) if anything goes wrong. With
// `grow_room_bytes`, memory for the file to grow by that much is reserved and
// touched now, so a timed loop that extends the file measures the engine, not
// std::vector reallocating and the kernel faulting in fresh pages.
struct BenchImage {
  std::unique_ptr<io::MemFile> file;
  std::unique_ptr<engine::Device> device;
};

inline BenchImage OpenBenchImage(benchmark::State& state, uint64_t size_bytes,
                                 uint64_t grow_room_bytes = 0) {
  format::CreateOptions o;
  o.size_bytes = size_bytes;
  BenchImage img;
  img.file = engine::testing::MakeImage(o);
  if (img.file == nullptr) {
    state.SkipWithError("building the image failed");
    return img;
  }
  img.file->set_max_size_bytes(uint64_t{4} << 30);
  std::vector<std::byte>& bytes = img.file->data();
  const size_t initial = bytes.size();
  bytes.resize(initial + grow_room_bytes);
  bytes.resize(initial);  // keeps the capacity, and the pages stay mapped
  auto d = engine::testing::OpenSync(img.file.get(), {});
  if (!d.ok()) {
    state.SkipWithError("opening the image failed");
    return img;
  }
  img.device = std::move(*d);
  return img;
}

// Bytes that compress about as well as a filesystem's mixed contents
// (short runs from a small alphabet): neither all zeros nor noise.
inline std::vector<std::byte> MixedData(size_t bytes, uint64_t seed) {
  std::vector<std::byte> out(bytes);
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i < bytes;) {
    const auto value = static_cast<std::byte>('a' + rng() % 16);
    for (size_t run = 1 + rng() % 8; run > 0 && i < bytes; --run) out[i++] = value;
  }
  return out;
}

}  // namespace uq::bench

#endif  // UQ_TESTS_BENCH_BENCH_UTIL_H_
