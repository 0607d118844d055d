// qcow2-img resize: qemu-img resize for qcow2 (src/engine/resize.h) and raw
// images, with qemu-img's checks and messages: a shrink needs --shrink, a
// relative size (+N / -N) is added to the current one, the result must be
// positive.
#include <fcntl.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "format/status_macros.h"
#include "src/io/uring_file.h"
#include "tools/commands.h"
#include "tools/engine_util.h"
#include "tools/image_lock.h"
#include "tools/util.h"

namespace uq::tools {
namespace {

constexpr int kShrinkId = common::kLongOnlyIdBase;
constexpr int kPreallocationId = common::kLongOnlyIdBase + 1;

constexpr common::OptionSpec kResizeOptions[] = {
    kFormatOption,
    {kShrinkId, 0, "shrink", "",
     "allow the new size to be smaller than the current one (data past the new end is lost)"},
    {kPreallocationId, 0, "preallocation", "MODE",
     "preallocation of the added range: off (the default), metadata (qcow2 only), falloc or "
     "full"},
    kQuietOption,
    kAllowDevicesOption,
    kHelpOption,
};

struct ResizeArgs {
  std::string file;
  std::string format;  // "" = probe
  bool shrink = false;
  bool quiet = false;
  bool allow_devices = false;
  std::string preallocation = "off";
  std::string size_text;
};

absl::StatusOr<ResizeArgs> ParseArgs(const common::ParsedArgs& parsed) {
  ResizeArgs a;
  if (parsed.operands.size() != 2) {
    return absl::InvalidArgumentError("Expecting image file name and size");
  }
  a.file = parsed.operands[0];
  a.size_text = parsed.operands[1];
  if (const std::string* f = parsed.Last('f')) a.format = *f;
  if (const std::string* p = parsed.Last(kPreallocationId)) a.preallocation = *p;
  a.shrink = parsed.Has(kShrinkId);
  a.quiet = parsed.Has('q');
  a.allow_devices = parsed.Has(kAllowDevicesId);
  return a;
}

// The new size in bytes from "[+|-]SIZE" and the current size.
absl::StatusOr<uint64_t> NewSize(const std::string& text, uint64_t current_bytes) {
  int sign = 0;
  absl::string_view number = text;
  if (!number.empty() && (number[0] == '+' || number[0] == '-')) {
    sign = number[0] == '+' ? 1 : -1;
    number.remove_prefix(1);
  }
  absl::StatusOr<uint64_t> n = ParseByteCount(number, "size");
  if (!n.ok() || *n > static_cast<uint64_t>(INT64_MAX)) {
    return absl::InvalidArgumentError("Parameter 'size' expects a non-negative number below 2^64");
  }
  if (sign < 0 && *n >= current_bytes) {
    return absl::InvalidArgumentError("New image size must be positive");
  }
  const uint64_t total = sign == 0 ? *n : sign > 0 ? current_bytes + *n : current_bytes - *n;
  if (total == 0 || (sign > 0 && total < current_bytes)) {
    return absl::InvalidArgumentError("New image size must be positive");
  }
  return total;
}

// qemu-img's order of checks once the current size is known.
absl::StatusOr<uint64_t> CheckedNewSize(const ResizeArgs& a, uint64_t current_bytes, bool qcow2) {
  UQ_ASSIGN_OR_RETURN(uint64_t total, NewSize(a.size_text, current_bytes));
  const std::string& mode = a.preallocation;
  if (mode != "off" && mode != "metadata" && mode != "falloc" && mode != "full") {
    return absl::InvalidArgumentError(absl::StrCat("Invalid preallocation mode '", mode, "'"));
  }
  if (mode != "off" && total < current_bytes) {
    return absl::InvalidArgumentError("Preallocation can only be used for growing images");
  }
  if (total < current_bytes && !a.shrink) {
    return absl::InvalidArgumentError("Use the --shrink option to perform a shrink operation.");
  }
  if (mode == "metadata" && !qcow2) {
    return absl::InvalidArgumentError("Unsupported preallocation mode: metadata");
  }
  return total;
}

engine::GrowPreallocation PreallocationMode(const std::string& mode) {
  if (mode == "metadata") return engine::GrowPreallocation::kMetadata;
  if (mode == "falloc") return engine::GrowPreallocation::kFalloc;
  if (mode == "full") return engine::GrowPreallocation::kFull;
  return engine::GrowPreallocation::kOff;
}

int RunResize(const common::ParsedArgs& parsed) {
  absl::StatusOr<ResizeArgs> args = ParseArgs(parsed);
  if (!args.ok()) return ReportError(args.status());
  // The size's syntax is checked before the image is opened, as qemu-img does.
  if (absl::StatusOr<uint64_t> s = NewSize(args->size_text, UINT64_MAX); !s.ok()) {
    if (!absl::StrContains(s.status().message(), "positive")) return ReportError(s.status());
  }
  absl::StatusOr<std::unique_ptr<io::EventLoop>> loop = io::EventLoop::Create(32);
  if (!loop.ok()) return ReportError(loop.status());
  absl::StatusOr<std::unique_ptr<io::UringFile>> file =
      io::UringFile::Open(loop->get(), args->file, io::OpenFlags{});
  if (!file.ok()) {
    return ReportError(
        absl::StrCat("Could not open '", args->file, "': ", file.status().message()));
  }
  if (absl::Status st = LockImageFile((*file)->fd(), LockMode::kExclusive); !st.ok()) {
    return Fail(args->file, st);
  }
  absl::StatusOr<bool> qcow2 = IsQcow2(**loop, **file, args->format);
  if (!qcow2.ok()) return Fail(args->file, qcow2.status());

  if (*qcow2) {
    absl::StatusOr<PosixFile> posix = PosixFile::Open(args->file, O_RDONLY);
    absl::StatusOr<format::Header> header =
        posix.ok() ? ReadQcow2Header(*posix) : absl::StatusOr<format::Header>(posix.status());
    // A header that does not decode is the engine's to report.
    if (header.ok()) {
      if (absl::Status st = RefuseResizeWithBitmaps(*header); !st.ok()) return Fail(args->file, st);
    }
  }
  EngineOpenOptions open;
  open.format = *qcow2 ? engine::ImageFormat::kQcow2 : engine::ImageFormat::kRaw;
  open.allow_devices = args->allow_devices;
  absl::StatusOr<std::unique_ptr<engine::Device>> device =
      OpenDeviceOnFile(**loop, args->file, std::move(*file), open);
  if (!device.ok()) {
    return ReportError(
        absl::StrCat("Could not open '", args->file, "': ", device.status().message()));
  }
  engine::Device& image = **device;
  absl::StatusOr<uint64_t> total = CheckedNewSize(*args, image.size_bytes(), *qcow2);
  absl::Status s = total.status();
  if (s.ok()) s = RunOnLoop(**loop, image.Resize(*total, PreallocationMode(args->preallocation)));
  absl::Status closed = CloseDevice(**loop, image);
  if (!s.ok()) return ReportError(s);
  if (!closed.ok()) return Fail(args->file, closed);
  if (!args->quiet) std::printf("Image resized.\n");
  return 0;
}

}  // namespace

const Command kResizeCommand = {
    "resize",
    RunResize,
    "resize [-f FMT] [--shrink] [--preallocation=MODE] [-q] [--allow-devices] FILE [+|-]SIZE",
    "Changes the virtual size of a qcow2 or raw image as qemu-img resize does. SIZE is in bytes "
    "or with a suffix k, M, G, T, P or E; +SIZE and -SIZE are relative to the current size (no "
    "'--' is needed before a negative one). Shrinking needs --shrink and drops the data past the "
    "new end; a qcow2 image's new size must be a multiple of 512. A qcow2 image's L1 table grows "
    "(and moves) when the new size needs it; growing an image whose backing file is longer than "
    "it zeroes the added range so the backing file does not show through.\n\n"
    "Preallocation applies to a grown range, as qemu-img's: metadata gives every qcow2 cluster "
    "there a host cluster named by its L2 entry, without writing it; falloc also has the file "
    "system allocate (and zero) the space; full writes zeros. A raw file takes falloc and full. "
    "What the disk reads does not change.\n\n"
    "An external data file is truncated to the new size, as qemu-img does.\n\n"
    "Not supported (refused before any change): qcow2 images "
    "with persistent bitmaps, and growing an L1 table to as many "
    "clusters as one refcount block covers (512-byte clusters past 512 MiB, 4 KiB clusters past "
    "2 TiB, at 16-bit refcounts).",
    kResizeOptions,
    /*negative_last_operand=*/true,
};

}  // namespace uq::tools
