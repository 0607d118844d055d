#include "src/io/block_file.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>

namespace uq::io {
namespace {

constexpr uint64_t kZeroBufferBytes = uint64_t{1} << 20;
constexpr uint64_t kAlignmentBytes = 4096;  // O_DIRECT's, as UringFile's

}  // namespace

Task<int> BlockFile::WriteZeroBuffers(uint64_t offset_bytes, uint64_t length_bytes) {
  uint64_t chunk_bytes = std::min(length_bytes, kZeroBufferBytes);
  chunk_bytes = (chunk_bytes + kAlignmentBytes - 1) / kAlignmentBytes * kAlignmentBytes;
  struct Free {
    void operator()(void* p) const { std::free(p); }
  };
  std::unique_ptr<void, Free> zeros(std::aligned_alloc(kAlignmentBytes, chunk_bytes));
  if (!zeros) co_return -ENOMEM;
  std::memset(zeros.get(), 0, chunk_bytes);
  for (uint64_t done = 0; done < length_bytes;) {
    iovec v{zeros.get(), std::min(chunk_bytes, length_bytes - done)};
    const int64_t r = co_await WriteV(offset_bytes + done, std::span<const iovec>(&v, 1));
    if (r < 0) co_return static_cast<int>(r);
    done += v.iov_len;
  }
  co_return 0;
}

}  // namespace uq::io
