#include "src/io/mem_file.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>

#include "src/io/iovec.h"

namespace uq::io {

namespace {
bool Overflows(uint64_t offset_bytes, uint64_t length_bytes) {
  return length_bytes > std::numeric_limits<uint64_t>::max() - offset_bytes;
}
}  // namespace

void MemFile::ZeroClipped(uint64_t offset_bytes, uint64_t length_bytes) {
  if (offset_bytes >= data_.size()) return;
  uint64_t end = std::min<uint64_t>(offset_bytes + length_bytes, data_.size());
  std::memset(data_.data() + offset_bytes, 0, end - offset_bytes);
}

int MemFile::GrowTo(uint64_t end_bytes) {
  if (end_bytes <= data_.size()) return 0;
  if (end_bytes > max_size_bytes_) return -EFBIG;
  data_.resize(end_bytes);
  return 0;
}

Task<int64_t> MemFile::ReadV(uint64_t offset_bytes, std::span<const iovec> iov) {
  uint64_t length = IovLength(iov);
  {
    std::lock_guard<std::mutex> g(mu_);
    ++counters_.reads;
    counters_.bytes_read += length;
  }
  co_await Gate{this, {OpKind::kRead, offset_bytes, length}};
  std::lock_guard<std::mutex> g(mu_);
  if (Overflows(offset_bytes, length) || length > std::numeric_limits<int64_t>::max()) {
    co_return -EINVAL;
  }
  // Copy the part inside the file, zero the rest.
  uint64_t pos = offset_bytes;
  for (const iovec& v : iov) {
    if (v.iov_len == 0) continue;
    auto* dst = static_cast<std::byte*>(v.iov_base);
    uint64_t avail = pos < data_.size() ? std::min<uint64_t>(v.iov_len, data_.size() - pos) : 0;
    if (avail > 0) std::memcpy(dst, data_.data() + pos, avail);
    if (avail < v.iov_len) std::memset(dst + avail, 0, v.iov_len - avail);
    pos += v.iov_len;
  }
  co_return static_cast<int64_t>(length);
}

Task<int64_t> MemFile::WriteV(uint64_t offset_bytes, std::span<const iovec> iov) {
  uint64_t length = IovLength(iov);
  {
    std::lock_guard<std::mutex> g(mu_);
    ++counters_.writes;
    counters_.bytes_written += length;
  }
  co_await Gate{this, {OpKind::kWrite, offset_bytes, length}};
  std::lock_guard<std::mutex> g(mu_);
  if (read_only_) co_return -EROFS;
  if (Overflows(offset_bytes, length) || length > std::numeric_limits<int64_t>::max()) {
    co_return -EINVAL;
  }
  if (length == 0) co_return 0;
  if (int r = GrowTo(offset_bytes + length); r < 0) co_return r;
  CopyFromIov(iov, data_.data() + offset_bytes);
  co_return static_cast<int64_t>(length);
}

Task<int> MemFile::Flush() {
  {
    std::lock_guard<std::mutex> g(mu_);
    ++counters_.flushes;
  }
  co_await Gate{this, {OpKind::kFlush, 0, 0}};
  co_return 0;
}

Task<int> MemFile::Discard(uint64_t offset_bytes, uint64_t length_bytes) {
  {
    std::lock_guard<std::mutex> g(mu_);
    ++counters_.discards;
  }
  co_await Gate{this, {OpKind::kDiscard, offset_bytes, length_bytes}};
  std::lock_guard<std::mutex> g(mu_);
  if (read_only_) co_return -EROFS;
  if (Overflows(offset_bytes, length_bytes)) co_return -EINVAL;
  ZeroClipped(offset_bytes, length_bytes);
  co_return 0;
}

Task<int> MemFile::WriteZeroes(uint64_t offset_bytes, uint64_t length_bytes) {
  {
    std::lock_guard<std::mutex> g(mu_);
    ++counters_.write_zeroes;
  }
  co_await Gate{this, {OpKind::kWriteZeroes, offset_bytes, length_bytes}};
  std::lock_guard<std::mutex> g(mu_);
  if (read_only_) co_return -EROFS;
  if (Overflows(offset_bytes, length_bytes)) co_return -EINVAL;
  ZeroClipped(offset_bytes, length_bytes);
  if (length_bytes > 0) {
    // New bytes from resize() are already zero.
    if (int r = GrowTo(offset_bytes + length_bytes); r < 0) co_return r;
  }
  co_return 0;
}

Task<int> MemFile::Truncate(uint64_t size_bytes) {
  {
    std::lock_guard<std::mutex> g(mu_);
    ++counters_.truncates;
  }
  co_await Gate{this, {OpKind::kTruncate, size_bytes, 0}};
  std::lock_guard<std::mutex> g(mu_);
  if (read_only_) co_return -EROFS;
  if (size_bytes > max_size_bytes_) co_return -EFBIG;
  data_.resize(size_bytes);
  co_return 0;
}

void MemFile::RunOne(size_t index) {
  std::coroutine_handle<> h = queue_[index].handle;
  queue_.erase(queue_.begin() + static_cast<ptrdiff_t>(index));
  h.resume();
}

size_t MemFile::RunAll() {
  size_t n = 0;
  while (!queue_.empty()) {
    RunOne(0);
    ++n;
  }
  return n;
}

bool MemFile::RunRandomOne(std::mt19937_64& rng) {
  if (queue_.empty()) return false;
  std::uniform_int_distribution<size_t> pick(0, queue_.size() - 1);
  RunOne(pick(rng));
  return true;
}

size_t MemFile::RunRandom(std::mt19937_64& rng) {
  size_t n = 0;
  while (RunRandomOne(rng)) ++n;
  return n;
}

}  // namespace uq::io
