#include "tools/chain_edit.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "format/status_macros.h"
#include "tools/engine_util.h"
#include "tools/image_lock.h"

namespace uq::tools {

namespace {

// The run at `offset` (at most `bytes` long) through layers [0, layers).
absl::StatusOr<LayerRun> RunAt(Chain& chain, size_t layers, uint64_t offset, uint64_t bytes) {
  LayerRun run{offset, bytes, false, false};
  for (size_t d = 0; d < layers; ++d) {
    if (d > 0 && offset >= chain.layer(d).size_bytes()) {
      run.allocated = true;
      run.zero = true;
      return run;
    }
    UQ_ASSIGN_OR_RETURN(BlockStatus st, chain.layer(d).Status(offset, run.bytes));
    if (st.bytes == 0) return absl::InternalError("block status made no progress");
    run.bytes = std::min(run.bytes, st.bytes);
    if (st.allocated) {
      run.allocated = true;
      run.zero = st.zero && !st.data;
      return run;
    }
  }
  return run;
}

// Opens the image file `path` writable, with O_DIRECT if `direct`.
absl::StatusOr<std::unique_ptr<io::UringFile>> OpenImageFile(io::EventLoop& loop,
                                                             const std::string& path, bool direct) {
  io::OpenFlags flags;
  flags.direct = direct;
  absl::StatusOr<std::unique_ptr<io::UringFile>> file = io::UringFile::Open(&loop, path, flags);
  if (!file.ok()) {
    return absl::Status(file.status().code(),
                        absl::StrCat("Could not open '", path, "': ", file.status().message()));
  }
  return file;
}

}  // namespace

absl::StatusOr<std::vector<LayerRun>> RunsAbove(Chain& chain, size_t layers) {
  std::vector<LayerRun> runs;
  const uint64_t size = chain.size_bytes();
  uint64_t offset = 0;
  while (offset < size) {
    UQ_ASSIGN_OR_RETURN(LayerRun run, RunAt(chain, layers, offset, size - offset));
    if (!runs.empty() && runs.back().allocated == run.allocated && runs.back().zero == run.zero &&
        runs.back().offset + runs.back().bytes == offset) {
      runs.back().bytes += run.bytes;
    } else {
      runs.push_back(run);
    }
    offset += run.bytes;
  }
  return runs;
}

absl::StatusOr<LockedImage> OpenLockedImage(io::EventLoop& loop, const std::string& path,
                                            const std::string& format, bool direct) {
  LockedImage image;
  UQ_ASSIGN_OR_RETURN(std::unique_ptr<io::UringFile> file, OpenImageFile(loop, path, false));
  absl::Status locked = LockImageFile(file->fd(), LockMode::kExclusive);
  if (!locked.ok()) return absl::Status(locked.code(), absl::StrCat(path, ": ", locked.message()));
  absl::StatusOr<bool> qcow2 = IsQcow2(loop, *file, format);
  if (!qcow2.ok())
    return absl::Status(qcow2.status().code(), absl::StrCat(path, ": ", qcow2.status().message()));
  image.qcow2 = *qcow2;
  const int fd = dup(file->fd());
  if (fd < 0) return absl::InternalError(absl::StrCat(path, ": dup: ", std::strerror(errno)));
  image.header = PosixFile(fd);
  if (direct) {
    UQ_ASSIGN_OR_RETURN(image.file, OpenImageFile(loop, path, true));
  } else {
    image.file = std::move(file);
  }
  return image;
}

absl::Status ParseCacheOption(const common::ParsedArgs& parsed, char option, CacheMode& mode) {
  const std::string* value = parsed.Last(option);
  if (value == nullptr) return absl::OkStatus();
  absl::StatusOr<CacheMode> parsed_mode = ParseCacheMode(*value);
  if (!parsed_mode.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("-", std::string(1, option), ": ", parsed_mode.status().message()));
  }
  mode = *parsed_mode;
  return absl::OkStatus();
}

}  // namespace uq::tools
