#include "tools/engine_util.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "format/status_macros.h"
#include "src/engine/open_path.h"
#include "src/io/no_flush_file.h"
#include "src/io/uring_file.h"
#include "tools/image_lock.h"

namespace uq::tools {

namespace {

// Value of a digit in `base` or -1.
int DigitValue(char c, int base) {
  int v = -1;
  if (c >= '0' && c <= '9') v = c - '0';
  if (c >= 'a' && c <= 'f') v = c - 'a' + 10;
  if (c >= 'A' && c <= 'F') v = c - 'A' + 10;
  return v < base ? v : -1;
}

// Parses an unsigned integer prefix; returns the number of characters used
// (0 = none) or nullopt on overflow.
std::optional<size_t> ParseUnsignedPrefix(absl::string_view text, int base, uint64_t* out) {
  uint64_t value = 0;
  size_t i = 0;
  for (; i < text.size(); ++i) {
    int d = DigitValue(text[i], base);
    if (d < 0) break;
    if (value > (std::numeric_limits<uint64_t>::max() - d) / base) return std::nullopt;
    value = value * base + d;
  }
  *out = value;
  return i;
}

}  // namespace

absl::StatusOr<uint64_t> ParseCount(absl::string_view text, absl::string_view what) {
  auto bad = [&] {
    return absl::InvalidArgumentError(absl::StrCat("invalid ", what, " '", text, "'"));
  };
  int base = 10;
  absl::string_view digits = text;
  if (digits.size() > 2 && digits[0] == '0' && (digits[1] == 'x' || digits[1] == 'X')) {
    base = 16;
    digits.remove_prefix(2);
  }
  uint64_t value = 0;
  std::optional<size_t> used = ParseUnsignedPrefix(digits, base, &value);
  if (!used.has_value())
    return absl::OutOfRangeError(absl::StrCat(what, " '", text, "' is too large"));
  if (*used == 0 || *used != digits.size()) return bad();
  return value;
}

absl::StatusOr<uint64_t> ParseByteCount(absl::string_view text, absl::string_view what) {
  auto bad = [&] {
    return absl::InvalidArgumentError(absl::StrCat("invalid ", what, " '", text, "'"));
  };
  auto too_large = [&] {
    return absl::OutOfRangeError(absl::StrCat(what, " '", text, "' is too large"));
  };
  if (text.empty()) return bad();
  // Hex is plain bytes only (as in qemu_strtosz: no fraction with hex).
  if (text.size() > 2 && text[0] == '0' && (text[1] == 'x' || text[1] == 'X')) {
    return ParseCount(text, what);
  }
  uint64_t integer = 0;
  std::optional<size_t> used = ParseUnsignedPrefix(text, 10, &integer);
  if (!used.has_value()) return too_large();
  if (*used == 0) return bad();
  absl::string_view rest = text.substr(*used);
  double fraction = 0;
  if (!rest.empty() && rest[0] == '.') {
    rest.remove_prefix(1);
    double scale = 0.1;
    size_t n = 0;
    while (n < rest.size() && rest[n] >= '0' && rest[n] <= '9') {
      fraction += (rest[n] - '0') * scale;
      scale /= 10;
      ++n;
    }
    if (n == 0) return bad();
    rest.remove_prefix(n);
  }
  int shift = 0;
  if (!rest.empty()) {
    if (rest.size() != 1) return bad();
    switch (absl::ascii_tolower(static_cast<unsigned char>(rest[0]))) {
      case 'b':
        shift = 0;
        break;
      case 'k':
        shift = 10;
        break;
      case 'm':
        shift = 20;
        break;
      case 'g':
        shift = 30;
        break;
      case 't':
        shift = 40;
        break;
      case 'p':
        shift = 50;
        break;
      case 'e':
        shift = 60;
        break;
      default:
        return bad();
    }
  }
  if (fraction != 0 && shift == 0) return bad();  // "1.5" bytes is meaningless
  if (shift > 0 && integer > (std::numeric_limits<uint64_t>::max() >> shift)) return too_large();
  uint64_t value = integer << shift;
  if (fraction != 0) {
    double extra = std::floor(fraction * std::ldexp(1.0, shift));
    if (extra >= std::ldexp(1.0, 64) - static_cast<double>(value)) return too_large();
    value += static_cast<uint64_t>(extra);
  }
  return value;
}

absl::StatusOr<engine::ImageFormat> ParseFormatName(absl::string_view name) {
  if (name == "qcow2") return engine::ImageFormat::kQcow2;
  if (name == "raw") return engine::ImageFormat::kRaw;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown or unsupported format '", name, "' (supported: qcow2, raw)"));
}

int ReportError(absl::string_view message) {
  std::fprintf(stderr, "qcow2-img: %.*s\n", static_cast<int>(message.size()), message.data());
  return 1;
}

absl::StatusOr<bool> IsQcow2(io::EventLoop& loop, io::BlockFile& file, const std::string& format) {
  if (!format.empty()) {
    UQ_ASSIGN_OR_RETURN(engine::ImageFormat f, ParseFormatName(format));
    return f == engine::ImageFormat::kQcow2;
  }
  // The qcow2 magic: bytes 0..3, "QFI\xfb".
  AlignedBuffer head(4096);
  const int64_t r = RunOnLoop(loop, file.Read(0, head.span()));
  if (r < 0) return absl::InternalError(absl::StrCat("reading the header: ", std::strerror(-r)));
  const auto* b = reinterpret_cast<const uint8_t*>(head.data());
  return file.size_bytes() >= 4 && b[0] == 0x51 && b[1] == 0x46 && b[2] == 0x49 && b[3] == 0xfb;
}

namespace {

// Opens and locks one file: the image and its data file are locked for
// writing when opened writable; backing files (never writable) and read-only
// opens share the lock; -U takes none.
absl::StatusOr<std::unique_ptr<io::UringFile>> OpenLocked(io::EventLoop* loop,
                                                          const std::string& path, bool writable,
                                                          bool direct, bool force_share) {
  io::OpenFlags flags;
  flags.read_only = !writable;
  flags.direct = direct;
  UQ_ASSIGN_OR_RETURN(LockMode mode, LockModeFor(writable, force_share));
  UQ_ASSIGN_OR_RETURN(std::unique_ptr<io::UringFile> file, io::UringFile::Open(loop, path, flags));
  UQ_RETURN_IF_ERROR(LockImageFile(file->fd(), mode));
  return file;
}

}  // namespace

bool SameFile(const std::string& a, const std::string& b) {
  struct stat sa {};
  struct stat sb {};
  return stat(a.c_str(), &sa) == 0 && stat(b.c_str(), &sb) == 0 && sa.st_dev == sb.st_dev &&
         sa.st_ino == sb.st_ino;
}

std::unique_ptr<io::BlockFile> MaybeNoFlush(std::unique_ptr<io::BlockFile> file, bool no_flush) {
  if (!no_flush) return file;
  return std::make_unique<io::NoFlushFile>(std::move(file));
}

absl::StatusOr<std::unique_ptr<engine::Device>> OpenDevice(io::EventLoop& loop,
                                                           const std::string& path,
                                                           const EngineOpenOptions& options) {
  UQ_ASSIGN_OR_RETURN(
      std::unique_ptr<io::UringFile> file,
      OpenLocked(&loop, path, !options.read_only, options.direct_io, options.force_share));
  return OpenDeviceOnFile(loop, path, std::move(file), options);
}

absl::StatusOr<std::unique_ptr<engine::Device>> OpenDeviceOnFile(
    io::EventLoop& loop, const std::string& path, std::unique_ptr<io::UringFile> file,
    const EngineOpenOptions& options) {
  const bool direct = options.direct_io;
  const bool force_share = options.force_share;
  const bool no_flush = options.no_flush;
  engine::PathOptions open;
  open.format = options.format;
  open.read_only = options.read_only;
  open.snapshot = options.snapshot;
  open.data_file = options.data_file;
  open.allow_devices = options.allow_devices;
  // O_DIRECT files need aligned offsets, lengths and buffers for metadata I/O
  // too: the engine bounces through AlignedFile when told the alignment (1
  // where O_DIRECT fell back to buffered I/O).
  if (direct) open.file_alignment_bytes = file->alignment_bytes();
  io::EventLoop* loop_ptr = &loop;
  const std::string unlocked = options.unlocked_path;
  open.opener = [loop_ptr, direct, force_share, no_flush, unlocked](
                    const std::string& name,
                    bool writable) -> absl::StatusOr<std::unique_ptr<io::BlockFile>> {
    const bool share = force_share || (!unlocked.empty() && SameFile(name, unlocked));
    UQ_ASSIGN_OR_RETURN(std::unique_ptr<io::UringFile> f,
                        OpenLocked(loop_ptr, name, writable, direct, share));
    return MaybeNoFlush(std::move(f), no_flush && writable);
  };
  std::unique_ptr<io::BlockFile> image = MaybeNoFlush(std::move(file), no_flush);
  return RunOnLoop(loop, engine::OpenPathOnFile(path, std::move(image), std::move(open)));
}

AlignedBuffer::AlignedBuffer(size_t size_bytes) : size_(size_bytes) {
  // Buffers of a huge page or more (convert's chunks) are backed by huge
  // pages where the kernel allows: one fault instead of 512 per 2 MiB, which
  // is most of a short convert's start-up on a virtual machine.
  constexpr size_t kHugePage = 2 << 20;
  const size_t align = size_bytes >= kHugePage ? kHugePage : 4096;
  size_t rounded = (size_bytes + align - 1) / align * align;
  if (rounded == 0) rounded = align;
  data_ = static_cast<std::byte*>(std::aligned_alloc(align, rounded));
  if (data_ == nullptr) {
    std::fprintf(stderr, "qcow2-img: out of memory (%zu bytes)\n", size_bytes);
    std::_Exit(1);
  }
  if (align == kHugePage) madvise(data_, rounded, MADV_HUGEPAGE);  // a hint: failure is fine
  std::memset(data_, 0, rounded);
}

bool IsAllZero(std::span<const std::byte> bytes) {
  // Word-at-a-time scan; buffers here are large and usually aligned.
  size_t i = 0;
  for (; i < bytes.size() && (reinterpret_cast<uintptr_t>(bytes.data() + i) & 7) != 0; ++i) {
    if (bytes[i] != std::byte{0}) return false;
  }
  for (; i + 64 <= bytes.size(); i += 64) {
    uint64_t acc = 0;
    for (size_t w = 0; w < 8; ++w) {
      uint64_t word;
      std::memcpy(&word, bytes.data() + i + w * 8, 8);
      acc |= word;
    }
    if (acc != 0) return false;
  }
  for (; i < bytes.size(); ++i) {
    if (bytes[i] != std::byte{0}) return false;
  }
  return true;
}

absl::Status CloseDevice(io::EventLoop& loop, engine::Device& device) {
  absl::Status s = RunOnLoop(loop, device.Close());
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat("closing the image: ", s.message()));
  return absl::OkStatus();
}

}  // namespace uq::tools
