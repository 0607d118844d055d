// Helpers shared by qcow2-img's engine-backed subcommands (io, convert,
// bench): size/number parsing in qemu's syntax, opening an image file as an
// engine Device on an io_uring event loop, and driving a Task to completion
// from synchronous command code.
//
// Thread-safety: everything here runs on the command's one thread.
#ifndef UQ_TOOLS_ENGINE_UTIL_H_
#define UQ_TOOLS_ENGINE_UTIL_H_

#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "src/engine/device.h"
#include "src/engine/image.h"
#include "src/io/event_loop.h"
#include "src/io/run_sync.h"
#include "src/io/task.h"
#include "src/io/uring_file.h"

namespace uq::tools {

// Parses a byte count the way qemu-img / qemu-io do: plain decimal (or 0x
// hex) bytes, or a decimal number (fractions allowed) with a binary suffix
// b/k/M/G/T/P/E (case-insensitive). Rejects negative, empty, overflowing and
// trailing-garbage input with a message naming `what` and the text.
absl::StatusOr<uint64_t> ParseByteCount(absl::string_view text, absl::string_view what);

// Parses a non-negative integer (decimal or 0x hex) with no suffix.
absl::StatusOr<uint64_t> ParseCount(absl::string_view text, absl::string_view what);

// Parses "qcow2" / "raw" (the -f / -O values the engine supports).
absl::StatusOr<engine::ImageFormat> ParseFormatName(absl::string_view name);

// Prints "qcow2-img: <message>" on stderr. Always returns 1 (the exit code).
int ReportError(absl::string_view message);
inline int ReportError(const absl::Status& status) { return ReportError(status.message()); }

struct EngineOpenOptions {
  engine::ImageFormat format = engine::ImageFormat::kAuto;
  bool read_only = false;
  bool direct_io = false;  // O_DIRECT on the image file (-t none)
  // -t unsafe: flushes of the image file (and of its data file) make nothing
  // durable (io::NoFlushFile): a new image that is worthless if the command
  // does not finish (convert), or an existing one the user asked to risk
  // (commit and rebase -t unsafe, as qemu-img's).
  bool no_flush = false;
  std::string snapshot;
  // -U: take no image lock (only with read_only). Otherwise the image and its
  // data file are locked for writing (shared when read_only) and backing
  // files shared (tools/image_lock.h).
  bool force_share = false;
  // --data-file PATH and --allow-devices (engine/open_path.h).
  std::string data_file;
  bool allow_devices = false;
  // commit: a file of the backing chain that the command holds open writable
  // (and locked) itself; the chain opens it without a lock of its own, which
  // would conflict with the command's writer lock. Compared by identity.
  std::string unlocked_path;
};

// Whether `file` is to be read as qcow2: `format` is "qcow2" or "raw", or
// empty to probe the qcow2 magic.
absl::StatusOr<bool> IsQcow2(io::EventLoop& loop, io::BlockFile& file, const std::string& format);

// Opens and locks `path` as a Device on `loop` (engine::OpenPath: backing
// files and the external data file are opened on the same loop, with O_DIRECT
// too if asked).
absl::StatusOr<std::unique_ptr<engine::Device>> OpenDevice(io::EventLoop& loop,
                                                           const std::string& path,
                                                           const EngineOpenOptions& options);
// The same for `file`, which the caller opened (and locked) from `path`.
absl::StatusOr<std::unique_ptr<engine::Device>> OpenDeviceOnFile(
    io::EventLoop& loop, const std::string& path, std::unique_ptr<io::UringFile> file,
    const EngineOpenOptions& options);

// Whether `a` and `b` name the same file (both exist).
bool SameFile(const std::string& a, const std::string& b);

// `file` itself, or wrapped in an io::NoFlushFile when `no_flush` (-t unsafe).
std::unique_ptr<io::BlockFile> MaybeNoFlush(std::unique_ptr<io::BlockFile> file, bool no_flush);

// Runs `task` to completion on `loop` and returns its value (io::RunSync).
template <typename T>
T RunOnLoop(io::EventLoop& loop, Task<T> task) {
  return io::RunSync(&loop, std::move(task));
}

// A zero-filled heap buffer aligned for O_DIRECT (4096 bytes).
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t size_bytes);
  AlignedBuffer(AlignedBuffer&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  AlignedBuffer& operator=(AlignedBuffer&& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
    return *this;
  }
  ~AlignedBuffer() { std::free(data_); }

  std::byte* data() { return data_; }
  const std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  std::span<std::byte> span() { return {data_, size_}; }
  std::span<const std::byte> span() const { return {data_, size_}; }
  // One iovec covering [offset, offset + length) of the buffer.
  iovec Iov(size_t offset = 0, size_t length = SIZE_MAX) {
    return iovec{data_ + offset, std::min(length, size_ - offset)};
  }

 private:
  std::byte* data_ = nullptr;
  size_t size_ = 0;
};

// True if every byte of `bytes` is zero.
bool IsAllZero(std::span<const std::byte> bytes);

// Closes `device` (flush + clean dirty bit) and reports a failure.
absl::Status CloseDevice(io::EventLoop& loop, engine::Device& device);

}  // namespace uq::tools

#endif  // UQ_TOOLS_ENGINE_UTIL_H_
