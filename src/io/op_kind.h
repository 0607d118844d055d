// OpKind: the six BlockFile operations, named for the test files (MemFile,
// FaultFile, PowerLossFile) that count, queue, match and journal them.
#ifndef UQ_SRC_IO_OP_KIND_H_
#define UQ_SRC_IO_OP_KIND_H_

#include <cstdint>
#include <string_view>

namespace uq::io {

enum class OpKind : uint8_t {
  kRead,
  kWrite,
  kFlush,
  kDiscard,
  kWriteZeroes,
  kTruncate,
};

inline constexpr int kOpKindCount = 6;

// Bit masks over OpKind, e.g. OpKindBit(OpKind::kWrite) | OpKindBit(OpKind::kFlush).
constexpr uint32_t OpKindBit(OpKind kind) { return 1u << static_cast<uint32_t>(kind); }
inline constexpr uint32_t kAllOpKinds = (1u << kOpKindCount) - 1;

// "read", "write", "flush", "discard", "write_zeroes", "truncate".
std::string_view OpKindName(OpKind kind);

}  // namespace uq::io

#endif  // UQ_SRC_IO_OP_KIND_H_
