#include "src/engine/shared_device.h"

#include <atomic>
#include <utility>

namespace uq::engine {
namespace {

struct Shared {
  std::unique_ptr<Device> device;
  std::atomic<size_t> open;
};

class Handle final : public Device {
 public:
  explicit Handle(std::shared_ptr<Shared> shared) : shared_(std::move(shared)) {}

  uint64_t size_bytes() const override { return shared_->device->size_bytes(); }
  bool read_only() const override { return shared_->device->read_only(); }
  uint32_t granularity_bytes() const override { return shared_->device->granularity_bytes(); }
  Task<int> Read(uint64_t offset_bytes, std::span<const iovec> iov) override {
    return shared_->device->Read(offset_bytes, iov);
  }
  Task<int> Write(uint64_t offset_bytes, std::span<const iovec> iov, bool fua) override {
    return shared_->device->Write(offset_bytes, iov, fua);
  }
  Task<int> Discard(uint64_t offset_bytes, uint64_t length_bytes) override {
    return shared_->device->Discard(offset_bytes, length_bytes);
  }
  Task<int> WriteZeroes(uint64_t offset_bytes, uint64_t length_bytes, bool may_unmap) override {
    return shared_->device->WriteZeroes(offset_bytes, length_bytes, may_unmap);
  }
  Task<int> Flush() override { return shared_->device->Flush(); }
  bool supports_compressed_writes() const override {
    return shared_->device->supports_compressed_writes();
  }
  Task<int> WriteCompressed(uint64_t guest_offset_bytes,
                            std::span<const std::byte> cluster) override {
    return shared_->device->WriteCompressed(guest_offset_bytes, cluster);
  }
  int64_t CompressForWrite(std::span<const std::byte> cluster,
                           std::span<std::byte> out) const override {
    return shared_->device->CompressForWrite(cluster, out);
  }
  Task<int> WriteCompressedBytes(uint64_t guest_offset_bytes, std::span<const std::byte> cluster,
                                 std::span<const std::byte> compressed) override {
    return shared_->device->WriteCompressedBytes(guest_offset_bytes, cluster, compressed);
  }
  Task<absl::Status> Close() override {
    if (closed_) co_return absl::OkStatus();
    closed_ = true;
    // acq_rel: the last closer sees every other queue's work as finished.
    if (shared_->open.fetch_sub(1, std::memory_order_acq_rel) != 1) co_return absl::OkStatus();
    co_return co_await shared_->device->Close();
  }

 private:
  std::shared_ptr<Shared> shared_;
  bool closed_ = false;
};

}  // namespace

std::vector<std::unique_ptr<Device>> ShareDevice(std::unique_ptr<Device> device, size_t n) {
  auto shared = std::make_shared<Shared>();
  shared->device = std::move(device);
  shared->open.store(n, std::memory_order_relaxed);
  std::vector<std::unique_ptr<Device>> handles;
  handles.reserve(n);
  for (size_t i = 0; i < n; ++i) handles.push_back(std::make_unique<Handle>(shared));
  return handles;
}

}  // namespace uq::engine
