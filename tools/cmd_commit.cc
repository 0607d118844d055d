// qcow2-img commit: qemu-img commit for qcow2 images. Every range allocated
// in FILE (or, with -b BASE, in any image above BASE) is written into the
// backing file (or BASE): data as FILE reads it, zero clusters as zeros.
// BASE grows to FILE's size if it is shorter. Then, unless -d (which -b
// implies, as in qemu-img), FILE is emptied: every cluster unallocated, so
// it reads as its backing file again.
//
// -t sets the cache mode of FILE, the base and the chain between them, as
// qemu-img commit's (every image of the chain inherits it there): writeback
// (the default) flushes each image when done, unsafe flushes nothing, none
// also opens every file with O_DIRECT. -r paces the writes into the base.
//
// The base is opened writable as a top image of its own (backing files are
// otherwise never written); FILE's chain reads it without a lock of its own
// and only where nothing above it is allocated, which commit never reads.
// Crash safety: the base is closed (flushed, unless -t unsafe) before FILE is
// emptied.
#include <sys/uio.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "format/header.h"
#include "format/status_macros.h"
#include "src/engine/named_file.h"
#include "tools/chain_edit.h"
#include "tools/commands.h"
#include "tools/convert_copy.h"
#include "tools/convert_options.h"
#include "tools/engine_util.h"
#include "tools/util.h"

