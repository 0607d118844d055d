// qcow2-img dd: qemu-img dd. Copies the input image's guest bytes
// [skip * bs, end) into a newly created output image, where end is the
// input's size, or count * bs if that is smaller (qemu-img counts `count`
// from the start of the input, skipped blocks included). The output is
// created with -O's format (raw by default) and the copied length rounded up
// to 512 bytes; an existing output file is replaced. A skip past the end
// gives an empty output and a warning, exit 0, as qemu-img does.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "format/create.h"
#include "format/status_macros.h"
#include "src/io/uring_file.h"
#include "tools/commands.h"
#include "tools/engine_util.h"
#include "tools/image_lock.h"
#include "tools/util.h"

namespace uq::tools {
namespace {

constexpr common::OptionSpec kDdOptions[] = {
    kFormatOption,
    {'O', 'O', "", "FMT", "output format, qcow2 or raw (default raw)"},
    kAllowDevicesOption,
    kHelpOption,
};

constexpr uint64_t kMaxBlockBytes = 2147483647;  // INT_MAX, qemu-img's bound on bs
constexpr uint64_t kChunkBytes = 1 << 20;

struct DdArgs {
  std::string in_file;
  std::string out_file;
  std::string in_format;  // "" = probe
  std::string out_format = "raw";
  bool allow_devices = false;
  uint64_t block_bytes = 512;
  bool has_count = false;
  uint64_t count = 0;
  bool has_skip = false;
  uint64_t skip = 0;
};

absl::Status BadNumber(absl::string_view key) {
  return absl::InvalidArgumentError(
      absl::StrCat("Invalid ", key,
                   " specified. You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, "
                   "gigabytes, terabytes, petabytes and exabytes."));
}

absl::StatusOr<DdArgs> ParseArgs(const common::ParsedArgs& parsed) {
  DdArgs a;
  if (const std::string* f = parsed.Last('f')) a.in_format = *f;
  if (const std::string* o = parsed.Last('O')) a.out_format = *o;
  a.allow_devices = parsed.Has(kAllowDevicesId);
  for (const std::string& operand : parsed.operands) {
    const size_t eq = operand.find('=');
    const std::string key = operand.substr(0, eq);
    if (eq == std::string::npos ||
        (key != "bs" && key != "count" && key != "skip" && key != "if" && key != "of")) {
      return absl::InvalidArgumentError(absl::StrCat("unrecognized operand ", key));
    }
    const std::string value = operand.substr(eq + 1);
    if (key == "if") {
      a.in_file = value;
    } else if (key == "of") {
      a.out_file = value;
    } else {
      absl::StatusOr<uint64_t> n = ParseByteCount(value, key);
      if (!n.ok() || *n > static_cast<uint64_t>(INT64_MAX)) return BadNumber(key);
      if (key == "bs") {
        if (*n == 0 || *n > kMaxBlockBytes) {
          return absl::InvalidArgumentError(
              "Invalid bs specified. Must be between 1 and 2147483647.");
        }
        a.block_bytes = *n;
      } else if (key == "count") {
        a.has_count = true;
        a.count = *n;
      } else {
        a.has_skip = true;
        a.skip = *n;
      }
    }
  }
  if (a.in_file.empty() || a.out_file.empty()) {
    return absl::InvalidArgumentError("Must specify both input and output files");
  }
  UQ_RETURN_IF_ERROR(ParseFormatName(a.out_format).status());
  return a;
}

// Creates (or empties) the output under the writer's lock and lays out an
// empty image of `size_bytes` in it.
absl::StatusOr<std::unique_ptr<io::UringFile>> CreateOutput(io::EventLoop& loop, const DdArgs& a,
                                                            uint64_t size_bytes) {
  io::OpenFlags flags;
  flags.create = true;
  UQ_ASSIGN_OR_RETURN(std::unique_ptr<io::UringFile> file,
                      io::UringFile::Open(&loop, a.out_file, flags));
  UQ_RETURN_IF_ERROR(LockImageFile(file->fd(), LockMode::kExclusive));
  int r = RunOnLoop(loop, file->Truncate(0));
  uint64_t file_size = size_bytes;
  if (r >= 0 && a.out_format == "qcow2") {
    format::CreateOptions options;
    options.size_bytes = size_bytes;
    UQ_ASSIGN_OR_RETURN(format::ImageLayout layout, format::BuildImageLayout(options));
    for (const format::WriteRange& w : layout.writes) {
      const int64_t n = RunOnLoop(loop, file->Write(w.offset_bytes, w.data));
      if (n < 0) {
        r = static_cast<int>(n);
        break;
      }
    }
    file_size = layout.file_size_bytes;
  }
  if (r >= 0) r = RunOnLoop(loop, file->Truncate(file_size));
  if (r >= 0) r = RunOnLoop(loop, file->Flush());
  if (r < 0) return absl::InternalError(std::strerror(-r));
  return file;
}

// Copies input [in_pos, end) to output [0, end - in_pos). Device requests
// are widened to 512-byte sectors (the qcow2 engine's unit): reads within
// the input's size, writes padded with zeros inside the output's rounded-up
// size.
absl::Status Copy(io::EventLoop& loop, engine::Device& in, engine::Device& out, uint64_t in_pos,
                  uint64_t end) {
  AlignedBuffer buf(kChunkBytes + 1024);
  uint64_t out_pos = 0;
  while (in_pos < end) {
    const uint64_t n = std::min(kChunkBytes, end - in_pos);
    const uint64_t read_start = in_pos / 512 * 512;
    const uint64_t read_end = std::min((in_pos + n + 511) / 512 * 512, in.size_bytes());
    iovec riov = buf.Iov(0, read_end - read_start);
    int r = RunOnLoop(loop, in.Read(read_start, std::span<const iovec>(&riov, 1)));
    if (r < 0) {
      return absl::InternalError(
          absl::StrCat("error while reading input at offset ", in_pos, ": ", std::strerror(-r)));
    }
    std::memmove(buf.data(), buf.data() + (in_pos - read_start), n);
    const uint64_t write_len = std::min((n + 511) / 512 * 512, out.size_bytes() - out_pos);
    std::memset(buf.data() + n, 0, write_len - n);
    iovec wiov = buf.Iov(0, write_len);
    r = RunOnLoop(loop, out.Write(out_pos, std::span<const iovec>(&wiov, 1), false));
    if (r < 0) {
      return absl::InternalError(
          absl::StrCat("error while writing to output image file: ", std::strerror(-r)));
    }
    in_pos += n;
    out_pos += n;
  }
  return absl::OkStatus();
}

int RunDd(const common::ParsedArgs& parsed) {
  absl::StatusOr<DdArgs> args = ParseArgs(parsed);
  if (!args.ok()) return ReportError(args.status());
  absl::StatusOr<std::unique_ptr<io::EventLoop>> loop = io::EventLoop::Create(32);
  if (!loop.ok()) return ReportError(loop.status());

  EngineOpenOptions in_options;
  in_options.read_only = true;
  in_options.allow_devices = args->allow_devices;
  if (!args->in_format.empty()) {
    absl::StatusOr<engine::ImageFormat> f = ParseFormatName(args->in_format);
    if (!f.ok()) return ReportError(f.status());
    in_options.format = *f;
  }
  absl::StatusOr<std::unique_ptr<engine::Device>> in =
      OpenDevice(**loop, args->in_file, in_options);
  if (!in.ok()) {
    return ReportError(
        absl::StrCat("Could not open '", args->in_file, "': ", in.status().message()));
  }
  const uint64_t bs = args->block_bytes;
  uint64_t size = (*in)->size_bytes();
  if (args->has_count && args->count <= static_cast<uint64_t>(INT64_MAX) / bs &&
      size > args->count * bs) {
    size = args->count * bs;
  }
  const bool skip_past_end =
      args->has_skip &&
      (args->skip > static_cast<uint64_t>(INT64_MAX) / bs || size < args->skip * bs);
  const uint64_t in_pos = skip_past_end ? size : args->skip * bs;
  const uint64_t out_size = (size - in_pos + 511) / 512 * 512;

  absl::StatusOr<std::unique_ptr<io::UringFile>> out_file = CreateOutput(**loop, *args, out_size);
  if (!out_file.ok()) {
    return Fail(args->out_file,
                absl::StrCat("error while creating output image: ", out_file.status().message()));
  }
  EngineOpenOptions out_options;
  out_options.format =
      args->out_format == "qcow2" ? engine::ImageFormat::kQcow2 : engine::ImageFormat::kRaw;
  // The new output names no other file; the option goes to every open all
  // the same.
  out_options.allow_devices = args->allow_devices;
  absl::StatusOr<std::unique_ptr<engine::Device>> out =
      OpenDeviceOnFile(**loop, args->out_file, std::move(*out_file), out_options);
  if (!out.ok()) {
    return ReportError(
        absl::StrCat("Could not open '", args->out_file, "': ", out.status().message()));
  }
  if (skip_past_end) {
    std::fprintf(stderr, "qcow2-img: %s: cannot skip to specified offset\n", args->in_file.c_str());
  }
  absl::Status copied = Copy(**loop, **in, **out, in_pos, size);
  absl::Status closed = CloseDevice(**loop, **out);
  if (!copied.ok()) return ReportError(copied);
  if (!closed.ok()) return Fail(args->out_file, closed);
  return 0;
}

}  // namespace

const Command kDdCommand = {
    "dd",
    RunDd,
    "dd [-f FMT] [-O FMT] [--allow-devices] [bs=BYTES] [count=BLOCKS] [skip=BLOCKS] if=INPUT "
    "of=OUTPUT",
    "Copies an image's guest bytes into a new image as qemu-img dd does. Operands: bs=BYTES the "
    "block size (default 512, at most 2147483647); count=BLOCKS stop after this many blocks of "
    "the input, counted from its start (skipped blocks included); skip=BLOCKS start copying this "
    "many blocks into the input; if=INPUT the input image (-f gives its format, probed "
    "otherwise); of=OUTPUT the output image, created (replaced if it exists) with -O's format "
    "and the copied length rounded up to 512 bytes. Numbers take the suffixes k, M, G, T, P, E.",
    kDdOptions,
};

}  // namespace uq::tools
