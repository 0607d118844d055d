// Device: what a block frontend (src/ublk, qcow2-img io/convert/bench) serves.
//
// A virtual disk of size_bytes(); the qcow2 Image and the raw passthrough
// implement it. Offsets and lengths are in bytes and 512-byte aligned.
// Every call returns 0 or -errno (liburing's convention on the data path).
// Many calls may be in flight at once on one event loop.
//
// Thread-safety: the qcow2 image and RawDevice may be called from several
// threads at once (the queue threads of one attach, through ShareDevice),
// each running its own event loop and made current (io::Executor); other
// implementations say otherwise.
#ifndef UQ_SRC_ENGINE_DEVICE_H_
#define UQ_SRC_ENGINE_DEVICE_H_

#include <sys/uio.h>

#include <cerrno>
#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>

#include "absl/status/status.h"
#include "src/io/task.h"

namespace uq::engine {

// What a grown range gets (qemu-img resize --preallocation): nothing; host
// clusters named by the L2 entries, not written (metadata); those clusters
// allocated in the file too (falloc); or written with zeros (full).
enum class GrowPreallocation { kOff, kMetadata, kFalloc, kFull };

// Told by a write once the host space it needs has been chosen, before its
// data goes out (Device::WriteTelling). A caller that orders its writes by
// where they are allocated (qcow2-img convert writes chunks in guest order,
// so that the target is not fragmented) issues the next write then, instead
// of waiting for this one's data. One notice per write; told once.
//
// Thread-safety: one thread: told on the event loop that runs the write,
// which must be the waiter's.
class AllocationNotice {
 public:
  AllocationNotice() = default;
  AllocationNotice(const AllocationNotice&) = delete;
  AllocationNotice& operator=(const AllocationNotice&) = delete;

  bool told() const { return told_; }
  // Marks it told and resumes the waiter, if any; later calls do nothing.
  void Tell() {
    if (told_) return;
    told_ = true;
    if (waiter_) std::exchange(waiter_, {}).resume();
  }
  // co_await notice.Wait(): resumes once told (at once if it has been).
  auto Wait() {
    struct Awaiter {
      AllocationNotice* notice;
      bool await_ready() const noexcept { return notice->told_; }
      void await_suspend(std::coroutine_handle<> h) noexcept { notice->waiter_ = h; }
      void await_resume() const noexcept {}
    };
    return Awaiter{this};
  }

 private:
  bool told_ = false;
  std::coroutine_handle<> waiter_;
};

class Device {
 public:
  virtual ~Device() = default;

  virtual uint64_t size_bytes() const = 0;
  virtual bool read_only() const = 0;
  // Allocation granularity the frontend should advertise (cluster size for
  // qcow2, 4096 for raw).
  virtual uint32_t granularity_bytes() const = 0;

  // Fills iov (total length = request length) with the disk's bytes.
  virtual Task<int> Read(uint64_t offset_bytes, std::span<const iovec> iov) = 0;
  // `fua`: the data is durable when the call completes.
  virtual Task<int> Write(uint64_t offset_bytes, std::span<const iovec> iov, bool fua) = 0;
  // Write, telling `allocated` once the host space the write needs has been
  // chosen (and always by the time it completes, failed or not). The
  // default tells on completion; the qcow2 image tells before the data of a
  // large allocating write goes out.
  virtual Task<int> WriteTelling(uint64_t offset_bytes, std::span<const iovec> iov, bool fua,
                                 AllocationNotice& allocated) {
    const int r = co_await Write(offset_bytes, iov, fua);
    allocated.Tell();
    co_return r;
  }
  // The range's contents are no longer needed. Raw: the range is punched and
  // reads as zero. qcow2 (as QEMU's driver): every whole cluster in the range
  // is deallocated and reads as zero (the image's last cluster is whole when
  // the range reaches the end of the disk); partly covered clusters keep
  // their contents; a version 2 image with a backing file ignores discards
  // (it has no zero flag, so the backing file would show through). Callers
  // that need zeros use WriteZeroes.
  virtual Task<int> Discard(uint64_t offset_bytes, uint64_t length_bytes) = 0;
  // The range reads as zero afterwards. `may_unmap`: clusters may be freed.
  virtual Task<int> WriteZeroes(uint64_t offset_bytes, uint64_t length_bytes, bool may_unmap) = 0;
  // Every write completed before Flush was issued is durable when it returns.
  virtual Task<int> Flush() = 0;
  // Flushes and marks the image clean (qcow2: clears the dirty bit). No
  // operation may be in flight or issued afterwards.
  virtual Task<absl::Status> Close() = 0;

  // Compressed cluster writes (qcow2-img convert -c). Only a qcow2 image
  // stores clusters compressed; every other Device keeps these defaults
  // (false, -ENOTSUP), so callers ask here instead of naming the engine class.
  virtual bool supports_compressed_writes() const { return false; }
  // Writes one whole guest cluster compressed. REQUIRES:
  // supports_compressed_writes(); guest_offset_bytes aligned to
  // granularity_bytes(); cluster.size() is that granularity, or less for the
  // disk's last partial cluster. Returns 0 or -errno.
  virtual Task<int> WriteCompressed(uint64_t /*guest_offset_bytes*/,
                                    std::span<const std::byte> /*cluster*/) {
    co_return -ENOTSUP;
  }
  // WriteCompressed in two steps, so that the codec can run on other threads
  // (convert -c compresses in parallel). CompressForWrite compresses one
  // cluster (cluster.size() == granularity_bytes(), zero padded) into `out`
  // (at least as large): no I/O, thread-safe. Returns the compressed length,
  // 0 when the cluster is to be stored uncompressed, or -errno.
  virtual int64_t CompressForWrite(std::span<const std::byte> /*cluster*/,
                                   std::span<std::byte> /*out*/) const {
    return -ENOTSUP;
  }
  // Stores `cluster` (as for WriteCompressed) from the bytes CompressForWrite
  // made of it; `compressed` empty: uncompressed.
  virtual Task<int> WriteCompressedBytes(uint64_t /*guest_offset_bytes*/,
                                         std::span<const std::byte> /*cluster*/,
                                         std::span<const std::byte> /*compressed*/) {
    co_return -ENOTSUP;
  }

  // Makes the whole disk unallocated, so that the backing file shows through
  // everywhere again (qemu-img commit empties the committed image; QEMU's
  // bdrv_make_empty). The default, and a raw image: -ENOTSUP (qemu-img
  // commit then leaves the image as it is). Returns 0 or -errno.
  virtual Task<int> MakeEmpty() { co_return -ENOTSUP; }

  // Changes the virtual size (qcow2-img resize of a qcow2 image; a raw file
  // is resized as a file), preallocating a grown range as `prealloc` says.
  // REQUIRES: no request in flight, none issued until it returns. The
  // default: this Device cannot.
  virtual Task<absl::Status> Resize(uint64_t /*new_size_bytes*/, GrowPreallocation /*prealloc*/) {
    co_return absl::UnimplementedError("this image cannot be resized in place");
  }
};

}  // namespace uq::engine

#endif  // UQ_SRC_ENGINE_DEVICE_H_