namespace uq::tools {
namespace {

constexpr common::OptionSpec kCommitOptions[] = {
    kFormatOption,
    {'b', 'b', "", "BASE",
     "commit into BASE, an image further down FILE's backing chain, everything above it "
     "(implies -d)"},
    {'d', 'd', "", "", "do not empty FILE after the commit"},
    {'t', 't', "", "CACHE",
     "cache mode of FILE and the image written: writeback (default, flushed at the end), "
     "unsafe (never flushed) or none (O_DIRECT, flushed at the end)"},
    {'r', 'r', "", "RATE",
     "write at most RATE bytes per second into the base (k, M, G suffixes; 0: no limit)"},
    {'p', 'p', "", "", "show progress"},
    kQuietOption,
    kAllowDevicesOption,
    kHelpOption,
};

constexpr uint64_t kChunkBytes = 1 << 20;
constexpr size_t kMaxChainDepth = 64;

struct CommitArgs {
  std::string file;
  std::string format;  // "" = probe
  std::optional<std::string> base;
  bool drop = false;
  CacheMode cache;                     // -t; default writeback
  uint64_t rate_bytes_per_second = 0;  // -r; 0 = no limit
  bool progress = false;
  bool quiet = false;
  bool allow_devices = false;  // --allow-devices
};

absl::StatusOr<CommitArgs> ParseArgs(const common::ParsedArgs& parsed) {
  CommitArgs a;
  if (parsed.operands.size() != 1) {
    return absl::InvalidArgumentError("Expecting one image file name");
  }
  a.file = parsed.operands[0];
  if (const std::string* f = parsed.Last('f')) a.format = *f;
  if (const std::string* b = parsed.Last('b')) a.base = *b;
  a.drop = parsed.Has('d') || a.base.has_value();
  a.quiet = parsed.Has('q');
  a.progress = parsed.Has('p') && !a.quiet;
  a.allow_devices = parsed.Has(kAllowDevicesId);
  if (!a.format.empty()) UQ_RETURN_IF_ERROR(ParseFormatName(a.format).status());
  UQ_RETURN_IF_ERROR(ParseCacheOption(parsed, 't', a.cache));
  if (const std::string* r = parsed.Last('r')) {
    UQ_ASSIGN_OR_RETURN(a.rate_bytes_per_second, ParseRateLimit(*r));
  }
  return a;
}

// One image of FILE's backing chain, from the headers.
struct ChainFile {
  std::string path;                   // resolved
  std::string name;                   // as its overlay writes it
  std::optional<std::string> format;  // as its overlay names it
};

// FILE's backing chain, top first, as far as the engine follows it (a
// backing file of unnamed format is not followed further). Each backing
// file passes the engine's named-file check before it is opened (a FIFO
// would block the open; a block device needs --allow-devices), as the
// engine's own opens of the chain do.
absl::StatusOr<std::vector<ChainFile>> ChainFiles(const std::string& path, bool allow_devices) {
  std::vector<ChainFile> files{{path, path, "qcow2"}};
  while (files.size() < kMaxChainDepth) {
    const ChainFile& last = files.back();
    if (last.format == "raw") break;
    if (files.size() > 1) {
      const engine::NamedFile named{.image_path = files[files.size() - 2].path,
                                    .path = last.path,
                                    .role = engine::NamedRole::kBacking};
      UQ_RETURN_IF_ERROR(engine::CheckNamedFile(named, allow_devices));
    }
    UQ_ASSIGN_OR_RETURN(PosixFile f, PosixFile::Open(last.path, O_RDONLY));
    UQ_ASSIGN_OR_RETURN(bool qcow2, HasQcow2Magic(f));
    if (!qcow2 || (!last.format && files.size() > 1)) break;
    UQ_ASSIGN_OR_RETURN(format::Header h, ReadQcow2Header(f));
    if (h.backing_file.empty()) break;
    files.push_back({ResolveRelative(last.path, h.backing_file), h.backing_file, h.backing_format});
  }
  return files;
}

// The index in `files` of the image to commit into.
absl::StatusOr<size_t> BaseIndex(const CommitArgs& a, const std::vector<ChainFile>& files) {
  if (files.size() < 2) return absl::InvalidArgumentError("Image does not have a backing file");
  if (!a.base) return 1;
  for (size_t i = 1; i < files.size(); ++i) {
    if (files[i].name == *a.base || SameFile(*a.base, files[i].path)) return i;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("Did not find '", *a.base, "' in the backing chain of '", a.file, "'"));
}

// Opens the base writable, in the format its overlay names. An unnamed
// format is probed, but a base that probes as qcow2 is refused: the engine
// does not trust such a file's own header (it may be a raw disk whose guest
// wrote one), so it is not written as qcow2 either.
absl::StatusOr<std::unique_ptr<engine::Device>> OpenBase(io::EventLoop& loop, const ChainFile& base,
                                                         const CommitArgs& a) {
  EngineOpenOptions open;
  open.direct_io = a.cache.direct;
  open.no_flush = a.cache.no_flush;
  open.allow_devices = a.allow_devices;
  if (base.format) {
    UQ_ASSIGN_OR_RETURN(open.format, ParseFormatName(*base.format));
  } else {
    UQ_ASSIGN_OR_RETURN(PosixFile f, PosixFile::Open(base.path, O_RDONLY));
    UQ_ASSIGN_OR_RETURN(bool qcow2, HasQcow2Magic(f));
    if (qcow2) {
      return absl::FailedPreconditionError(
          "its overlay does not name its format; refusing to write a probed qcow2 image");
    }
  }
  return OpenDevice(loop, base.path, open);
}

// Writes the runs allocated above the base from `top` into `base`. The rate
// limit paces the data written, not zero clusters (as qemu-img 7.2's
// commit).
absl::Status CopyRuns(io::EventLoop& loop, const std::vector<LayerRun>& runs, engine::Device& top,
                      engine::Device& base, RateLimiter& rate, Progress& progress) {
  AlignedBuffer buf(kChunkBytes);
  const double size = static_cast<double>(top.size_bytes());
  for (const LayerRun& run : runs) {
    if (run.allocated && run.zero) {
      const int r = RunOnLoop(loop, base.WriteZeroes(run.offset, run.bytes, true));
      if (r < 0) return absl::InternalError(absl::StrCat("writing zeros: ", std::strerror(-r)));
    }
    for (uint64_t done = 0; run.allocated && !run.zero && done < run.bytes;) {
      const uint64_t n = std::min(kChunkBytes, run.bytes - done);
      iovec iov = buf.Iov(0, n);
      int r = RunOnLoop(loop, top.Read(run.offset + done, std::span<const iovec>(&iov, 1)));
      if (r < 0) return absl::InternalError(absl::StrCat("reading: ", std::strerror(-r)));
      RunOnLoop(loop, rate.Admit(loop, n));
      r = RunOnLoop(loop, base.Write(run.offset + done, std::span<const iovec>(&iov, 1), false));
      if (r < 0) {
        return absl::InternalError(absl::StrCat("writing to the base: ", std::strerror(-r)));
      }
      done += n;
      progress.Update(static_cast<double>(run.offset + done) / size);
    }
  }
  return absl::OkStatus();
}

// The commit once both images are open.
absl::Status CommitInto(io::EventLoop& loop, const CommitArgs& a, size_t base_index,
                        engine::Device& top, engine::Device& base) {
  UQ_ASSIGN_OR_RETURN(Chain chain,
                      Chain::Open(a.file, "qcow2", LockMode::kNone, "", a.allow_devices));
  if (base_index >= chain.depth()) {
    return absl::InternalError("the backing chain is shorter than its headers say");
  }
  UQ_ASSIGN_OR_RETURN(std::vector<LayerRun> runs, RunsAbove(chain, base_index));
  if (base.size_bytes() < top.size_bytes()) {
    UQ_RETURN_IF_ERROR(
        RunOnLoop(loop, base.Resize(top.size_bytes(), engine::GrowPreallocation::kOff)));
  }
  Progress progress(a.progress);
  progress.Update(0);
  RateLimiter rate(a.rate_bytes_per_second);
  UQ_RETURN_IF_ERROR(CopyRuns(loop, runs, top, base, rate, progress));
  // The base holds the data durably (unless -t unsafe) before FILE lets go
  // of it.
  UQ_RETURN_IF_ERROR(CloseDevice(loop, base));
  if (!a.drop) {
    const int r = RunOnLoop(loop, top.MakeEmpty());
    if (r < 0 && r != -ENOTSUP) {
      return absl::InternalError(absl::StrCat("emptying the image: ", std::strerror(-r)));
    }
  }
  progress.Finish();
  return absl::OkStatus();
}

int RunCommit(const common::ParsedArgs& parsed) {
  absl::StatusOr<CommitArgs> args = ParseArgs(parsed);
  if (!args.ok()) return ReportError(args.status());
  absl::StatusOr<std::unique_ptr<io::EventLoop>> loop = io::EventLoop::Create(32);
  if (!loop.ok()) return ReportError(loop.status());
  absl::StatusOr<LockedImage> locked =
      OpenLockedImage(**loop, args->file, args->format, args->cache.direct);
  if (!locked.ok()) return ReportError(locked.status());
  if (!locked->qcow2) return Fail(args->file, "Image does not have a backing file");
  absl::StatusOr<std::vector<ChainFile>> files = ChainFiles(args->file, args->allow_devices);
  if (!files.ok()) return Fail(args->file, files.status());
  absl::StatusOr<size_t> base_index = BaseIndex(*args, *files);
  if (!base_index.ok()) return Fail(args->file, base_index.status());
  const ChainFile& base_file = (*files)[*base_index];

  absl::StatusOr<std::unique_ptr<engine::Device>> base = OpenBase(**loop, base_file, *args);
  if (!base.ok()) {
    return ReportError(
        absl::StrCat("Could not open '", base_file.path, "': ", base.status().message()));
  }
  EngineOpenOptions open;
  open.format = engine::ImageFormat::kQcow2;
  open.unlocked_path = base_file.path;
  open.direct_io = args->cache.direct;
  open.no_flush = args->cache.no_flush;
  open.allow_devices = args->allow_devices;
  absl::StatusOr<std::unique_ptr<engine::Device>> top =
      OpenDeviceOnFile(**loop, args->file, std::move(locked->file), open);
  if (!top.ok()) {
    (void)CloseDevice(**loop, **base);
    return ReportError(absl::StrCat("Could not open '", args->file, "': ", top.status().message()));
  }
  absl::Status s = CommitInto(**loop, *args, *base_index, **top, **base);
  // Closing twice is harmless: CommitInto closed the base when it got there.
  absl::Status base_closed = CloseDevice(**loop, **base);
  absl::Status top_closed = CloseDevice(**loop, **top);
  if (s.ok()) s = base_closed;
  if (s.ok()) s = top_closed;
  if (!s.ok()) return Fail(args->file, s);
  if (!args->quiet) std::printf("Image committed.\n");
  return 0;
}

}  // namespace

const Command kCommitCommand = {
    "commit",
    RunCommit,
    "commit [-f FMT] [-t CACHE] [-b BASE] [-r RATE] [-d] [-p] [-q] [--allow-devices] FILE",
    "Writes the changes FILE holds into its backing file as qemu-img commit does: every range "
    "FILE allocates (data, and zero clusters as zeros) is written into the backing file, which "
    "grows to FILE's size if it is shorter; then FILE is emptied (every cluster unallocated, so "
    "it reads as the backing file) unless -d. With -b BASE (a file of FILE's backing chain, by "
    "its name in the chain or its path), everything allocated in FILE and the images between "
    "FILE and BASE is written into BASE, and nothing is emptied (-b implies -d). The backing "
    "file or BASE is opened writable in the format its overlay names (an unnamed format that "
    "probes as qcow2 is refused). -t sets the cache mode of FILE, the backing file or BASE and "
    "the images between them (qemu-img's default, writeback: each is flushed when done); -r "
    "limits the bytes per second of data written into the backing file or BASE (zero clusters "
    "are not counted, as in qemu-img). Prints "
    "\"Image committed.\" unless -q.",
    kCommitOptions,
};

}  // namespace uq::tools
