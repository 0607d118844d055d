// qcow2-img rebase: qemu-img rebase for qcow2 images. Safe mode reads every
// range the image does not allocate itself through the old backing chain
// and through the new one, writes into the image the 512-byte sectors that
// differ (so what the guest sees does not change), closes the image (which
// flushes those writes) and only then rewrites the header's backing file
// name and format. -u rewrites the header only; -b "" flattens (the new
// backing reads as zeros, so everything the old chain holds is copied in).
//
// Cache modes and locks as qemu-img rebase's: -t is FILE's (and, as there,
// that of the old backing chain it reads through), -T that of the new
// backing file and its chain, which are only read; -U opens the new backing
// file and its chain without taking their locks (FILE and its old chain are
// locked as ever, and -u opens no backing file at all).
//
// Unlike qemu-img, what would make the header rewrite fail (-b without -F,
// a name that does not fit in the first cluster, a raw image) is refused
// before anything is written, so a refused rebase leaves the image as it
// was.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "format/header.h"
#include "format/status_macros.h"
#include "src/io/aligned_file.h"
#include "src/io/uring_file.h"
#include "tools/backing_header.h"
#include "tools/chain_edit.h"
#include "tools/commands.h"
#include "tools/convert_copy.h"
#include "tools/convert_options.h"
#include "tools/engine_util.h"
#include "tools/util.h"

