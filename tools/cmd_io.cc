// qcow2-img io: qemu-io's command syntax run through the engine.
//
//   qcow2-img io [-r] [-f qcow2|raw] [-t none|writeback] -c CMD [-c CMD ...] FILE
//
// Commands (sizes take k/M/G/... suffixes or plain bytes):
//   read [-q] [-v] [-P PATTERN] OFF LEN
//   write [-q] [-f] [-P PATTERN] OFF LEN      (default pattern 0xcd, -f = FUA)
//   write [-q] -c [-P PATTERN] OFF LEN        (compressed; whole clusters)
//   write [-q] -z [-u] OFF LEN                (write zeroes; -u may unmap)
//   discard [-q] OFF LEN
//   flush
//
// Output follows qemu-io: "read 4096/4096 bytes at offset 0" and the
// statistics line, -v prints a hexdump. The first failing command (I/O error,
// bad syntax, a `read -P` mismatch) ends the run with exit status 1; the image
// is closed cleanly (dirty bit cleared) either way.
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "format/status_macros.h"
#include "tools/commands.h"
#include "tools/engine_util.h"

namespace uq::tools {

namespace {

constexpr uint64_t kSectorBytes = 512;
using Clock = std::chrono::steady_clock;

// qemu-io's cvtstr: "4 KiB", "1.500 MiB", "48 bytes".
std::string HumanBytes(double value) {
  static constexpr const char* kSuffixes[] = {" EiB", " PiB", " TiB", " GiB", " MiB", " KiB"};
  for (int i = 0; i < 6; ++i) {
    double unit = std::ldexp(1.0, 10 * (6 - i));
    if (value >= unit) {
      std::string s = absl::StrFormat("%.3f", value / unit);
      if (s.size() > 4 && s.compare(s.size() - 4, 4, ".000") == 0) s.resize(s.size() - 4);
      return s + kSuffixes[i];
    }
  }
  std::string s = absl::StrFormat("%.3f", value);
  if (s.size() > 4 && s.compare(s.size() - 4, 4, ".000") == 0) s.resize(s.size() - 4);
  return s + " bytes";
}

// qemu-io's timestr: "00.00", "01:02.03", "1:02:03.04".
std::string ElapsedString(double seconds) {
  uint64_t whole = static_cast<uint64_t>(seconds);
  unsigned hundredths = static_cast<unsigned>((seconds - whole) * 100);
  if (whole >= 3600) {
    return absl::StrFormat("%u:%02u:%02u.%02u", whole / 3600, (whole % 3600) / 60, whole % 60,
                           hundredths);
  }
  if (whole >= 60) return absl::StrFormat("%02u:%02u.%02u", whole / 60, whole % 60, hundredths);
  return absl::StrFormat("%02u.%02u", whole, hundredths);
}

void PrintReport(const char* verb, uint64_t offset, uint64_t length, double seconds) {
  std::printf("%s %" PRIu64 "/%" PRIu64 " bytes at offset %" PRIu64 "\n", verb, length, length,
              offset);
  double t = seconds > 0 ? seconds : 1e-9;
  std::printf("%s, 1 ops; %s sec (%s/sec and %.4f ops/sec)\n", HumanBytes(length).c_str(),
              ElapsedString(seconds).c_str(), HumanBytes(length / t).c_str(), 1 / t);
}

// qemu-io's dump_buffer layout.
void HexDump(std::span<const std::byte> data, uint64_t offset) {
  for (size_t i = 0; i < data.size(); i += 16) {
    size_t n = std::min<size_t>(16, data.size() - i);
    std::printf("%08" PRIx64 ":  ", offset + i);
    for (size_t j = 0; j < n; ++j) std::printf("%02x ", static_cast<unsigned>(data[i + j]));
    std::printf(" ");
    for (size_t j = 0; j < n; ++j) {
      int c = static_cast<int>(data[i + j]);
      std::putchar(std::isalnum(c) ? c : '.');
    }
    std::printf("\n");
  }
}

struct ParsedCommand {
  std::string name;
  std::string flags;               // single-letter flags seen
  std::optional<uint8_t> pattern;  // -P
  std::vector<std::string> operands;
};

// Splits a command on whitespace and separates "-x" flags (with -P taking a
// value) from operands, getopt-style (flags may be combined: "-zu").
absl::StatusOr<ParsedCommand> ParseCommand(absl::string_view text,
                                           absl::string_view allowed_flags) {
  std::vector<std::string> words = absl::StrSplit(text, absl::ByAnyChar(" \t"), absl::SkipEmpty());
  if (words.empty()) return absl::InvalidArgumentError("empty command");
  ParsedCommand cmd;
  cmd.name = words[0];
  size_t i = 1;
  for (; i < words.size(); ++i) {
    const std::string& w = words[i];
    if (w == "--") {
      ++i;
      break;
    }
    if (w.size() < 2 || w[0] != '-') break;
    for (size_t k = 1; k < w.size(); ++k) {
      char f = w[k];
      if (allowed_flags.find(f) == absl::string_view::npos) {
        return absl::InvalidArgumentError(
            absl::StrCat(cmd.name, ": unknown option '-", std::string(1, f), "'"));
      }
      if (f == 'P') {
        std::string value = w.substr(k + 1);
        if (value.empty()) {
          if (i + 1 >= words.size()) {
            return absl::InvalidArgumentError(absl::StrCat(cmd.name, ": -P needs a pattern"));
          }
          value = words[++i];
        }
        auto p = ParseCount(value, "pattern");
        if (!p.ok() || *p > 255) {
          return absl::InvalidArgumentError(
              absl::StrCat(cmd.name, ": invalid pattern '", value, "' (expected 0..255)"));
        }
        cmd.pattern = static_cast<uint8_t>(*p);
        break;
      }
      cmd.flags.push_back(f);
    }
  }
  for (; i < words.size(); ++i) cmd.operands.push_back(words[i]);
  return cmd;
}

bool HasFlag(const ParsedCommand& c, char f) { return c.flags.find(f) != std::string::npos; }

class IoSession {
 public:
  // `align_bytes`: granularity of the requests sent to the device (512, or
  // 4096 with O_DIRECT); unaligned commands are read-modify-written.
  IoSession(io::EventLoop& loop, engine::Device& device, uint64_t align_bytes)
      : loop_(loop), device_(device), align_bytes_(align_bytes) {}

