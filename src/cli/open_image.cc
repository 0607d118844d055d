#include "src/cli/open_image.h"

#include <algorithm>
#include <bit>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "format/status_macros.h"
#include "src/engine/open_path.h"
#include "src/engine/shared_device.h"
#include "src/io/event_loop.h"
#include "src/io/file_lock.h"
#include "src/io/per_loop_file.h"
#include "src/io/run_sync.h"
#include "src/io/uring_file.h"

namespace uq::cli {
namespace {

absl::Status Annotate(const absl::Status& st, const std::string& image) {
  return absl::Status(st.code(), absl::StrCat(image, ": ", st.message()));
}

// Opens `path` on loops[0], locks it, and spreads it over every loop. A
// single loop keeps the plain UringFile (no dispatch needed).
absl::StatusOr<std::unique_ptr<io::BlockFile>> OpenOnLoops(const std::vector<io::EventLoop*>& loops,
                                                           const std::string& path, bool writable,
                                                           bool direct, std::string* note) {
  io::OpenFlags flags;
  flags.read_only = !writable;
  flags.direct = direct;
  auto file = io::UringFile::Open(loops[0], path, flags);
  if (!file.ok()) {
    // The message already names the call and the path ("open PATH: ...").
    return absl::Status(file.status().code(), absl::StrCat("cannot ", file.status().message()));
  }
  if (absl::Status st = io::LockImage((*file)->fd(), writable); !st.ok()) {
    return Annotate(st, path);
  }
  if (!(*file)->open_note().empty() && note->empty()) {
    *note = absl::StrCat((*file)->open_note(), " (--cache none falls back to writeback)");
  }
  if (loops.size() == 1) return std::unique_ptr<io::BlockFile>(std::move(*file));
  auto spread = io::PerLoopFile::Create(std::move(*file), loops);
  if (!spread.ok()) return Annotate(spread.status(), path);
  return std::unique_ptr<io::BlockFile>(std::move(*spread));
}

}  // namespace

absl::StatusOr<std::vector<ublk::QueueBackend>> OpenQueueBackends(const ImageSpec& spec,
                                                                  uint16_t queues,
                                                                  std::string* note) {
  const unsigned entries = std::bit_ceil(std::clamp<unsigned>(2u * spec.depth, 64u, 4096u));
  std::vector<ublk::QueueBackend> backends(queues);
  std::vector<io::EventLoop*> loops;
  for (ublk::QueueBackend& b : backends) {
    UQ_ASSIGN_OR_RETURN(b.loop, io::EventLoop::Create(entries));
    loops.push_back(b.loop.get());
  }
  const bool direct = spec.cache == CacheMode::kNone;
  UQ_ASSIGN_OR_RETURN(std::unique_ptr<io::BlockFile> file,
                      OpenOnLoops(loops, spec.image, !spec.read_only, direct, note));
  // O_DIRECT is in effect unless Open fell back (then it left a note); the
  // files opened next follow the image, and any of them that falls back is
  // still correct behind the engine's alignment (AlignedFile passes aligned
  // I/O straight through).
  const bool aligned = direct && note->empty();

  if (spec.format == Format::kRaw && file->size_bytes() < 512) {
    return absl::InvalidArgumentError(absl::StrCat(spec.image, ": image is empty"));
  }
  engine::PathOptions o;
  o.format = spec.format == Format::kQcow2 ? engine::ImageFormat::kQcow2
             : spec.format == Format::kRaw ? engine::ImageFormat::kRaw
                                           : engine::ImageFormat::kAuto;
  o.read_only = spec.read_only;
  o.l2_cache_bytes = spec.cache_size_bytes;
  o.snapshot = spec.snapshot;
  // User recovery is always on: a writable image writes each request's
  // metadata to the file before the request completes, so `recover` after
  // the server was killed loses no acknowledged write (the page cache, or
  // with O_DIRECT the file itself, keeps it; power loss still needs FLUSH,
  // or --writethrough).
  o.metadata_writethrough = !spec.read_only;
  o.file_alignment_bytes = aligned ? io::UringFile::kDirectAlignmentBytes : 0;
  o.data_file = spec.data_file;
  o.allow_devices = spec.allow_devices;
  // Only called inside the open (backing chain, data file).
  o.opener = [loops, aligned, note](
                 const std::string& path,
                 bool writable) -> absl::StatusOr<std::unique_ptr<io::BlockFile>> {
    return OpenOnLoops(loops, path, writable, aligned, note);
  };
  auto dev =
      io::RunSync(loops[0], engine::OpenPathOnFile(spec.image, std::move(file), std::move(o)));
  if (!dev.ok()) return Annotate(dev.status(), spec.image);
  std::unique_ptr<engine::Device> device = std::move(*dev);
  std::vector<std::unique_ptr<engine::Device>> handles =
      engine::ShareDevice(std::move(device), queues);
  for (size_t q = 0; q < queues; ++q) backends[q].device = std::move(handles[q]);
  return backends;
}

}  // namespace uq::cli
