// RawDevice: a raw image file served as a Device (raw backing files,
// `-f raw` in qcow2-img, and the frontend's tests).
//
// Fail-stop, as for qcow2 images (MetaFile): after a failed fsync the page
// cache may have dropped writes it had acknowledged, so every later write and
// flush returns -EIO instead of reporting durability that may be false.
#ifndef UQ_SRC_ENGINE_RAW_DEVICE_H_
#define UQ_SRC_ENGINE_RAW_DEVICE_H_

#include <atomic>
#include <memory>

#include "src/engine/device.h"
#include "src/io/block_file.h"

namespace uq::engine {

class RawDevice final : public Device {
 public:
  // How the file came to be raw: named so by the user or the image, or
  // probed (no qcow2 magic found).
  enum class Format { kNamed, kProbed };

  // size_bytes: the virtual size (the file's size for an image of its own;
  // reads past the file's end return zeros). A kProbed device refuses, with
  // -EPERM, a write whose first sector would read as qcow2 to the next probe,
  // as QEMU's raw driver does for probed images (block/raw-format.c): a guest
  // must not turn its disk into an image that names host files. The sector
  // it checks is a private copy, so a buffer changed during the write cannot
  // slip a header past the check.
  RawDevice(std::unique_ptr<io::BlockFile> file, uint64_t size_bytes,
            Format format = Format::kNamed);

  uint64_t size_bytes() const override { return size_bytes_; }
  bool read_only() const override { return file_->read_only(); }
  uint32_t granularity_bytes() const override { return 4096; }
  // -EINVAL past size_bytes(); bytes past the file's end read as zeros.
  Task<int> Read(uint64_t offset_bytes, std::span<const iovec> iov) override;
  // -EIO once a sync has failed; -EPERM for a probed device's sector 0 (above).
  Task<int> Write(uint64_t offset_bytes, std::span<const iovec> iov, bool fua) override;
  // Punches a hole; with may_unmap, WriteZeroes does the same.
  Task<int> Discard(uint64_t offset_bytes, uint64_t length_bytes) override;
  Task<int> WriteZeroes(uint64_t offset_bytes, uint64_t length_bytes, bool may_unmap) override;
  // fdatasync of the file; a failure is sticky (fail-stop, above).
  Task<int> Flush() override;
  Task<absl::Status> Close() override;
  // Truncates or extends the file (qcow2-img commit grows a raw base to its
  // overlay's size, as qemu-img does); a grown range preallocated with falloc
  // is the file system's zero range, with full written zeros (metadata is
  // refused: a raw file has none). REQUIRES: as Device::Resize.
  Task<absl::Status> Resize(uint64_t new_size_bytes, GrowPreallocation prealloc) override;

 private:
  Task<int> Sync();
  // Write() of a request that covers sector 0 of a probed raw image.
  Task<int> WriteProbedHead(std::span<const iovec> iov);

  std::unique_ptr<io::BlockFile> file_;
  uint64_t size_bytes_;
  Format format_;
  std::atomic<bool> failed_{false};
};

}  // namespace uq::engine

#endif  // UQ_SRC_ENGINE_RAW_DEVICE_H_