  absl::Status Run(absl::string_view text);

 private:
  absl::StatusOr<std::pair<uint64_t, uint64_t>> Range(const ParsedCommand& c);
  absl::Status Read(const ParsedCommand& c);
  absl::Status Write(const ParsedCommand& c);
  absl::Status Discard(const ParsedCommand& c);
  absl::Status Flush(const ParsedCommand& c);

  std::pair<uint64_t, uint64_t> Covering(uint64_t offset, uint64_t length) const;
  // Reads [offset, offset+length) (any alignment) into `out`.
  int ReadBytes(uint64_t offset, std::span<std::byte> out);
  // Writes `data` at `offset` (any alignment: partial sectors are merged
  // with the current contents).
  int WriteBytes(uint64_t offset, std::span<const std::byte> data);
  int ZeroBytes(uint64_t offset, uint64_t length, bool may_unmap);
  int WriteCompressedClusters(uint64_t offset, uint64_t length, std::byte pattern);

  static absl::Status Errno(const ParsedCommand& c, int r, uint64_t offset) {
    return absl::InternalError(
        absl::StrCat(c.name, " failed at offset ", offset, ": ", std::strerror(-r)));
  }

  io::EventLoop& loop_;
  engine::Device& device_;
  uint64_t align_bytes_;
};

absl::Status IoSession::Run(absl::string_view text) {
  std::vector<std::string> words = absl::StrSplit(text, absl::ByAnyChar(" \t"), absl::SkipEmpty());
  if (words.empty()) return absl::InvalidArgumentError("empty -c command");
  const std::string& name = words[0];
  if (name == "read") {
    UQ_ASSIGN_OR_RETURN(ParsedCommand c, ParseCommand(text, "qvP"));
    return Read(c);
  }
  if (name == "write") {
    UQ_ASSIGN_OR_RETURN(ParsedCommand c, ParseCommand(text, "qfzucP"));
    return Write(c);
  }
  if (name == "discard") {
    UQ_ASSIGN_OR_RETURN(ParsedCommand c, ParseCommand(text, "q"));
    return Discard(c);
  }
  if (name == "flush") {
    UQ_ASSIGN_OR_RETURN(ParsedCommand c, ParseCommand(text, ""));
    return Flush(c);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown io command '", name, "' (supported: read, write, discard, flush)"));
}

absl::StatusOr<std::pair<uint64_t, uint64_t>> IoSession::Range(const ParsedCommand& c) {
  if (c.operands.size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(c.name, ": expected OFFSET LENGTH, got ", c.operands.size(), " operand(s)"));
  }
  UQ_ASSIGN_OR_RETURN(uint64_t offset, ParseByteCount(c.operands[0], "offset"));
  UQ_ASSIGN_OR_RETURN(uint64_t length, ParseByteCount(c.operands[1], "length"));
  if (offset > device_.size_bytes() || length > device_.size_bytes() - offset) {
    return absl::OutOfRangeError(absl::StrCat(c.name, ": range ", offset, "+", length,
                                              " is past the end of the image (",
                                              device_.size_bytes(), " bytes)"));
  }
  // One buffer holds the whole request.
  if (length > (1ull << 32)) {
    return absl::InvalidArgumentError(absl::StrCat(c.name, ": length ", length, " exceeds 4 GiB"));
  }
  return std::make_pair(offset, length);
}

// The sector-aligned range covering [offset, offset + length), clipped to the
// disk's end (a raw image's size need not be a sector multiple).
std::pair<uint64_t, uint64_t> IoSession::Covering(uint64_t offset, uint64_t length) const {
  uint64_t start = offset / align_bytes_ * align_bytes_;
  uint64_t end = (offset + length + align_bytes_ - 1) / align_bytes_ * align_bytes_;
  return {start, std::min(end, device_.size_bytes())};
}

int IoSession::ReadBytes(uint64_t offset, std::span<std::byte> out) {
  if (out.empty()) return 0;
  auto [start, end] = Covering(offset, out.size());
  AlignedBuffer buf(end - start);
  iovec v = buf.Iov();
  int r = RunOnLoop(loop_, device_.Read(start, std::span<const iovec>(&v, 1)));
  if (r < 0) return r;
  std::memcpy(out.data(), buf.data() + (offset - start), out.size());
  return 0;
}

int IoSession::WriteBytes(uint64_t offset, std::span<const std::byte> data) {
  if (data.empty()) return 0;
  auto [start, end] = Covering(offset, data.size());
  AlignedBuffer buf(end - start);
  if (start != offset || end != offset + data.size()) {
    // Merge partial head/tail sectors with what is there now.
    uint64_t head = std::min<uint64_t>(align_bytes_, end - start);
    int r = ReadBytes(start, buf.span().first(head));
    if (r < 0) return r;
    uint64_t tail_start = std::max(start, (end - 1) / align_bytes_ * align_bytes_);
    r = ReadBytes(tail_start, buf.span().subspan(tail_start - start, end - tail_start));
    if (r < 0) return r;
  }
  std::memcpy(buf.data() + (offset - start), data.data(), data.size());
  iovec v = buf.Iov();
  return RunOnLoop(loop_, device_.Write(start, std::span<const iovec>(&v, 1), /*fua=*/false));
}

// As qemu-io's write -c: whole clusters from a cluster boundary (the last
// one may end at the image's end); anything else is -EINVAL.
int IoSession::WriteCompressedClusters(uint64_t offset, uint64_t length, std::byte pattern) {
  const uint64_t cluster = device_.granularity_bytes();
  if (offset % cluster != 0) return -EINVAL;
  if (length % cluster != 0 && offset + length != device_.size_bytes()) return -EINVAL;
  std::vector<std::byte> data(std::min(length, cluster), pattern);
  for (uint64_t pos = 0; pos < length; pos += cluster) {
    const uint64_t n = std::min(cluster, length - pos);
    int r = RunOnLoop(loop_, device_.WriteCompressed(offset + pos, std::span(data).first(n)));
    if (r < 0) return r;
  }
  return 0;
}

int IoSession::ZeroBytes(uint64_t offset, uint64_t length, bool may_unmap) {
  if (length == 0) return 0;
  uint64_t end = offset + length;
  uint64_t inner_start = (offset + align_bytes_ - 1) / align_bytes_ * align_bytes_;
  uint64_t inner_end = end / align_bytes_ * align_bytes_;
  if (inner_start >= inner_end) {
    std::vector<std::byte> zeros(length);
    return WriteBytes(offset, zeros);
  }
  if (inner_start > offset) {
    std::vector<std::byte> zeros(inner_start - offset);
    int r = WriteBytes(offset, zeros);
    if (r < 0) return r;
  }
  int r = RunOnLoop(loop_, device_.WriteZeroes(inner_start, inner_end - inner_start, may_unmap));
  if (r < 0) return r;
  if (end > inner_end) {
    std::vector<std::byte> zeros(end - inner_end);
    r = WriteBytes(inner_end, zeros);
  }
  return r;
}

absl::Status IoSession::Read(const ParsedCommand& c) {
  UQ_ASSIGN_OR_RETURN(auto range, Range(c));
  auto [offset, length] = range;
  std::vector<std::byte> data(length);
  Clock::time_point t0 = Clock::now();
  int r = ReadBytes(offset, data);
  double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  if (r < 0) return Errno(c, r, offset);
  if (c.pattern.has_value()) {
    for (uint64_t i = 0; i < length; ++i) {
      if (data[i] != std::byte{*c.pattern}) {
        std::printf("Pattern verification failed at offset %" PRIu64 ", %" PRIu64 " bytes\n",
                    offset, length);
        std::fflush(stdout);
        return absl::DataLossError(absl::StrFormat(
            "read -P 0x%02x: byte at offset %u is 0x%02x (request %u+%u)", *c.pattern, offset + i,
            static_cast<unsigned>(data[i]), offset, length));
      }
    }
  }
  if (HasFlag(c, 'v')) HexDump(data, offset);
  if (!HasFlag(c, 'q')) PrintReport("read", offset, length, seconds);
  return absl::OkStatus();
}

absl::Status IoSession::Write(const ParsedCommand& c) {
  UQ_ASSIGN_OR_RETURN(auto range, Range(c));
  auto [offset, length] = range;
  bool zero = HasFlag(c, 'z');
  if (HasFlag(c, 'u') && !zero) return absl::InvalidArgumentError("write: -u requires -z");
  if (zero && c.pattern.has_value()) {
    return absl::InvalidArgumentError("write: -z and -P cannot be specified at the same time");
  }
  const bool compressed = HasFlag(c, 'c');
  if (compressed && (zero || HasFlag(c, 'f'))) {
    return absl::InvalidArgumentError("write: -c cannot be combined with -z or -f");
  }
  if (compressed && !device_.supports_compressed_writes()) {
    return absl::InvalidArgumentError("write: -c: this image cannot hold compressed clusters");
  }
  Clock::time_point t0 = Clock::now();
  int r;
  if (zero) {
    r = ZeroBytes(offset, length, HasFlag(c, 'u'));
  } else if (compressed) {
    r = WriteCompressedClusters(offset, length, std::byte{c.pattern.value_or(0xcd)});
  } else {
    std::vector<std::byte> data(length, std::byte{c.pattern.value_or(0xcd)});
    r = WriteBytes(offset, data);
    if (r >= 0 && HasFlag(c, 'f')) r = RunOnLoop(loop_, device_.Flush());
  }
  double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  if (r < 0) return Errno(c, r, offset);
  if (!HasFlag(c, 'q')) PrintReport("wrote", offset, length, seconds);
  return absl::OkStatus();
}

absl::Status IoSession::Discard(const ParsedCommand& c) {
  UQ_ASSIGN_OR_RETURN(auto range, Range(c));
  auto [offset, length] = range;
  // Discard is advisory: the device discards what it can of the whole
  // sectors in the range (qcow2: whole clusters, as QEMU's driver does).
  uint64_t start = (offset + kSectorBytes - 1) / kSectorBytes * kSectorBytes;
  uint64_t end = offset + length;
  if (end != device_.size_bytes()) end = end / kSectorBytes * kSectorBytes;
  Clock::time_point t0 = Clock::now();
  int r = 0;
  if (start < end) r = RunOnLoop(loop_, device_.Discard(start, end - start));
  double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  if (r < 0) return Errno(c, r, offset);
  if (!HasFlag(c, 'q')) PrintReport("discard", offset, length, seconds);
  return absl::OkStatus();
}

absl::Status IoSession::Flush(const ParsedCommand& c) {
  if (!c.operands.empty()) return absl::InvalidArgumentError("flush takes no operands");
  int r = RunOnLoop(loop_, device_.Flush());
  if (r < 0) return Errno(c, r, 0);
  return absl::OkStatus();
}

enum : int { kIoDataFile = common::kLongOnlyIdBase };

constexpr common::OptionSpec kIoOptions[] = {
    {'r', 'r', "read-only", "", "open the image read-only"},
    kFormatOption,
    {'t', 't', "cache", "CACHE", "cache mode: writeback (default) or none (O_DIRECT)"},
    {'c', 'c', "cmd", "CMD",
     "run CMD (repeatable, in order): read [-q] [-v] [-P PATTERN] OFF LEN | write [-q] [-f] "
     "[-P PATTERN] OFF LEN | write [-q] -c [-P PATTERN] OFF LEN (compressed, whole clusters) | "
     "write [-q] -z [-u] OFF LEN | discard [-q] OFF LEN | flush"},
    {'U', 'U', "force-share", "", "with -r: open without taking the image lock"},
    {kIoDataFile, 0, "data-file", "PATH",
     "the external data file, instead of the image's name for it (may be written)"},
    kAllowDevicesOption,
    kHelpOption,
};

int RunIo(const common::ParsedArgs& parsed) {
  bool read_only = false;
  EngineOpenOptions options;
  std::vector<std::string> commands;
  for (const common::ParsedOption& o : parsed.options) {
    switch (o.id) {
      case 'r':
        read_only = true;
        break;
      case 'f': {
        auto f = ParseFormatName(o.value);
        if (!f.ok()) return ReportError(f.status());
        options.format = *f;
        break;
      }
      case 'c':
        commands.push_back(o.value);
        break;
      case 't':
        if (o.value == "none") {
          options.direct_io = true;
        } else if (o.value != "writeback") {
          return ReportError(absl::StrCat("io: unsupported cache mode '", o.value,
                                          "' (supported: none, writeback)"));
        }
        break;
      case 'U':
        options.force_share = true;
        break;
      case kIoDataFile:
        if (o.value.empty()) return ReportError("io: --data-file needs a path");
        options.data_file = o.value;
        break;
      case kAllowDevicesId:
        options.allow_devices = true;
        break;
    }
  }
  if (parsed.operands.size() != 1) {
    return ReportError("io: expected one FILE (try 'qcow2-img io --help')");
  }
  const std::string& path = parsed.operands[0];
  options.read_only = read_only;

  auto loop = io::EventLoop::Create(64);
  if (!loop.ok()) return ReportError(loop.status());
  auto device = OpenDevice(**loop, path, options);
  if (!device.ok()) return ReportError(absl::StrCat(path, ": ", device.status().message()));
  IoSession session(**loop, **device, options.direct_io ? 4096 : kSectorBytes);
  absl::Status failure;
  for (const std::string& command : commands) {
    failure = session.Run(command);
    if (!failure.ok()) break;
  }
  std::fflush(stdout);
  absl::Status closed = CloseDevice(**loop, **device);
  if (!failure.ok()) return ReportError(failure);
  if (!closed.ok()) return ReportError(closed);
  return 0;
}

}  // namespace

const Command kIoCommand = {
    "io",
    RunIo,
    "io [-r] [-f qcow2|raw] [-t none|writeback] [-U] [--data-file PATH] [--allow-devices] "
    "-c CMD [-c CMD ...] FILE",
    "Runs qemu-io style commands on FILE through the engine.",
    kIoOptions,
};

}  // namespace uq::tools
