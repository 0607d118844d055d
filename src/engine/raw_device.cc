#include "src/engine/raw_device.h"

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "src/io/iovec.h"

namespace uq::engine {

RawDevice::RawDevice(std::unique_ptr<io::BlockFile> file, uint64_t size_bytes)
    : file_(std::move(file)), size_bytes_(size_bytes) {}

Task<int> RawDevice::Read(uint64_t offset_bytes, std::span<const iovec> iov) {
  if (offset_bytes + io::IovLength(iov) > size_bytes_) co_return -EINVAL;
  int64_t r = co_await file_->ReadV(offset_bytes, iov);
  co_return r < 0 ? static_cast<int>(r) : 0;
}

Task<int> RawDevice::Sync() {
  if (failed_.load(std::memory_order_acquire)) co_return -EIO;
  int r = co_await file_->Flush();
  if (r < 0) failed_.store(true, std::memory_order_release);
  co_return r;
}

Task<int> RawDevice::Write(uint64_t offset_bytes, std::span<const iovec> iov, bool fua) {
  if (read_only()) co_return -EROFS;
  if (failed_.load(std::memory_order_acquire)) co_return -EIO;
  if (offset_bytes + io::IovLength(iov) > size_bytes_) co_return -EINVAL;
  int64_t r = co_await file_->WriteV(offset_bytes, iov);
  if (r < 0) co_return static_cast<int>(r);
  if (fua) co_return co_await Sync();
  co_return 0;
}

Task<int> RawDevice::Discard(uint64_t offset_bytes, uint64_t length_bytes) {
  if (read_only()) co_return -EROFS;
  if (failed_.load(std::memory_order_acquire)) co_return -EIO;
  if (offset_bytes + length_bytes > size_bytes_) co_return -EINVAL;
  co_return co_await file_->Discard(offset_bytes, length_bytes);
}

Task<int> RawDevice::WriteZeroes(uint64_t offset_bytes, uint64_t length_bytes, bool may_unmap) {
  if (read_only()) co_return -EROFS;
  if (failed_.load(std::memory_order_acquire)) co_return -EIO;
  if (offset_bytes + length_bytes > size_bytes_) co_return -EINVAL;
  if (may_unmap) co_return co_await file_->Discard(offset_bytes, length_bytes);
  co_return co_await file_->WriteZeroes(offset_bytes, length_bytes);
}

Task<int> RawDevice::Flush() { co_return co_await Sync(); }

Task<absl::Status> RawDevice::Close() {
  if (read_only()) co_return absl::OkStatus();
  int r = co_await Sync();
  if (r < 0) co_return absl::DataLossError(absl::StrCat("flush: ", std::strerror(-r)));
  co_return absl::OkStatus();
}

}  // namespace uq::engine
