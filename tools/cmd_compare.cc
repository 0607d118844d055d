// qcow2-img compare: qemu-img 7.2's compare. Both images are read through
// the engine (whole backing chains); ranges that both chains say read as
// zero are skipped, ranges allocated on one side only must read as zero on
// that side, and the first differing 512-byte sector is reported. A size
// difference is a warning when the longer image's tail reads as zero
// (without -s). Exit status: 0 identical, 1 different, 2 an image could not
// be opened, 3 block status failed, 4 a read failed.
#include <cstdio>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "format/status_macros.h"
#include "tools/block_status.h"
#include "tools/commands.h"
#include "tools/engine_util.h"
#include "tools/util.h"

namespace uq::tools {
namespace {

constexpr uint64_t kBufferBytes = 2 << 20;  // qemu-img's IO_BUF_SIZE
constexpr uint64_t kSectorBytes = 512;
constexpr int kDifferent = 1;
constexpr int kOpenFailed = 2;
constexpr int kStatusFailed = 3;
constexpr int kReadFailed = 4;

constexpr common::OptionSpec kCompareOptions[] = {
    {'f', 'f', "a-format", "FMT", "format of the first image (probed when omitted)"},
    {'F', 'F', "b-format", "FMT", "format of the second image (probed when omitted)"},
    {'s', 's', "strict", "",
     "strict: images of different sizes or with different allocation differ"},
    kQuietOption,
    kForceShareOption,
    kAllowDevicesOption,
    kHelpOption,
};

// One side of the comparison: the device that reads guest data and the
// chain that answers block status.
struct Side {
  std::string path;
  std::unique_ptr<engine::Device> device;
  std::optional<Chain> chain;
  uint64_t size_bytes = 0;  // the guest size, in whole sectors as QEMU counts it
};

absl::Status OpenSide(io::EventLoop& loop, const std::string& path, const std::string& format,
                      bool force_share, bool allow_devices, Side& side) {
  side.path = path;
  EngineOpenOptions options;
  options.read_only = true;
  options.force_share = force_share;
  options.allow_devices = allow_devices;
  if (!format.empty()) {
    UQ_ASSIGN_OR_RETURN(options.format, ParseFormatName(format));
  }
  UQ_ASSIGN_OR_RETURN(side.device, OpenDevice(loop, path, options));
  // The device holds the image locks; the metadata view needs none of its own.
  UQ_ASSIGN_OR_RETURN(side.chain,
                      Chain::Open(path, format, LockMode::kNone, /*snapshot=*/"", allow_devices));
  side.size_bytes = side.chain->size_bytes();
  return absl::OkStatus();
}

class Comparer {
 public:
  Comparer(io::EventLoop& loop, Side& a, Side& b, bool quiet)
      : loop_(loop), a_(a), b_(b), quiet_(quiet), buf_a_(kBufferBytes), buf_b_(kBufferBytes) {}

  int Run(bool strict);

 private:
  // Reads [offset, offset + bytes) of `side` into `buf` (zeros past the end
  // of the device). Prints qemu-img's error and returns false on failure.
  bool Read(Side& side, uint64_t offset, uint64_t bytes, AlignedBuffer& buf);
  // check_empty_sectors: 0 if [offset, +bytes) of `side` reads as zero.
  int CheckZero(Side& side, uint64_t offset, uint64_t bytes);
  int CompareTail(Side& longer, uint64_t from, uint64_t to);
  void Say(const std::string& line) {
    if (!quiet_) std::printf("%s\n", line.c_str());
  }

