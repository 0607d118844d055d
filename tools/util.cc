#include "tools/util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "format/status_macros.h"
#include "tools/commands.h"

namespace uq::tools {

absl::StatusOr<bool> WantJson(const common::ParsedArgs& args) {
  const std::string* output = args.Last(kOutputId);
  if (output == nullptr || *output == "human") return false;
  if (*output == "json") return true;
  return absl::InvalidArgumentError("--output must be used with human or json as argument.");
}

absl::StatusOr<std::string> OneImage(const common::ParsedArgs& args) {
  if (args.operands.size() != 1) {
    return absl::InvalidArgumentError("Expecting one image file name");
  }
  return args.operands[0];
}

int Fail(std::string_view what, std::string_view problem) {
  std::fprintf(stderr, "qcow2-img: %.*s: %.*s\n", static_cast<int>(what.size()), what.data(),
               static_cast<int>(problem.size()), problem.data());
  return 1;
}

int Fail(std::string_view what, const absl::Status& status) {
  const absl::string_view message = status.message();
  return Fail(what, std::string_view(message.data(), message.size()));
}

absl::StatusOr<uint64_t> ParseSize(std::string_view text) {
  auto bad = [&] {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid size '", std::string(text),
                     "' (a number with an optional suffix k, M, G, T, P, E)"));
  };
  if (text.empty()) return bad();
  size_t pos = 0;
  uint64_t whole = 0;
  while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9') {
    const uint64_t d = static_cast<uint64_t>(text[pos] - '0');
    if (whole > (UINT64_MAX - d) / 10) return bad();
    whole = whole * 10 + d;
    ++pos;
  }
  if (pos == 0) return bad();
  // An optional fraction, kept in millionths (qemu-img accepts "1.5G").
  uint64_t fraction_millionths = 0;
  if (pos < text.size() && text[pos] == '.') {
    ++pos;
    uint64_t scale = 100000;
    size_t digits = 0;
    while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9') {
      fraction_millionths += static_cast<uint64_t>(text[pos] - '0') * scale;
      scale /= 10;
      ++pos;
      ++digits;
    }
    if (digits == 0) return bad();
  }
  int shift = 0;
  if (pos < text.size()) {
    switch (text[pos]) {
      case 'b':
      case 'B':
        shift = 0;
        break;
      case 'k':
      case 'K':
        shift = 10;
        break;
      case 'm':
      case 'M':
        shift = 20;
        break;
      case 'g':
      case 'G':
        shift = 30;
        break;
      case 't':
      case 'T':
        shift = 40;
        break;
      case 'p':
      case 'P':
        shift = 50;
        break;
      case 'e':
      case 'E':
        shift = 60;
        break;
      default:
        return bad();
    }
    ++pos;
  }
  if (pos != text.size()) return bad();
  if (shift > 0 && whole > (UINT64_MAX >> shift)) return bad();
  uint64_t value = whole << shift;
  const uint64_t fraction_bytes = static_cast<uint64_t>(std::llround(
      static_cast<double>(fraction_millionths) / 1e6 * static_cast<double>(uint64_t{1} << shift)));
  if (value > UINT64_MAX - fraction_bytes) return bad();
  value += fraction_bytes;
  if (value > static_cast<uint64_t>(INT64_MAX)) return bad();
  return value;
}

std::string HumanSize(uint64_t bytes) {
  static const char* const kSuffixes[] = {"", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"};
  // Scale so that the unit changes once the integer part reaches 1000.
  int exponent = 0;
  std::frexp(static_cast<double>(bytes) / (1000.0 / 1024.0), &exponent);
  const int unit = std::max(0, (exponent - 1) / 10);
  const double divisor = static_cast<double>(uint64_t{1} << (unit * 10));
  return absl::StrFormat("%0.3g %sB", static_cast<double>(bytes) / divisor, kSuffixes[unit]);
}

PosixFile& PosixFile::operator=(PosixFile&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) close(fd_);
    fd_ = o.fd_;
    o.fd_ = -1;
  }
  return *this;
}

