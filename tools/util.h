// Helpers shared by the qcow2-img subcommands: POSIX file access for the
// non-data-path commands (create, info), size parsing, error printing and
// the image description behind `info`.
#ifndef UQ_TOOLS_UTIL_H_
#define UQ_TOOLS_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "format/bitmaps.h"
#include "format/header.h"
#include "format/snapshot.h"
#include "src/common/options.h"
#include "tools/image_lock.h"

namespace uq::tools {

// --output: false for human (the default), true for json; anything else is
// qemu-img's error.
absl::StatusOr<bool> WantJson(const common::ParsedArgs& args);

// The single image operand, else qemu-img's "Expecting one image file name".
absl::StatusOr<std::string> OneImage(const common::ParsedArgs& args);

// Prints the one error line every subcommand uses, "qcow2-img: <what>:
// <problem>", to stderr and returns the exit code 1.
int Fail(std::string_view what, std::string_view problem);
// Same, with the status message as the problem.
int Fail(std::string_view what, const absl::Status& status);

// "1G", "512", "64k", "1.5M": bytes. Suffixes k K M G T P E (powers of 1024)
// and b/B for bytes, as qemu-img accepts them.
absl::StatusOr<uint64_t> ParseSize(std::string_view text);

// QEMU's size_to_str: "196 KiB", "1 GiB", "1.5 MiB" (3 significant digits,
// switching unit at 1000).
std::string HumanSize(uint64_t bytes);

// An owned file descriptor.
class PosixFile {
 public:
  PosixFile() = default;
  explicit PosixFile(int fd) : fd_(fd) {}
  PosixFile(PosixFile&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  PosixFile& operator=(PosixFile&& o) noexcept;
  PosixFile(const PosixFile&) = delete;
  PosixFile& operator=(const PosixFile&) = delete;
  ~PosixFile();

  // Errors carry strerror only ("No such file or directory"); callers prefix
  // the file name.
  static absl::StatusOr<PosixFile> Open(const std::string& path, int flags, int mode = 0644);
  int fd() const { return fd_; }
  absl::StatusOr<uint64_t> Size() const;
  // Allocated bytes (st_blocks * 512), qemu-img's "actual-size".
  absl::StatusOr<uint64_t> AllocatedBytes() const;
  // Reads up to `length` bytes at `offset_bytes`; fewer only at end of file.
  absl::StatusOr<std::vector<std::byte>> ReadAt(uint64_t offset_bytes, uint64_t length) const;
  absl::Status WriteAt(uint64_t offset_bytes, const std::vector<std::byte>& data) const;
  absl::Status Truncate(uint64_t size_bytes) const;
  absl::Status Sync() const;

 private:
  int fd_ = -1;
};

// `name` (a backing or data file name stored in `image_path`'s header)
// resolved as QEMU does: absolute names as they are, relative ones against
// the directory of image_path.
std::string ResolveRelative(const std::string& image_path, const std::string& name);

// Whether `file` starts with the qcow2 magic.
absl::StatusOr<bool> HasQcow2Magic(const PosixFile& file);
// Reads and validates the qcow2 header of `file` (format::DecodeHeader
// against the file's size).
absl::StatusOr<format::Header> ReadQcow2Header(const PosixFile& file);
// resize and amend size=: refused for an image with persistent bitmaps,
// decided from its header before the engine opens it (a writable open marks
// the bitmaps stale, as a program that does not maintain them must; qemu-img
// resizes them instead).
absl::Status RefuseResizeWithBitmaps(const format::Header& h);

// What `info` reports about one image.
struct ImageDescription {
  std::string filename;
  std::string format;  // "qcow2" or "raw"
  uint64_t virtual_size_bytes = 0;
  uint64_t actual_size_bytes = 0;
  std::optional<format::Header> header;     // qcow2 only
  std::vector<format::Snapshot> snapshots;  // qcow2 only
  std::vector<format::BitmapInfo> bitmaps;  // qcow2 only, when in effect
  std::string full_backing_filename;        // resolved; empty = none
};

// Opens `path` read-only, locks it with `lock` and describes it. `format` is
// "qcow2", "raw" or "" (probe: qcow2 if the magic matches, else raw). Errors
// are one line naming the problem (without the file name).
absl::StatusOr<ImageDescription> DescribeImage(const std::string& path, std::string_view format,
                                               LockMode lock);

}  // namespace uq::tools

#endif  // UQ_TOOLS_UTIL_H_
