// Explicit big-endian load/store (leveldb util/coding.h style). qcow2 stores
// every multi-byte field big-endian; never memcpy into a struct and swap.
#ifndef UQ_FORMAT_ENDIAN_H_
#define UQ_FORMAT_ENDIAN_H_

#include <cstddef>
#include <cstdint>

namespace uq::format {

inline uint16_t LoadBE16(const std::byte* p) {
  return static_cast<uint16_t>((uint16_t(p[0]) << 8) | uint16_t(p[1]));
}
inline uint32_t LoadBE32(const std::byte* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}
inline uint64_t LoadBE64(const std::byte* p) {
  return (uint64_t(LoadBE32(p)) << 32) | LoadBE32(p + 4);
}
inline void StoreBE16(std::byte* p, uint16_t v) {
  p[0] = std::byte(v >> 8);
  p[1] = std::byte(v);
}
inline void StoreBE32(std::byte* p, uint32_t v) {
  p[0] = std::byte(v >> 24);
  p[1] = std::byte(v >> 16);
  p[2] = std::byte(v >> 8);
  p[3] = std::byte(v);
}
inline void StoreBE64(std::byte* p, uint64_t v) {
  StoreBE32(p, uint32_t(v >> 32));
  StoreBE32(p + 4, uint32_t(v));
}

}  // namespace uq::format

#endif  // UQ_FORMAT_ENDIAN_H_
