// Helpers shared by the src/io tests.
#ifndef UQ_TESTS_UNIT_IO_TEST_UTIL_H_
#define UQ_TESTS_UNIT_IO_TEST_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

namespace uq::io::testing {

// Bytes derived from (seed, index): every position of every buffer differs.
inline std::vector<std::byte> Pattern(uint64_t seed, size_t length_bytes) {
  std::vector<std::byte> out(length_bytes);
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i < length_bytes; i += 8) {
    uint64_t word = rng();
    for (size_t j = i; j < i + 8 && j < length_bytes; ++j, word >>= 8) {
      out[j] = static_cast<std::byte>(word & 0xff);
    }
  }
  return out;
}

// Seed for a randomized test: $UQ_SEED if set (to replay a failure), else
// random. Printed so a failing run can be reproduced.
inline uint64_t TestSeed() {
  uint64_t seed;
  if (const char* env = std::getenv("UQ_SEED")) {
    seed = std::strtoull(env, nullptr, 0);
  } else {
    seed = std::random_device{}();
    seed = (seed << 32) ^ std::random_device{}();
  }
  std::printf("seed=%llu (replay with UQ_SEED=%llu)\n", static_cast<unsigned long long>(seed),
              static_cast<unsigned long long>(seed));
  return seed;
}

inline bool AllZero(const std::byte* p, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (p[i] != std::byte{0}) return false;
  }
  return true;
}

}  // namespace uq::io::testing

#endif  // UQ_TESTS_UNIT_IO_TEST_UTIL_H_