PosixFile::~PosixFile() {
  if (fd_ >= 0) close(fd_);
}

namespace {
absl::Status Errno(int err) {
  return absl::Status(absl::ErrnoToStatusCode(err), std::strerror(err));
}
}  // namespace

absl::StatusOr<PosixFile> PosixFile::Open(const std::string& path, int flags, int mode) {
  const int fd = open(path.c_str(), flags | O_CLOEXEC, mode);
  if (fd < 0) return Errno(errno);
  PosixFile f(fd);
  struct stat st;
  if (fstat(fd, &st) != 0) return Errno(errno);
  if (S_ISDIR(st.st_mode)) return Errno(EISDIR);
  return f;
}

absl::StatusOr<uint64_t> PosixFile::Size() const {
  struct stat st;
  if (fstat(fd_, &st) != 0) return Errno(errno);
  if (S_ISBLK(st.st_mode)) {
    const off_t end = lseek(fd_, 0, SEEK_END);
    if (end < 0) return Errno(errno);
    return static_cast<uint64_t>(end);
  }
  return static_cast<uint64_t>(st.st_size);
}

absl::StatusOr<uint64_t> PosixFile::AllocatedBytes() const {
  struct stat st;
  if (fstat(fd_, &st) != 0) return Errno(errno);
  return static_cast<uint64_t>(st.st_blocks) * 512;
}

