// qcow2-img bench: qemu-img bench's request generator over the engine, so the
// two can run side by side on one image.
//
//   qcow2-img bench [-c COUNT] [-d DEPTH] [-f FMT] [--flush-interval=N]
//                   [-i io_uring] [--no-drain] [-o OFFSET] [--pattern=N] [-q]
//                   [-s SIZE] [-S STEP] [-t none|writeback] [-U] [-w] FILE
//
// COUNT requests of SIZE bytes (default 75000 x 4 KiB), DEPTH in flight
// (default 64), offsets OFFSET, OFFSET+STEP, ... wrapping modulo the image
// size as QEMU 7.2 does (a request that would then cross the end restarts at 0). -w writes PATTERN
// bytes. With
// --flush-interval=N a flush is sent after every N completed requests, after
// draining the queue unless --no-drain. -t none opens with O_DIRECT.
#include <bit>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "tools/commands.h"
#include "tools/engine_util.h"

namespace uq::tools {

namespace {

constexpr uint64_t kSectorBytes = 512;

struct BenchConfig {
  uint64_t count = 75000;
  uint64_t depth = 64;
  uint64_t size_bytes = 4096;
  uint64_t step_bytes = 0;  // 0 = size_bytes
  uint64_t offset_bytes = 0;
  uint64_t flush_interval = 0;
  bool drain_on_flush = true;
  bool write = false;
  bool quiet = false;
  uint8_t pattern = 0;
};

// Request scheduling in qemu-img bench's callback style: completions submit
// the next requests. Each request runs as its own detached coroutine.
class Bench {
 public:
  Bench(io::EventLoop& loop, engine::Device& device, const BenchConfig& config)
      : loop_(loop), device_(device), config_(config), next_offset_(config.offset_bytes) {
    buffers_.reserve(config.depth);
    for (uint64_t i = 0; i < config.depth; ++i) {
      buffers_.emplace_back(config.size_bytes);
      if (config.write) std::memset(buffers_.back().data(), config.pattern, config.size_bytes);
      free_slots_.push_back(static_cast<int>(i));
    }
  }

  // Runs every request; returns 0 or the first -errno.
  int Run() {
    Submit();
    while (completed_ < config_.count || flushing_ || in_flight_ > 0) {
      if (error_ < 0 && in_flight_ == 0 && !flushing_) break;
      int r = loop_.RunOnce(/*wait=*/true);
      if (r < 0 && r != -EINTR) return r;
    }
    return error_;
  }

 private:
  uint64_t NextOffset() {
    uint64_t offset = next_offset_;
    uint64_t image = device_.size_bytes();
    // QEMU 7.2's wrap rule (modulo the image size), so both tools send the
    // same offsets. Where 7.2 would then send a request past the end (and
    // fail the run with EIO; later QEMUs wrap modulo size - SIZE instead),
    // start over at offset 0.
    next_offset_ = image == 0 ? 0 : (next_offset_ + config_.step_bytes) % image;
    if (next_offset_ + config_.size_bytes > image) next_offset_ = 0;
    return offset;
  }

  void Submit() {
    if (submitting_) return;  // a completion inside Spawn: the outer loop continues
    submitting_ = true;
    while (error_ == 0 && !draining_ && submitted_ < config_.count && in_flight_ < config_.depth) {
      int slot = free_slots_.back();
      free_slots_.pop_back();
      ++submitted_;
      ++in_flight_;
      Spawn(Request(NextOffset(), slot));
    }
    submitting_ = false;
  }

  Task<void> Request(uint64_t offset, int slot) {
    iovec v = buffers_[slot].Iov();
    std::span<const iovec> iov(&v, 1);
    int r = config_.write ? co_await device_.Write(offset, iov, /*fua=*/false)
                          : co_await device_.Read(offset, iov);
    free_slots_.push_back(slot);
    --in_flight_;
    ++completed_;
    if (r < 0 && error_ == 0) {
      error_ = r;
      error_offset_ = offset;
    }
    if (error_ == 0 && config_.flush_interval != 0 && completed_ % config_.flush_interval == 0) {
      if (config_.drain_on_flush) draining_ = true;
      flushes_due_++;
    }
    MaybeFlush();
    Submit();
  }

  void MaybeFlush() {
    if (flushes_due_ == 0 || flushing_) return;
    if (config_.drain_on_flush && in_flight_ > 0) return;
    --flushes_due_;
    flushing_ = true;
    Spawn(FlushRequest());
  }