namespace uq::tools {
namespace {

constexpr common::OptionSpec kRebaseOptions[] = {
    kFormatOption,
    {'u', 'u', "", "", "unsafe: only rewrite the backing file name and format in the header"},
    {'b', 'b', "", "BACKING",
     "the new backing file (relative to the image's directory); \"\" for none"},
    {'F', 'F', "", "FMT", "the new backing file's format, qcow2 or raw (required with -b BACKING)"},
    {'t', 't', "", "CACHE",
     "cache mode of FILE (and of the old backing chain read through it): writeback (default, "
     "flushed at the end), unsafe (never flushed) or none (O_DIRECT, flushed at the end)"},
    {'T', 'T', "", "SRC_CACHE",
     "cache mode of BACKING and its backing chain, which are only read: writeback (default; "
     "unsafe is the same) or none (O_DIRECT)"},
    {'U', 'U', "force-share", "",
     "open BACKING and its backing chain without taking their image locks (FILE is locked "
     "still)"},
    {'p', 'p', "", "", "show progress"},
    kQuietOption,
    kAllowDevicesOption,
    kHelpOption,
};

constexpr uint64_t kChunkBytes = 1 << 20;
constexpr uint64_t kSector = 512;

struct RebaseArgs {
  std::string file;
  std::string format;   // "" = probe
  std::string backing;  // "" = none
  std::optional<std::string> backing_format;
  bool unsafe = false;
  CacheMode cache;      // -t, FILE's; default writeback
  CacheMode src_cache;  // -T, the new backing file's
  bool force_share = false;
  bool allow_devices = false;  // --allow-devices (safe mode: -u opens no other file)
  bool progress = false;
  bool quiet = false;
};

absl::StatusOr<RebaseArgs> ParseArgs(const common::ParsedArgs& parsed) {
  RebaseArgs a;
  a.unsafe = parsed.Has('u');
  a.quiet = parsed.Has('q');
  a.progress = parsed.Has('p') && !a.quiet;
  if (const std::string* f = parsed.Last('f')) a.format = *f;
  const std::string* b = parsed.Last('b');
  if (b != nullptr) a.backing = *b;
  if (const std::string* f = parsed.Last('F')) a.backing_format = *f;
  a.force_share = parsed.Has('U');
  a.allow_devices = parsed.Has(kAllowDevicesId);
  if (parsed.operands.size() != 1) {
    return absl::InvalidArgumentError("Expecting one image file name");
  }
  a.file = parsed.operands[0];
  if (!a.unsafe && b == nullptr) {
    return absl::InvalidArgumentError("Must specify backing file (-b) or use unsafe mode (-u)");
  }
  if (!a.format.empty()) UQ_RETURN_IF_ERROR(ParseFormatName(a.format).status());
  if (a.backing_format) UQ_RETURN_IF_ERROR(ParseFormatName(*a.backing_format).status());
  UQ_RETURN_IF_ERROR(ParseCacheOption(parsed, 't', a.cache));
  UQ_RETURN_IF_ERROR(ParseCacheOption(parsed, 'T', a.src_cache));
  if (!a.backing.empty() && !a.backing_format) {
    return absl::InvalidArgumentError(
        absl::StrCat(a.file, ": Could not change the backing file to '", a.backing,
                     "': backing format must be specified"));
  }
  return a;
}

// Reads [offset, offset + n) of `device`, zeros past its end (a shorter
// backing file reads as zeros there, as in QEMU).
absl::Status ReadPadded(io::EventLoop& loop, engine::Device* device, uint64_t offset, uint64_t n,
                        AlignedBuffer& buf) {
  std::memset(buf.data(), 0, n);
  if (device == nullptr || offset >= device->size_bytes()) return absl::OkStatus();
  const uint64_t len = std::min(n, (device->size_bytes() - offset) / kSector * kSector);
  if (len == 0) return absl::OkStatus();
  iovec iov = buf.Iov(0, len);
  const int r = RunOnLoop(loop, device->Read(offset, std::span<const iovec>(&iov, 1)));
  if (r < 0) {
    return absl::InternalError(
        absl::StrCat("error while reading at offset ", offset, ": ", std::strerror(-r)));
  }
  return absl::OkStatus();
}

// Safe mode's copy: for every range `image` does not allocate itself, the
// sectors where the old chain (what `image` reads there now) and
// `new_backing` (null: zeros) differ are written into `image` with the old
// contents.
absl::Status CopyDifferences(io::EventLoop& loop, const std::vector<LayerRun>& runs,
                             engine::Device& image, engine::Device* new_backing,
                             Progress& progress) {
  AlignedBuffer old_buf(kChunkBytes);
  AlignedBuffer new_buf(kChunkBytes);
  const double size = static_cast<double>(image.size_bytes());
  for (const LayerRun& run : runs) {
    for (uint64_t done = 0; !run.allocated && done < run.bytes;) {
      const uint64_t offset = run.offset + done;
      const uint64_t n = std::min(kChunkBytes, run.bytes - done);
      UQ_RETURN_IF_ERROR(ReadPadded(loop, &image, offset, n, old_buf));
      UQ_RETURN_IF_ERROR(ReadPadded(loop, new_backing, offset, n, new_buf));
      uint64_t pos = 0;
      while (pos < n) {
        const bool same = std::memcmp(old_buf.data() + pos, new_buf.data() + pos, kSector) == 0;
        uint64_t end = pos + kSector;
        while (end < n &&
               (std::memcmp(old_buf.data() + end, new_buf.data() + end, kSector) == 0) == same) {
          end += kSector;
        }
        if (!same) {
          iovec iov = old_buf.Iov(pos, end - pos);
          const int r =
              RunOnLoop(loop, image.Write(offset + pos, std::span<const iovec>(&iov, 1), false));
          if (r < 0) {
            return absl::InternalError(
                absl::StrCat("Error while writing to COW image: ", std::strerror(-r)));
          }
        }
        pos = end;
      }
      done += n;
      progress.Update(static_cast<double>(offset + n) / size);
    }
  }
  return absl::OkStatus();
}

// Writes `cluster` at the start of `path` through an O_DIRECT open of its
// own (bounced to the file's alignment) and flushes it: -t none's header
// rewrite. The caller holds the image lock on another open of the file.
absl::Status WriteDirect(io::EventLoop& loop, const std::string& path,
                         std::span<const std::byte> cluster) {
  io::OpenFlags flags;
  flags.direct = true;
  UQ_ASSIGN_OR_RETURN(std::unique_ptr<io::UringFile> direct,
                      io::UringFile::Open(&loop, path, flags));
  const uint32_t alignment_bytes = direct->alignment_bytes();
  std::unique_ptr<io::BlockFile> file = std::move(direct);
  if (alignment_bytes > 1) {
    file = std::make_unique<io::AlignedFile>(std::move(file), alignment_bytes);
  }
  const uint64_t size_bytes = file->size_bytes();
  const int64_t written = RunOnLoop(loop, file->Write(0, cluster));
  if (written < 0) return absl::InternalError(std::strerror(static_cast<int>(-written)));
  // A file shorter than the alignment (a tiny image of small clusters) was
  // extended by the bounce's zeros; QEMU's write, aligned to the sector,
  // leaves it as it was.
  if (file->size_bytes() > size_bytes) {
    const int truncated = RunOnLoop(loop, file->Truncate(size_bytes));
    if (truncated < 0) return absl::InternalError(std::strerror(-truncated));
  }
  const int flushed = RunOnLoop(loop, file->Flush());
  if (flushed < 0) return absl::InternalError(std::strerror(-flushed));
  return absl::OkStatus();
}

// The header rewrite that ends every rebase, in FILE's cache mode: synced
// (writeback), not synced (unsafe) or written with O_DIRECT and flushed
// (none).
absl::Status RewriteHeader(io::EventLoop& loop, const RebaseArgs& a, const PosixFile& header) {
  if (!a.cache.direct && !a.cache.no_flush) {
    return WriteBackingHeader(header, a.backing, a.backing_format);
  }
  UQ_ASSIGN_OR_RETURN(BackingHeader h, HeaderWithBacking(header, a.backing, a.backing_format));
  absl::Status s =
      a.cache.direct ? WriteDirect(loop, a.file, h.cluster) : header.WriteAt(0, h.cluster);
  if (!s.ok()) {
    return absl::Status(s.code(), absl::StrCat("Could not change the backing file to '", a.backing,
                                               "': ", s.message()));
  }
  return absl::OkStatus();
}

// -u: the header alone. The image is not opened through the engine (its
// backing file may be missing, which is why one rebases with -u), so an image
// the engine would have to repair first is refused.
absl::Status RebaseUnsafe(io::EventLoop& loop, const RebaseArgs& a, const PosixFile& header) {
  UQ_ASSIGN_OR_RETURN(format::Header h, ReadQcow2Header(header));
  if (h.incompatible_features & format::kIncompatCorrupt) {
    return absl::FailedPreconditionError("Image is corrupt; cannot be opened read/write");
  }
  if (h.incompatible_features & format::kIncompatDirty) {
    return absl::FailedPreconditionError(
        "Image was not closed cleanly (dirty bit set); repair it first (qcow2-img check -r all)");
  }
  return RewriteHeader(loop, a, header);
}

absl::Status RebaseSafe(io::EventLoop& loop, const RebaseArgs& a, LockedImage& locked,
                        Progress& progress) {
  std::unique_ptr<engine::Device> new_backing;
  if (!a.backing.empty()) {
    EngineOpenOptions open;
    open.read_only = true;
    open.direct_io = a.src_cache.direct;
    open.force_share = a.force_share;
    open.allow_devices = a.allow_devices;
    UQ_ASSIGN_OR_RETURN(open.format, ParseFormatName(*a.backing_format));
    absl::StatusOr<std::unique_ptr<engine::Device>> d =
        OpenDevice(loop, ResolveRelative(a.file, a.backing), open);
    if (!d.ok()) {
      return absl::Status(d.status().code(), absl::StrCat("Could not open new backing file '",
                                                          a.backing, "': ", d.status().message()));
    }
    new_backing = std::move(*d);
  }
  EngineOpenOptions open;
  open.format = engine::ImageFormat::kQcow2;
  open.direct_io = a.cache.direct;
  open.no_flush = a.cache.no_flush;
  open.allow_devices = a.allow_devices;
  absl::StatusOr<std::unique_ptr<engine::Device>> image =
      OpenDeviceOnFile(loop, a.file, std::move(locked.file), open);
  if (!image.ok()) {
    return absl::Status(image.status().code(),
                        absl::StrCat("Could not open '", a.file, "': ", image.status().message()));
  }
  absl::StatusOr<Chain> chain = Chain::Open(a.file, "qcow2", LockMode::kNone, "", a.allow_devices);
  absl::StatusOr<std::vector<LayerRun>> runs =
      chain.ok() ? RunsAbove(*chain, 1) : absl::StatusOr<std::vector<LayerRun>>(chain.status());
  absl::Status s = runs.status();
  if (s.ok()) s = CopyDifferences(loop, *runs, **image, new_backing.get(), progress);
  if (new_backing != nullptr) (void)RunOnLoop(loop, new_backing->Close());
  // Closing flushes the copied data (unless -t unsafe): it is durable before
  // the header names the new backing file.
  absl::Status closed = CloseDevice(loop, **image);
  UQ_RETURN_IF_ERROR(s);
  UQ_RETURN_IF_ERROR(closed);
  return RewriteHeader(loop, a, locked.header);
}

int RunRebase(const common::ParsedArgs& parsed) {
  absl::StatusOr<RebaseArgs> args = ParseArgs(parsed);
  if (!args.ok()) return ReportError(args.status());
  absl::StatusOr<std::unique_ptr<io::EventLoop>> loop = io::EventLoop::Create(32);
  if (!loop.ok()) return ReportError(loop.status());
  // -u writes the header alone (RewriteHeader opens FILE with O_DIRECT
  // itself for that).
  absl::StatusOr<LockedImage> locked =
      OpenLockedImage(**loop, args->file, args->format, args->cache.direct && !args->unsafe);
  if (!locked.ok()) return ReportError(locked.status());
  if (!locked->qcow2) {
    return Fail(args->file, absl::StrCat("Could not change the backing file to '",
                                         args->backing.empty() ? "(null)" : args->backing,
                                         "': Operation not supported"));
  }
  // The new header must fit before anything is written.
  if (absl::Status s =
          HeaderWithBacking(locked->header, args->backing, args->backing_format).status();
      !s.ok()) {
    return Fail(args->file, s);
  }
  Progress progress(args->progress);
  progress.Update(0);
  absl::Status s = args->unsafe ? RebaseUnsafe(**loop, *args, locked->header)
                                : RebaseSafe(**loop, *args, *locked, progress);
  if (!s.ok()) return Fail(args->file, s);
  progress.Finish();
  return 0;
}

}  // namespace

const Command kRebaseCommand = {
    "rebase",
    RunRebase,
    "rebase [-f FMT] [-t CACHE] [-T SRC_CACHE] [-U] [-u] [-b BACKING] [-F FMT] [-p] [-q] "
    "[--allow-devices] FILE",
    "Changes the backing file of a qcow2 image as qemu-img rebase does. Safe mode (the default) "
    "keeps what the guest sees: every range FILE does not allocate itself is read through the "
    "old backing chain and through BACKING, and the sectors that differ are copied into FILE "
    "before the header names BACKING (FILE grows by those clusters). -b \"\" removes the backing "
    "file, copying in everything the old chain holds. A relative BACKING is opened relative to "
    "FILE's directory and stored as given; -F names its format and is required with a "
    "non-empty -b. -u only rewrites the header (BACKING is not opened and need not exist; without "
    "-b the backing file is removed); it refuses an image that was not closed cleanly. A "
    "rebase that cannot finish (a new name that does not fit in the first cluster, a raw FILE, "
    "a BACKING that cannot be opened) is refused before FILE changes. -t sets the cache mode of "
    "FILE and of the old backing chain read through it, -T that of BACKING and its chain "
    "(qemu-img's default for both, writeback: FILE is flushed when done); -U opens BACKING and "
    "its chain without their locks; --allow-devices lets the old and the new chain name block "
    "devices (with -u nothing but FILE is opened, so -U, -T and --allow-devices change nothing "
    "there).",
    kRebaseOptions,
};

}  // namespace uq::tools