  io::EventLoop& loop_;
  Side& a_;
  Side& b_;
  bool quiet_;
  AlignedBuffer buf_a_;
  AlignedBuffer buf_b_;
};

bool Comparer::Read(Side& side, uint64_t offset, uint64_t bytes, AlignedBuffer& buf) {
  std::memset(buf.data(), 0, bytes);
  const uint64_t device_end = side.device->size_bytes();
  const uint64_t readable = offset >= device_end ? 0 : std::min(bytes, device_end - offset);
  // The device takes whole sectors; a raw file may end inside one.
  const uint64_t whole = readable / kSectorBytes * kSectorBytes;
  int r = 0;
  if (whole > 0) {
    iovec v = buf.Iov(0, whole);
    r = RunOnLoop(loop_, side.device->Read(offset, std::span<const iovec>(&v, 1)));
  }
  if (r >= 0 && readable > whole) {
    AlignedBuffer tail(kSectorBytes);
    iovec v = tail.Iov();
    r = RunOnLoop(loop_, side.device->Read(offset + whole, std::span<const iovec>(&v, 1)));
    std::memcpy(buf.data() + whole, tail.data(), readable - whole);
  }
  if (r < 0) {
    std::fprintf(stderr, "qcow2-img: Error while reading offset %llu of %s: %s\n",
                 static_cast<unsigned long long>(offset), side.path.c_str(), std::strerror(-r));
    return false;
  }
  return true;
}

int Comparer::CheckZero(Side& side, uint64_t offset, uint64_t bytes) {
  if (!Read(side, offset, bytes, buf_a_)) return kReadFailed;
  for (uint64_t i = 0; i < bytes; i += kSectorBytes) {
    if (!IsAllZero(buf_a_.span().subspan(i, std::min(kSectorBytes, bytes - i)))) {
      Say(absl::StrCat("Content mismatch at offset ", offset + i, "!"));
      return kDifferent;
    }
  }
  return 0;
}

int Comparer::CompareTail(Side& longer, uint64_t from, uint64_t to) {
  for (uint64_t offset = from; offset < to;) {
    absl::StatusOr<BlockStatus> st = longer.chain->StatusAbove(offset, to - offset);
    if (!st.ok()) {
      std::fprintf(stderr, "qcow2-img: Sector allocation test failed for %s\n",
                   longer.path.c_str());
      return kStatusFailed;
    }
    uint64_t chunk = st->bytes;
    if (st->allocated) {
      chunk = std::min(chunk, kBufferBytes);
      if (int r = CheckZero(longer, offset, chunk); r != 0) return r;
    }
    offset += chunk;
  }
  return 0;
}

int Comparer::Run(bool strict) {
  const uint64_t size_a = a_.size_bytes;
  const uint64_t size_b = b_.size_bytes;
  if (strict && size_a != size_b) {
    Say("Strict mode: Image size mismatch!");
    return kDifferent;
  }
  const uint64_t common = std::min(size_a, size_b);
  for (uint64_t offset = 0; offset < common;) {
    absl::StatusOr<BlockStatus> sa = a_.chain->StatusAbove(offset, size_a - offset);
    if (!sa.ok()) {
      std::fprintf(stderr, "qcow2-img: Sector allocation test failed for %s\n", a_.path.c_str());
      return kStatusFailed;
    }
    absl::StatusOr<BlockStatus> sb = b_.chain->StatusAbove(offset, size_b - offset);
    if (!sb.ok()) {
      std::fprintf(stderr, "qcow2-img: Sector allocation test failed for %s\n", b_.path.c_str());
      return kStatusFailed;
    }
    uint64_t chunk = std::min(sa->bytes, sb->bytes);
    if (strict && sa->Flags() != sb->Flags()) {
      Say(absl::StrCat("Strict mode: Offset ", offset, " block status mismatch!"));
      return kDifferent;
    }
    if (sa->zero && sb->zero) {
      // both read as zero
    } else if (sa->allocated == sb->allocated) {
      if (sa->allocated) {
        chunk = std::min(chunk, kBufferBytes);
        if (!Read(a_, offset, chunk, buf_a_) || !Read(b_, offset, chunk, buf_b_)) {
          return kReadFailed;
        }
        for (uint64_t i = 0; i < chunk; i += kSectorBytes) {
          const uint64_t n = std::min(kSectorBytes, chunk - i);
          if (std::memcmp(buf_a_.data() + i, buf_b_.data() + i, n) != 0) {
            Say(absl::StrCat("Content mismatch at offset ", offset + i, "!"));
            return kDifferent;
          }
        }
      }
    } else {
      chunk = std::min(chunk, kBufferBytes);
      if (int r = CheckZero(sa->allocated ? a_ : b_, offset, chunk); r != 0) return r;
    }
    offset += chunk;
  }
  if (size_a != size_b) {
    Say("Warning: Image size mismatch!");
    Side& longer = size_a > size_b ? a_ : b_;
    if (int r = CompareTail(longer, common, longer.size_bytes); r != 0) return r;
  }
  Say("Images are identical.");
  return 0;
}

int RunCompare(const common::ParsedArgs& parsed) {
  if (parsed.operands.size() != 2) {
    std::fprintf(stderr, "qcow2-img: compare: Expecting two image file names\n");
    return 1;
  }
  const std::string format_a = parsed.Last('f') ? *parsed.Last('f') : "";
  const std::string format_b = parsed.Last('F') ? *parsed.Last('F') : "";
  const bool force_share = parsed.Has('U');
  const bool allow_devices = parsed.Has(kAllowDevicesId);
  absl::StatusOr<std::unique_ptr<io::EventLoop>> loop = io::EventLoop::Create(64);
  if (!loop.ok()) {
    Fail("compare", loop.status());
    return kOpenFailed;
  }
  Side a;
  Side b;
  auto open = [&](Side& side, const std::string& path, const std::string& format) {
    absl::Status st = OpenSide(**loop, path, format, force_share, allow_devices, side);
    if (!st.ok()) Fail(path, st);
    return st.ok();
  };
  if (!open(a, parsed.operands[0], format_a) || !open(b, parsed.operands[1], format_b)) {
    return kOpenFailed;
  }
  Comparer comparer(**loop, a, b, parsed.Has('q'));
  const int result = comparer.Run(parsed.Has('s'));
  std::fflush(stdout);
  (void)CloseDevice(**loop, *a.device);
  (void)CloseDevice(**loop, *b.device);
  return result;
}

}  // namespace

const Command kCompareCommand = {
    "compare",
    RunCompare,
    "compare [-f FMT] [-F FMT] [-s] [-q] [-U] [--allow-devices] FILE1 FILE2",
    "Compares the guest contents of two images (through their backing chains) as qemu-img "
    "compare does.\n\n"
    "Exit status: 0 identical, 1 different, 2 an image could not be opened, 3 block status "
    "failed, 4 a read failed.",
    kCompareOptions,
};

}  // namespace uq::tools