  Task<void> FlushRequest() {
    int r = co_await device_.Flush();
    flushing_ = false;
    if (r < 0 && error_ == 0) {
      error_ = r;
      error_offset_ = UINT64_MAX;
    }
    if (flushes_due_ == 0) draining_ = false;
    MaybeFlush();
    Submit();
  }

 public:
  uint64_t error_offset() const { return error_offset_; }

 private:
  io::EventLoop& loop_;
  engine::Device& device_;
  const BenchConfig& config_;
  std::vector<AlignedBuffer> buffers_;
  std::vector<int> free_slots_;
  uint64_t next_offset_;
  uint64_t submitted_ = 0;
  uint64_t completed_ = 0;
  uint64_t in_flight_ = 0;
  uint64_t flushes_due_ = 0;
  bool draining_ = false;
  bool flushing_ = false;
  bool submitting_ = false;
  int error_ = 0;
  uint64_t error_offset_ = 0;
};

constexpr int kFlushIntervalId = common::kLongOnlyIdBase + 1;
constexpr int kNoDrainId = common::kLongOnlyIdBase + 2;
constexpr int kPatternId = common::kLongOnlyIdBase + 3;

constexpr common::OptionSpec kBenchOptions[] = {
    {'c', 'c', "count", "COUNT", "number of requests (default 75000)"},
    {'d', 'd', "depth", "DEPTH", "requests in flight (default 64)"},
    kFormatOption,
    {kFlushIntervalId, 0, "flush-interval", "N", "flush after every N requests (with -w)"},
    {'i', 'i', "aio", "io_uring", "AIO mode (only io_uring)"},
    {kNoDrainId, 0, "no-drain", "", "do not drain the queue before a flush"},
    {'o', 'o', "offset", "OFFSET", "offset of the first request (default 0)"},
    {kPatternId, 0, "pattern", "N", "byte value written by -w (default 0)"},
    {'q', 'q', "quiet", "", "print nothing"},
    {'s', 's', "size", "SIZE", "bytes per request (default 4k)"},
    {'S', 'S', "step", "STEP", "offset step between requests (default SIZE)"},
    {'t', 't', "cache", "CACHE", "cache mode: writeback (default) or none (O_DIRECT)"},
    {'w', 'w', "write", "", "write instead of read"},
    {'U', 'U', "force-share", "", "read without taking the image lock"},
    kAllowDevicesOption,
    kHelpOption,
};

// Applies one bench option to `config` / `options`; an error names the bad
// value.
absl::Status ApplyBenchOption(const common::ParsedOption& o, BenchConfig& config,
                              EngineOpenOptions& options, bool& no_drain) {
  const std::string& value = o.value;
  absl::StatusOr<uint64_t> n;
  auto invalid = [&](const char* what) {
    return absl::InvalidArgumentError(
        absl::StrCat("bench: invalid ", what, " specified: '", value, "'"));
  };
  switch (o.id) {
    case 'c':
      n = ParseCount(value, "request count");
      if (!n.ok() || *n == 0 || *n > INT32_MAX) return invalid("request count");
      config.count = *n;
      break;
    case 'd':
      n = ParseCount(value, "queue depth");
      if (!n.ok() || *n == 0 || *n > 4096) return invalid("queue depth");
      config.depth = *n;
      break;
    case 'f': {
      auto f = ParseFormatName(value);
      if (!f.ok()) return f.status();
      options.format = *f;
      break;
    }
    case 'i':
      if (value != "io_uring") {
        return absl::InvalidArgumentError(absl::StrCat("bench: unsupported aio mode '", value,
                                                       "' (this engine always uses io_uring)"));
      }
      break;
    case 'o':
      n = ParseByteCount(value, "offset");
      if (!n.ok()) return absl::InvalidArgumentError(absl::StrCat("bench: ", n.status().message()));
      config.offset_bytes = *n;
      break;
    case 's':
      n = ParseByteCount(value, "buffer size");
      if (!n.ok() || *n == 0 || *n > (1u << 30)) return invalid("buffer size");
      config.size_bytes = *n;
      break;
    case 'S':
      n = ParseByteCount(value, "step size");
      if (!n.ok() || *n > INT32_MAX) return invalid("step size");
      config.step_bytes = *n;
      break;
    case 't':
      if (value == "none") {
        options.direct_io = true;
      } else if (value != "writeback") {
        return absl::InvalidArgumentError(absl::StrCat("bench: unsupported cache mode '", value,
                                                       "' (supported: none, writeback)"));
      }
      break;
    case kPatternId:
      n = ParseCount(value, "pattern");
      if (!n.ok() || *n > 255) return invalid("pattern");
      config.pattern = static_cast<uint8_t>(*n);
      break;
    case kFlushIntervalId:
      n = ParseCount(value, "flush interval");
      if (!n.ok()) return absl::InvalidArgumentError(absl::StrCat("bench: ", n.status().message()));
      config.flush_interval = *n;
      break;
    case kNoDrainId:
      no_drain = true;
      break;
    case 'w':
      config.write = true;
      break;
    case 'q':
      config.quiet = true;
      break;
    case 'U':
      options.force_share = true;
      break;
    case kAllowDevicesId:
      options.allow_devices = true;
      break;
  }
  return absl::OkStatus();
}

int RunBench(const common::ParsedArgs& parsed) {
  BenchConfig config;
  EngineOpenOptions options;
  bool no_drain = false;
  for (const common::ParsedOption& o : parsed.options) {
    absl::Status s = ApplyBenchOption(o, config, options, no_drain);
    if (!s.ok()) return ReportError(s);
  }
  if (parsed.operands.size() != 1) {
    return ReportError("bench: expecting one image file name (try 'qcow2-img bench --help')");
  }
  const std::string& path = parsed.operands[0];
  if (config.flush_interval != 0 && !config.write) {
    return ReportError("bench: --flush-interval is only available in write tests");
  }
  if (config.flush_interval != 0 && config.flush_interval < config.depth) {
    return ReportError("bench: flush interval can't be smaller than depth");
  }
  if (no_drain && config.flush_interval == 0) {
    return ReportError("bench: --no-drain requires --flush-interval");
  }
  config.drain_on_flush = !no_drain;
  if (config.step_bytes == 0) config.step_bytes = config.size_bytes;
  if (config.size_bytes % kSectorBytes != 0 || config.offset_bytes % kSectorBytes != 0 ||
      config.step_bytes % kSectorBytes != 0) {
    return ReportError("bench: buffer size, step and offset must be multiples of 512 bytes");
  }
  options.read_only = !config.write;

  auto loop = io::EventLoop::Create(static_cast<unsigned>(
      std::min<uint64_t>(4096, std::max<uint64_t>(64, std::bit_ceil(config.depth * 2)))));
  if (!loop.ok()) return ReportError(loop.status());
  auto device = OpenDevice(**loop, path, options);
  if (!device.ok()) return ReportError(absl::StrCat(path, ": ", device.status().message()));
  if (config.offset_bytes + config.size_bytes > (*device)->size_bytes()) {
    (void)CloseDevice(**loop, **device);
    return ReportError(absl::StrCat("bench: offset ", config.offset_bytes, " + size ",
                                    config.size_bytes, " is past the end of the image (",
                                    (*device)->size_bytes(), " bytes)"));
  }

  if (!config.quiet) {
    std::printf("Sending %" PRIu64 " %s requests, %" PRIu64 " bytes each, %" PRIu64
                " in parallel (starting at offset %" PRIu64 ", step size %" PRIu64 ")\n",
                config.count, config.write ? "write" : "read", config.size_bytes, config.depth,
                config.offset_bytes, config.step_bytes);
    if (config.flush_interval != 0) {
      std::printf("Sending flush every %" PRIu64 " requests\n", config.flush_interval);
    }
    std::fflush(stdout);
  }

  Bench bench(**loop, **device, config);
  auto t0 = std::chrono::steady_clock::now();
  int r = bench.Run();
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  absl::Status closed = CloseDevice(**loop, **device);
  if (r < 0) {
    if (bench.error_offset() == UINT64_MAX) {
      return ReportError(absl::StrCat("Failed flush request: ", std::strerror(-r)));
    }
    return ReportError(
        absl::StrCat("Failed request at offset ", bench.error_offset(), ": ", std::strerror(-r)));
  }
  if (!config.quiet) std::printf("Run completed in %3.3f seconds.\n", seconds);
  if (!closed.ok()) return ReportError(closed);
  return 0;
}

}  // namespace

const Command kBenchCommand = {
    "bench",
    RunBench,
    "bench [-c COUNT] [-d DEPTH] [-f FMT] [--flush-interval=N] [-i io_uring] [--no-drain] "
    "[-o OFFSET] [--pattern=N] [-q] [-s SIZE] [-S STEP] [-t none|writeback] [-U] [-w] "
    "[--allow-devices] FILE",
    "Sends qemu-img bench's request pattern to FILE through the engine and times it.",
    kBenchOptions,
};

}  // namespace uq::tools
