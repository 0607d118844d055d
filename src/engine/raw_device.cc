#include "src/engine/raw_device.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "format/endian.h"
#include "format/header.h"
#include "src/io/iovec.h"

namespace uq::engine {

namespace {

constexpr uint64_t kProbeBytes = 512;  // what a probe reads: QEMU's BLOCK_PROBE_BUF_SIZE

}  // namespace

RawDevice::RawDevice(std::unique_ptr<io::BlockFile> file, uint64_t size_bytes, Format format)
    : file_(std::move(file)), size_bytes_(size_bytes), format_(format) {}

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
  const uint64_t length_bytes = io::IovLength(iov);
  if (offset_bytes + length_bytes > size_bytes_) co_return -EINVAL;
  int64_t r = 0;
  if (format_ == Format::kProbed && offset_bytes < kProbeBytes && length_bytes > 0) {
    // Requests are 512-byte aligned (device.h), so this one starts at 0 and
    // holds the whole probed sector.
    if (offset_bytes != 0 || length_bytes < kProbeBytes) co_return -EINVAL;
    r = co_await WriteProbedHead(iov);
  } else {
    r = co_await file_->WriteV(offset_bytes, iov);
  }
  if (r < 0) co_return static_cast<int>(r);
  if (fua) co_return co_await Sync();
  co_return 0;
}

Task<int> RawDevice::WriteProbedHead(std::span<const iovec> iov) {
  std::array<std::byte, kProbeBytes> head;
  io::IovVec first;
  io::IovSlice(iov, 0, kProbeBytes, &first);
  io::CopyFromIov(first, head.data());
  // The probe (engine::OpenImage) knows qcow2 and raw: anything else stays raw.
  if (format::LoadBE32(head.data()) == format::kQcowMagic) co_return -EPERM;
  io::IovVec checked;
  checked.push_back(iovec{head.data(), head.size()});
  io::IovSlice(iov, kProbeBytes, io::IovLength(iov) - kProbeBytes, &checked);
  const int64_t r = co_await file_->WriteV(0, checked);
  co_return r < 0 ? static_cast<int>(r) : 0;
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

Task<absl::Status> RawDevice::Resize(uint64_t new_size_bytes, GrowPreallocation prealloc) {
  if (read_only()) co_return absl::FailedPreconditionError("the image is read-only");
  if (failed_.load(std::memory_order_acquire)) co_return absl::DataLossError("the image failed");
  const uint64_t old_size_bytes = size_bytes_;
  if (prealloc != GrowPreallocation::kOff) {
    if (new_size_bytes < old_size_bytes) {
      co_return absl::InvalidArgumentError("Preallocation can only be used for growing images");
    }
    // A raw file has no metadata to preallocate (QEMU's words).
    if (prealloc == GrowPreallocation::kMetadata) {
      co_return absl::InvalidArgumentError("Unsupported preallocation mode: metadata");
    }
  }
  int r = co_await file_->Truncate(new_size_bytes);
  if (r < 0) co_return absl::InternalError(absl::StrCat("truncate: ", std::strerror(-r)));
  size_bytes_ = new_size_bytes;
  const uint64_t added = new_size_bytes - std::min(old_size_bytes, new_size_bytes);
  if (added == 0 || prealloc == GrowPreallocation::kOff) co_return absl::OkStatus();
  if (prealloc == GrowPreallocation::kFalloc) {
    // The file system allocates the range (zeroed, as the hole it was).
    r = co_await file_->WriteZeroes(old_size_bytes, added);
  } else {
    r = co_await file_->WriteZeroBuffers(old_size_bytes, added);
  }
  if (r < 0) co_return absl::InternalError(absl::StrCat("preallocation: ", std::strerror(-r)));
  co_return absl::OkStatus();
}

Task<absl::Status> RawDevice::Close() {
  if (read_only()) co_return absl::OkStatus();
  int r = co_await Sync();
  if (r < 0) co_return absl::DataLossError(absl::StrCat("flush: ", std::strerror(-r)));
  co_return absl::OkStatus();
}

}  // namespace uq::engine
