#include "tools/convert_target.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "format/status_macros.h"
#include "src/io/file_lock.h"
#include "src/io/uring_file.h"
#include "tools/engine_util.h"
#include "tools/image_lock.h"

namespace uq::tools {

namespace {

constexpr uint64_t kZeroWriteBytes = 1 << 20;

absl::Status Failed(const std::string& path, absl::string_view what, int err) {
  return absl::InternalError(absl::StrCat(path, ": ", what, ": ", std::strerror(err)));
}

// Preallocates [from, to) of the file as `prealloc` says.
absl::Status Preallocate(io::EventLoop& loop, io::UringFile& file, const std::string& path,
                         uint64_t from, uint64_t to, TargetPreallocation prealloc) {
  if (to <= from) return absl::OkStatus();
  if (prealloc == TargetPreallocation::kFalloc) {
    if (fallocate(file.fd(), 0, static_cast<off_t>(from), static_cast<off_t>(to - from)) != 0) {
      return Failed(path, "preallocation=falloc", errno);
    }
  } else if (prealloc == TargetPreallocation::kFull) {
    const std::vector<std::byte> zeros(std::min(kZeroWriteBytes, to - from));
    for (uint64_t pos = from; pos < to; pos += zeros.size()) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(zeros.size(), to - pos));
      int64_t r = RunOnLoop(loop, file.Write(pos, std::span<const std::byte>(zeros.data(), n)));
      if (r < 0) return Failed(path, "preallocation=full", static_cast<int>(-r));
    }
  }
  return absl::OkStatus();
}

// PrepareDestination's writes, into the locked `f`.
absl::Status WriteDestination(io::EventLoop& loop, io::UringFile& f, const std::string& path,
                              const format::ImageLayout* layout, uint64_t raw_size_bytes,
                              TargetPreallocation prealloc) {
  int r = RunOnLoop(loop, f.Truncate(0));
  if (r < 0) return Failed(path, "truncate", -r);
  uint64_t data_start = 0;
  uint64_t size_bytes = raw_size_bytes;
  if (layout != nullptr) {
    for (const format::WriteRange& w : layout->writes) {
      int64_t n = RunOnLoop(loop, f.Write(w.offset_bytes, w.data));
      if (n < 0) {
        return Failed(path, absl::StrCat("writing image metadata at ", w.offset_bytes),
                      static_cast<int>(-n));
      }
      data_start = std::max<uint64_t>(data_start, w.offset_bytes + w.data.size());
    }
    size_bytes = layout->file_size_bytes;
  }
  r = RunOnLoop(loop, f.Truncate(size_bytes));
  if (r < 0) return Failed(path, "truncate", -r);
  UQ_RETURN_IF_ERROR(Preallocate(loop, f, path, data_start, size_bytes, prealloc));
  r = RunOnLoop(loop, f.Flush());
  if (r < 0) return Failed(path, "flush", -r);
  return absl::OkStatus();
}

}  // namespace

absl::Status PrepareDestination(io::EventLoop& loop, const std::string& path,
                                const format::ImageLayout* layout, uint64_t raw_size_bytes,
                                TargetPreallocation prealloc) {
  io::OpenFlags flags;
  flags.create = true;
  auto file = io::UringFile::Open(&loop, path, flags);
  if (!file.ok()) return file.status();
  io::UringFile& f = **file;
  UQ_RETURN_IF_ERROR(LockImageFile(f.fd(), LockMode::kExclusive));
  absl::Status written = WriteDestination(loop, f, path, layout, raw_size_bytes, prealloc);
  // The lock belongs to the open file description, which io_uring can keep
  // alive for a moment after close() (a request done by a worker thread
  // holds a reference until that worker lets go): convert's own open of the
  // target right after then found it still locked, "Failed to get "write"
  // lock" (once in a CI run under load). Released here, before the close.
  (void)io::UnlockImage(f.fd());
  return written;
}

CreatedTarget::~CreatedTarget() {
  if (!path_.empty()) unlink(path_.c_str());
}

}  // namespace uq::tools