absl::StatusOr<std::vector<std::byte>> PosixFile::ReadAt(uint64_t offset_bytes,
                                                         uint64_t length) const {
  std::vector<std::byte> buf(length);
  uint64_t done = 0;
  while (done < length) {
    const ssize_t n =
        pread(fd_, buf.data() + done, length - done, static_cast<off_t>(offset_bytes + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno(errno);
    }
    if (n == 0) break;
    done += static_cast<uint64_t>(n);
  }
  buf.resize(done);
  return buf;
}

absl::Status PosixFile::WriteAt(uint64_t offset_bytes, const std::vector<std::byte>& data) const {
  uint64_t done = 0;
  while (done < data.size()) {
    const ssize_t n = pwrite(fd_, data.data() + done, data.size() - done,
                             static_cast<off_t>(offset_bytes + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno(errno);
    }
    done += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

absl::Status PosixFile::Truncate(uint64_t size_bytes) const {
  if (ftruncate(fd_, static_cast<off_t>(size_bytes)) != 0) return Errno(errno);
  return absl::OkStatus();
}

absl::Status PosixFile::Sync() const {
  if (fsync(fd_) != 0) return Errno(errno);
  return absl::OkStatus();
}

std::string ResolveRelative(const std::string& image_path, const std::string& name) {
  if (name.empty() || name[0] == '/') return name;
  const size_t slash = image_path.rfind('/');
  if (slash == std::string::npos) return name;
  return image_path.substr(0, slash + 1) + name;
}

namespace {

// The first cluster is at most 2 MiB (cluster_bits <= 21).
constexpr uint64_t kMaxHeaderReadBytes = uint64_t{1} << format::kMaxClusterBits;
// A snapshot entry is at most 40 fixed bytes, 1024 extra, two 64 KiB strings.
constexpr uint64_t kMaxSnapshotEntryBytes = 40 + 1024 + 2 * 65535 + 7;

}  // namespace

absl::StatusOr<bool> HasQcow2Magic(const PosixFile& file) {
  UQ_ASSIGN_OR_RETURN(std::vector<std::byte> first, file.ReadAt(0, 4));
  return first.size() >= 4 && first[0] == std::byte{'Q'} && first[1] == std::byte{'F'} &&
         first[2] == std::byte{'I'} && first[3] == std::byte{0xfb};
}

absl::StatusOr<format::Header> ReadQcow2Header(const PosixFile& file) {
  UQ_ASSIGN_OR_RETURN(const uint64_t file_size, file.Size());
  UQ_ASSIGN_OR_RETURN(std::vector<std::byte> head, file.ReadAt(0, 24));
  if (head.size() >= 24) {
    // Read exactly the first cluster when cluster_bits is sane; otherwise let
    // DecodeHeader name the bad field.
    absl::StatusOr<uint64_t> want = format::HeaderReadSize(head);
    UQ_ASSIGN_OR_RETURN(head, file.ReadAt(0, want.ok() ? *want : kMaxHeaderReadBytes));
  }
  return format::DecodeHeader(head, {.file_size_bytes = file_size});
}

absl::Status RefuseResizeWithBitmaps(const format::Header& h) {
  if ((h.autoclear_features & format::kAutoclearBitmaps) == 0) return absl::OkStatus();
  return absl::UnimplementedError(
      "resizing an image with persistent bitmaps is not supported by qcow2-img");
}

absl::StatusOr<ImageDescription> DescribeImage(const std::string& path, std::string_view format,
                                               LockMode lock) {
  UQ_ASSIGN_OR_RETURN(PosixFile file, PosixFile::Open(path, O_RDONLY));
  UQ_RETURN_IF_ERROR(LockImageFile(file.fd(), lock));
  UQ_ASSIGN_OR_RETURN(const uint64_t file_size, file.Size());
  ImageDescription d;
  d.filename = path;
  UQ_ASSIGN_OR_RETURN(d.actual_size_bytes, file.AllocatedBytes());
  bool is_qcow2 = format == "qcow2";
  if (format.empty()) {
    UQ_ASSIGN_OR_RETURN(is_qcow2, HasQcow2Magic(file));
  } else if (format != "qcow2" && format != "raw") {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown format '", std::string(format), "' (qcow2 or raw)"));
  }
  if (!is_qcow2) {
    d.format = "raw";
    // QEMU reports a raw file's size in whole 512-byte sectors.
    d.virtual_size_bytes = (file_size + 511) & ~uint64_t{511};
    return d;
  }
  d.format = "qcow2";
  UQ_ASSIGN_OR_RETURN(format::Header h, ReadQcow2Header(file));
  d.virtual_size_bytes = h.size_bytes;
  if (h.nb_snapshots > 0) {
    const uint64_t want =
        std::min<uint64_t>(file_size - h.snapshots_offset, h.nb_snapshots * kMaxSnapshotEntryBytes);
    UQ_ASSIGN_OR_RETURN(std::vector<std::byte> table, file.ReadAt(h.snapshots_offset, want));
    UQ_ASSIGN_OR_RETURN(d.snapshots,
                        format::DecodeSnapshotTable(table, h.nb_snapshots, h.cluster_bits));
  }
  UQ_ASSIGN_OR_RETURN(std::optional<format::BitmapsExtension> bitmaps,
                      format::FindBitmapsExtension(h));
  if (bitmaps) {
    if (bitmaps->directory_offset > file_size ||
        bitmaps->directory_size_bytes > file_size - bitmaps->directory_offset) {
      return absl::InvalidArgumentError(
          absl::StrCat("bitmap_directory_offset ", bitmaps->directory_offset, " with ",
                       bitmaps->directory_size_bytes, " bytes is past the end of the file (",
                       file_size, " bytes)"));
    }
    UQ_ASSIGN_OR_RETURN(std::vector<std::byte> dir,
                        file.ReadAt(bitmaps->directory_offset, bitmaps->directory_size_bytes));
    UQ_ASSIGN_OR_RETURN(d.bitmaps, format::DecodeBitmapDirectory(dir, *bitmaps, h.cluster_bits));
  }
  if (!h.backing_file.empty()) d.full_backing_filename = ResolveRelative(path, h.backing_file);
  d.header = std::move(h);
  return d;
}

}  // namespace uq::tools
