// Helpers shared by the src/io tests.
#ifndef UQ_TESTS_UNIT_IO_TEST_UTIL_H_
#define UQ_TESTS_UNIT_IO_TEST_UTIL_H_

#include <gtest/gtest.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <span>
#include <vector>

#include "src/io/file_wrapper.h"

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

// Fails misaligned I/O with -EINVAL, as an O_DIRECT file does. A misaligned
// read or write also records a test failure: a wrapper that promises aligned
// I/O (AlignedFile) must never let one through.
class StrictAlignFile final : public FileWrapper {
 public:
  StrictAlignFile(std::unique_ptr<BlockFile> f, uint64_t align)
      : FileWrapper(std::move(f)), a_(align) {}
  StrictAlignFile(BlockFile* f, uint64_t align) : FileWrapper(f), a_(align) {}
  Task<int64_t> ReadV(uint64_t o, std::span<const iovec> v) override {
    if (!Ok(o, v)) return ReadyTask<int64_t>(-EINVAL);
    return base()->ReadV(o, v);
  }
  Task<int64_t> WriteV(uint64_t o, std::span<const iovec> v) override {
    if (!Ok(o, v)) return ReadyTask<int64_t>(-EINVAL);
    return base()->WriteV(o, v);
  }
  Task<int> Discard(uint64_t o, uint64_t n) override {
    if ((o | n) % a_) return ReadyTask(-EINVAL);
    return base()->Discard(o, n);
  }
  Task<int> WriteZeroes(uint64_t o, uint64_t n) override {
    if ((o | n) % a_) return ReadyTask(-EINVAL);
    return base()->WriteZeroes(o, n);
  }
  uint64_t misaligned() const { return misaligned_; }

 private:
  bool Ok(uint64_t o, std::span<const iovec> v) {
    bool ok = o % a_ == 0;
    for (const iovec& x : v) {
      ok = ok && reinterpret_cast<uintptr_t>(x.iov_base) % a_ == 0 && x.iov_len % a_ == 0;
    }
    if (!ok) {
      ++misaligned_;
      ADD_FAILURE() << "misaligned I/O at offset " << o;
    }
    return ok;
  }
  uint64_t a_;
  uint64_t misaligned_ = 0;
};

}  // namespace uq::io::testing

#endif  // UQ_TESTS_UNIT_IO_TEST_UTIL_H_
