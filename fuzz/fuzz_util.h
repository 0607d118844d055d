// Helpers shared by the engine fuzz targets: a byte reader over the input
// (libFuzzer's FuzzedDataProvider is clang-only; the corpus replay builds with
// gcc), an abort that says which property failed, a sector hash, and synchronous
// drivers over immediate-mode MemFiles.
#ifndef UQ_FUZZ_FUZZ_UTIL_H_
#define UQ_FUZZ_FUZZ_UTIL_H_

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>

#include "src/engine/device.h"
#include "src/io/run_sync.h"

namespace uq::fuzz {

// A property the target asserts: prints it and aborts (libFuzzer saves the
// input as a crash; the corpus replay fails).
[[noreturn]] inline void Fail(const char* what, uint64_t a = 0, uint64_t b = 0) {
  std::fprintf(stderr, "fuzz property failed: %s (%llu, %llu)\n", what,
               static_cast<unsigned long long>(a), static_cast<unsigned long long>(b));
  std::abort();
}
#define UQ_FUZZ_CHECK(cond, ...)                                     \
  do {                                                               \
    if (!(cond)) ::uq::fuzz::Fail(#cond __VA_OPT__(, ) __VA_ARGS__); \
  } while (0)

// Reads integers from a byte span; past the end every read is 0, so any input
// is a valid (if short) program.
class ByteReader {
 public:
  explicit ByteReader(std::span<const uint8_t> data) : data_(data) {}
  bool empty() const { return pos_ >= data_.size(); }
  size_t remaining() const { return empty() ? 0 : data_.size() - pos_; }
  uint8_t U8() { return pos_ < data_.size() ? data_[pos_++] : 0; }
  uint16_t U16() { return static_cast<uint16_t>(U8() | U8() << 8); }
  uint32_t U24() { return static_cast<uint32_t>(U16() | uint32_t{U8()} << 16); }
  uint32_t U32() { return static_cast<uint32_t>(U16() | uint32_t{U16()} << 16); }

 private:
  std::span<const uint8_t> data_;
  size_t pos_ = 0;
};

// FNV-1a over a buffer (the crash model keeps sector versions as hashes).
inline uint64_t Hash(std::span<const std::byte> bytes) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (std::byte b : bytes) h = (h ^ static_cast<uint8_t>(b)) * 0x100000001b3ull;
  return h;
}

// Synchronous Device calls over immediate-mode files.
inline int ReadSync(engine::Device& d, uint64_t offset_bytes, std::span<std::byte> buf) {
  iovec v{buf.data(), buf.size()};
  return io::RunSync(nullptr, d.Read(offset_bytes, std::span<const iovec>(&v, 1)));
}
inline int WriteSync(engine::Device& d, uint64_t offset_bytes, std::span<const std::byte> buf,
                     bool fua) {
  iovec v{const_cast<std::byte*>(buf.data()), buf.size()};
  return io::RunSync(nullptr, d.Write(offset_bytes, std::span<const iovec>(&v, 1), fua));
}

// The part of Device::Discard(offset, length) on qcow2 that reads as zero
// afterwards (device.h): the whole clusters in the range, the disk's last
// partial cluster counting as whole when the range reaches the end of the
// disk. Returns [begin, end), empty when nothing is zeroed.
inline void DiscardedZeroRange(uint64_t offset, uint64_t length, uint64_t cluster_bytes,
                               uint64_t disk_bytes, uint64_t* begin, uint64_t* end) {
  const uint64_t c = cluster_bytes;
  *begin = (offset + c - 1) / c * c;
  *end = (offset + length) / c * c;
  if (offset + length == disk_bytes && offset <= disk_bytes / c * c) *end = disk_bytes;
  if (*end <= *begin) *begin = *end = offset;
}

}  // namespace uq::fuzz

#endif  // UQ_FUZZ_FUZZ_UTIL_H_
