#include "src/io/op_kind.h"

namespace uq::io {

std::string_view OpKindName(OpKind kind) {
  switch (kind) {
    case OpKind::kRead:
      return "read";
    case OpKind::kWrite:
      return "write";
    case OpKind::kFlush:
      return "flush";
    case OpKind::kDiscard:
      return "discard";
    case OpKind::kWriteZeroes:
      return "write_zeroes";
    case OpKind::kTruncate:
      return "truncate";
  }
  return "unknown";
}

}  // namespace uq::io
