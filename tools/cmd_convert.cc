// qcow2-img convert: copies the guest-visible contents of an image (its whole
// backing chain, read through the engine) into a new raw or qcow2 image.
//
//   qcow2-img convert [-f FMT] [-O raw|qcow2] [-o OPTS] [-c] [-p] [-q] [-m N] [-W]
//                     [-l SNAPSHOT] [-t CACHE] [-T SRC_CACHE] SRC DST
//
// -o takes qcow2 create options: cluster_size, compat (0.10/1.1), compression_type
// (zlib/zstd), refcount_bits, extended_l2, lazy_refcounts. -c writes
// compressed clusters. All-zero clusters are not written, so the output is
// sparse. Up to N (-m, default 8) chunks are in flight at once; qcow2 output is
// written in guest order (unfragmented) unless -W allows out-of-order writes.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <coroutine>
#include <cstdio>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "format/create.h"
#include "format/status_macros.h"
#include "src/engine/raw_device.h"
#include "src/io/uring_file.h"
#include "tools/commands.h"
#include "tools/engine_util.h"
#include "tools/image_lock.h"

namespace uq::tools {

namespace {

constexpr uint64_t kRawZeroGranularityBytes = 4096;
constexpr uint64_t kRawChunkBytes = 1 << 20;
constexpr uint64_t kMinQcow2ChunkBytes = 256 << 10;

// Parses "on"/"off" (and QEMU's other boolean spellings).
absl::StatusOr<bool> ParseOnOff(absl::string_view key, absl::string_view value) {
  if (value == "on" || value == "true" || value == "yes") return true;
  if (value == "off" || value == "false" || value == "no") return false;
  return absl::InvalidArgumentError(
      absl::StrCat("invalid value '", value, "' for option ", key, " (expected on or off)"));
}

// Applies one "-o" string ("key=value,key=value") to `options`.
absl::Status ApplyCreateOptions(absl::string_view text, format::CreateOptions& options) {
  for (absl::string_view item : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    size_t eq = item.find('=');
    if (eq == absl::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("invalid option '", item, "' (expected key=value)"));
    }
    absl::string_view key = item.substr(0, eq);
    absl::string_view value = item.substr(eq + 1);
    if (key == "cluster_size") {
      UQ_ASSIGN_OR_RETURN(uint64_t bytes, ParseByteCount(value, "cluster_size"));
      if (bytes == 0 || (bytes & (bytes - 1)) != 0 || bytes < 512 || bytes > (2u << 20)) {
        return absl::InvalidArgumentError(
            absl::StrCat("cluster_size ", value, " is not a power of two between 512 and 2M"));
      }
      options.cluster_bits = static_cast<uint32_t>(std::countr_zero(bytes));
    } else if (key == "compat") {
      if (value == "0.10" || value == "v2") {
        options.version = 2;
      } else if (value == "1.1" || value == "v3") {
        options.version = 3;
      } else {
        return absl::InvalidArgumentError(absl::StrCat("invalid compat value '", value, "'"));
      }
    } else if (key == "compression_type") {
      if (value == "zlib") {
        options.compression_type = format::CompressionType::kZlib;
      } else if (value == "zstd") {
        options.compression_type = format::CompressionType::kZstd;
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat("invalid compression_type '", value, "' (expected zlib or zstd)"));
      }
    } else if (key == "refcount_bits") {
      UQ_ASSIGN_OR_RETURN(uint64_t bits, ParseCount(value, "refcount_bits"));
      if (bits == 0 || bits > 64 || (bits & (bits - 1)) != 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("refcount_bits ", value, " is not a power of two between 1 and 64"));
      }
      options.refcount_order = static_cast<uint32_t>(std::countr_zero(bits));
    } else if (key == "extended_l2") {
      UQ_ASSIGN_OR_RETURN(options.extended_l2, ParseOnOff(key, value));
    } else if (key == "lazy_refcounts") {
      UQ_ASSIGN_OR_RETURN(options.lazy_refcounts, ParseOnOff(key, value));
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "unsupported create option '", key,
          "' (supported: cluster_size, compat, compression_type, refcount_bits, extended_l2, "
          "lazy_refcounts)"));
    }
  }
  return absl::OkStatus();
}

// Creates `path` (or empties it) under the writer's lock, taken before the
// truncation so an image in use is left alone, and writes a fresh qcow2
// layout into it when `layout` is given. The engine then reopens (and
// relocks) the file, with O_DIRECT if asked.
absl::Status PrepareDestination(io::EventLoop& loop, const std::string& path,
                                const format::ImageLayout* layout) {
  io::OpenFlags flags;
  flags.create = true;
  auto file = io::UringFile::Open(&loop, path, flags);
  if (!file.ok()) return file.status();
  io::BlockFile& f = **file;
  UQ_RETURN_IF_ERROR(LockImageFile((*file)->fd(), LockMode::kExclusive));
  int r = RunOnLoop(loop, f.Truncate(0));
  if (r < 0) return absl::InternalError(absl::StrCat(path, ": truncate: ", std::strerror(-r)));
  if (layout == nullptr) return absl::OkStatus();
  for (const format::WriteRange& w : layout->writes) {
    int64_t n = RunOnLoop(loop, f.Write(w.offset_bytes, w.data));
    if (n < 0) {
      return absl::InternalError(absl::StrCat(path, ": writing image metadata at ", w.offset_bytes,
                                              ": ", std::strerror(static_cast<int>(-n))));
    }
  }
  r = RunOnLoop(loop, f.Truncate(layout->file_size_bytes));
  if (r < 0) return absl::InternalError(absl::StrCat(path, ": truncate: ", std::strerror(-r)));
  r = RunOnLoop(loop, f.Flush());
  if (r < 0) return absl::InternalError(absl::StrCat(path, ": flush: ", std::strerror(-r)));
  return absl::OkStatus();
}

// Progress on stderr in qemu-img's style: "    (12.00/100%)\r".
class Progress {
 public:
  explicit Progress(bool enabled) : enabled_(enabled) {}
  void Update(double fraction) {
    if (!enabled_) return;
    double percent = std::min(100.0, fraction * 100.0);
    if (printed_ >= 0 && percent < 100.0 && percent - printed_ < 1.0) return;
    printed_ = percent;
    std::fprintf(stderr, "    (%.2f/100%%)\r", percent);
    std::fflush(stderr);
  }
  void Finish() {
    if (!enabled_) return;
    Update(1.0);
    std::fprintf(stderr, "\n");
  }

 private:
  bool enabled_;
  double printed_ = -1;
};

// Shared state of one copy: workers take chunk indices in order.
struct CopyJob {
  io::EventLoop* loop = nullptr;
  engine::Device* src = nullptr;
  engine::Device* dst = nullptr;
  bool compress = false;        // -c
  uint64_t size_bytes = 0;      // of the source
  uint64_t dst_size_bytes = 0;  // >= size_bytes (rounded up to a sector for qcow2)
  uint64_t chunk_bytes = 0;
  uint64_t unit_bytes = 0;  // zero detection / compression granularity
  uint64_t next_chunk = 0;
  uint64_t chunks = 0;
  uint64_t done_bytes = 0;
  int error = 0;
  std::string error_what;
  Progress* progress = nullptr;
  // In-order writes (qcow2 output without -W): chunk i's writes start only
  // after chunk i-1's have finished, so clusters are allocated in guest order
  // (an unfragmented image, as qemu-img convert makes); reads still overlap.
  bool in_order = false;
  uint64_t next_write_chunk = 0;
  std::map<uint64_t, std::coroutine_handle<>> turn_waiters;
};

// Suspends until it is chunk `index`'s turn to write (or the copy failed).
struct WriteTurn {
  CopyJob& job;
  uint64_t index;
  bool await_ready() const noexcept { return job.error != 0 || job.next_write_chunk == index; }
  void await_suspend(std::coroutine_handle<> h) { job.turn_waiters[index] = h; }
  void await_resume() const noexcept {}
};

// Ends chunk `index`'s turn and wakes the next writer (every writer, on error).
void PassTurn(CopyJob& job, uint64_t index) {
  if (!job.in_order) return;
  if (job.error != 0) {
    auto waiters = std::move(job.turn_waiters);
    job.turn_waiters.clear();
    for (auto& [i, h] : waiters) h.resume();
    return;
  }
  job.next_write_chunk = index + 1;
  auto it = job.turn_waiters.find(index + 1);
  if (it == job.turn_waiters.end()) return;
  std::coroutine_handle<> h = it->second;
  job.turn_waiters.erase(it);
  h.resume();
}

Task<int> CopyChunk(CopyJob& job, AlignedBuffer& buf, uint64_t index, uint64_t offset,
                    uint64_t src_length, std::string& what) {
  iovec v = buf.Iov(0, src_length);
  int r = co_await job.src->Read(offset, std::span<const iovec>(&v, 1));
  if (r < 0) {
    what = absl::StrCat("reading source at offset ", offset);
    co_return r;
  }
  // A raw source need not end on a sector; the qcow2 destination does (its
  // size is rounded up, as qemu-img does): the tail reads as zeros.
  uint64_t length = std::min(job.chunk_bytes, job.dst_size_bytes - offset);
  std::memset(buf.data() + src_length, 0, length - src_length);
  if (job.in_order) {
    co_await WriteTurn{job, index};
    if (job.error != 0) co_return 0;  // another chunk failed; stop quietly
  }
  // Walk the chunk in units, writing each maximal run of non-zero units with
  // one request (or one compressed cluster per unit).
  uint64_t pos = 0;
  while (pos < length) {
    uint64_t unit_len = std::min(job.unit_bytes, length - pos);
    if (IsAllZero(buf.span().subspan(pos, unit_len))) {
      pos += unit_len;
      continue;
    }
    if (job.compress) {
      r = co_await job.dst->WriteCompressed(offset + pos, buf.span().subspan(pos, unit_len));
      if (r < 0) {
        what = absl::StrCat("writing compressed cluster at offset ", offset + pos);
        co_return r;
      }
      pos += unit_len;
      continue;
    }
    uint64_t run_end = pos + unit_len;
    while (run_end < length) {
      uint64_t next_len = std::min(job.unit_bytes, length - run_end);
      if (IsAllZero(buf.span().subspan(run_end, next_len))) break;
      run_end += next_len;
    }
    iovec w = buf.Iov(pos, run_end - pos);
    r = co_await job.dst->Write(offset + pos, std::span<const iovec>(&w, 1), /*fua=*/false);
    if (r < 0) {
      what = absl::StrCat("writing destination at offset ", offset + pos);
      co_return r;
    }
    pos = run_end;
  }
  co_return 0;
}

Task<void> CopyWorker(CopyJob& job) {
  AlignedBuffer buf(job.chunk_bytes);
  while (job.error == 0 && job.next_chunk < job.chunks) {
    uint64_t index = job.next_chunk++;
    uint64_t offset = index * job.chunk_bytes;
    uint64_t length = std::min(job.chunk_bytes, job.size_bytes - offset);
    std::string what;
    int r = co_await CopyChunk(job, buf, index, offset, length, what);
    if (r < 0 && job.error == 0) {
      job.error = r;
      job.error_what = what;
    }
    PassTurn(job, index);
    if (r < 0) break;
    job.done_bytes += length;
    job.progress->Update(static_cast<double>(job.done_bytes) / job.size_bytes);
  }
}

// Runs `workers` copy workers on the loop until all have finished.
absl::Status RunCopy(CopyJob& job, int workers) {
  job.chunks = (job.size_bytes + job.chunk_bytes - 1) / job.chunk_bytes;
  std::vector<Task<void>> tasks;
  for (int i = 0; i < workers; ++i) tasks.push_back(CopyWorker(job));
  RunOnLoop(*job.loop, io::WhenAll(std::move(tasks)));
  if (job.error < 0) {
    return absl::InternalError(absl::StrCat(job.error_what, ": ", std::strerror(-job.error)));
  }
  return absl::OkStatus();
}

absl::Status ParseCacheMode(absl::string_view mode, bool* direct) {
  if (mode == "none") {
    *direct = true;
  } else if (mode == "writeback") {
    *direct = false;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unsupported cache mode '", mode, "' (supported: none, writeback)"));
  }
  return absl::OkStatus();
}

constexpr common::OptionSpec kConvertOptions[] = {
    {'f', 'f', "format", "FMT", "source format, qcow2 or raw (probed when omitted)"},
    {'O', 'O', "output-format", "FMT", "destination format, raw (default) or qcow2"},
    {'o', 'o', "options", "OPTS",
     "qcow2 creation options (repeatable): cluster_size, compat, compression_type, "
     "refcount_bits, extended_l2, lazy_refcounts"},
    {'c', 'c', "compress", "", "write compressed clusters (-O qcow2)"},
    {'p', 'p', "progress", "", "show progress on stderr"},
    {'q', 'q', "quiet", "", "no progress"},
    {'m', 'm', "coroutines", "N", "chunks in flight at once (1..16, default 8)"},
    {'W', 'W', "out-of-order", "", "allow out-of-order writes (qcow2 output may be fragmented)"},
    {'l', 'l', "snapshot", "SNAPSHOT",
     "convert internal snapshot SNAPSHOT (a name or id, or snapshot.name=NAME)"},
    {'t', 't', "cache", "CACHE", "destination cache mode: writeback (default) or none (O_DIRECT)"},
    {'T', 'T', "source-cache", "CACHE", "source cache mode: writeback (default) or none"},
    {'U', 'U', "force-share", "", "open the source without taking the image lock"},
    kHelpOption,
};

int RunConvert(const common::ParsedArgs& parsed) {
  EngineOpenOptions src_options;
  src_options.read_only = true;
  std::string out_format = "raw";
  format::CreateOptions create;
  bool compress = false;
  bool out_of_order = false;
  bool progress_enabled = false;
  bool dst_direct = false;
  int workers = 8;
  std::vector<std::string> create_option_strings;

  for (const common::ParsedOption& o : parsed.options) {
    const std::string& value = o.value;
    absl::Status s;
    switch (o.id) {
      case 'f': {
        auto f = ParseFormatName(value);
        if (!f.ok()) return ReportError(f.status());
        src_options.format = *f;
        break;
      }
      case 'O':
        if (value != "raw" && value != "qcow2") {
          return ReportError(absl::StrCat("convert: unsupported output format '", value,
                                          "' (supported: raw, qcow2)"));
        }
        out_format = value;
        break;
      case 'o':
        create_option_strings.push_back(value);
        break;
      case 'm': {
        auto n = ParseCount(value, "coroutine count");
        if (!n.ok() || *n < 1 || *n > 16) {
          return ReportError(absl::StrCat("convert: invalid -m '", value, "' (1..16)"));
        }
        workers = static_cast<int>(*n);
        break;
      }
      case 'l':
        src_options.snapshot = absl::StartsWith(value, "snapshot.name=") ? value.substr(14) : value;
        break;
      case 't':
        s = ParseCacheMode(value, &dst_direct);
        break;
      case 'T':
        s = ParseCacheMode(value, &src_options.direct_io);
        break;
      case 'c':
        compress = true;
        break;
      case 'W':
        out_of_order = true;
        break;
      case 'p':
        progress_enabled = true;
        break;
      case 'q':
        progress_enabled = false;
        break;
      case 'U':
        src_options.force_share = true;
        break;
    }
    if (!s.ok()) return ReportError(s);
  }
  const std::vector<std::string>& positional = parsed.operands;
  if (positional.size() != 2) {
    return ReportError("convert: expected SRC and DST (try 'qcow2-img convert --help')");
  }
  const std::string& src_path = positional[0];
  const std::string& dst_path = positional[1];
  if (out_format == "raw") {
    if (compress) return ReportError("convert: -c needs -O qcow2");
    if (!create_option_strings.empty()) {
      return ReportError("convert: -o options are for -O qcow2");
    }
  }
  for (const std::string& o : create_option_strings) {
    absl::Status s = ApplyCreateOptions(o, create);
    if (!s.ok()) return ReportError(absl::StrCat("convert: ", s.message()));
  }

  auto loop_or = io::EventLoop::Create(128);
  if (!loop_or.ok()) return ReportError(loop_or.status());
  io::EventLoop& loop = **loop_or;

  auto src = OpenDevice(loop, src_path, src_options);
  if (!src.ok()) return ReportError(absl::StrCat(src_path, ": ", src.status().message()));
  uint64_t size_bytes = (*src)->size_bytes();

  // Validate the new image's layout before touching DST.
  std::optional<format::ImageLayout> layout;
  if (out_format == "qcow2") {
    create.size_bytes = (size_bytes + 511) / 512 * 512;
    auto built = format::BuildImageLayout(create);
    if (!built.ok()) return ReportError(absl::StrCat("convert: ", built.status().message()));
    layout = std::move(*built);
  }
  absl::Status created = PrepareDestination(loop, dst_path, layout ? &*layout : nullptr);
  if (!created.ok()) return ReportError(absl::StrCat(dst_path, ": ", created.message()));

  std::unique_ptr<engine::Device> dst;
  CopyJob job;
  if (out_format == "raw") {
    io::OpenFlags flags;
    flags.direct = dst_direct;
    auto file = io::UringFile::Open(&loop, dst_path, flags);
    if (!file.ok()) return ReportError(absl::StrCat(dst_path, ": ", file.status().message()));
    absl::Status locked = LockImageFile((*file)->fd(), LockMode::kExclusive);
    if (!locked.ok()) return ReportError(absl::StrCat(dst_path, ": ", locked.message()));
    int r = RunOnLoop(loop, (*file)->Truncate(size_bytes));
    if (r < 0) return ReportError(absl::StrCat(dst_path, ": truncate: ", std::strerror(-r)));
    dst = std::make_unique<engine::RawDevice>(std::move(*file), size_bytes);
    job.chunk_bytes = kRawChunkBytes;
    job.unit_bytes = kRawZeroGranularityBytes;
  } else {
    EngineOpenOptions dst_options;
    dst_options.format = engine::ImageFormat::kQcow2;
    dst_options.direct_io = dst_direct;
    auto opened = OpenDevice(loop, dst_path, dst_options);
    if (!opened.ok()) return ReportError(absl::StrCat(dst_path, ": ", opened.status().message()));
    dst = std::move(*opened);
    uint64_t cluster_bytes = uint64_t{1} << create.cluster_bits;
    job.unit_bytes = cluster_bytes;
    job.chunk_bytes = std::max(cluster_bytes, kMinQcow2ChunkBytes);
    job.in_order = !out_of_order;
    if (compress) {
      job.compress = true;
      if (!dst->supports_compressed_writes()) {
        return ReportError("convert: the destination does not support compressed writes");
      }
    }
  }

  Progress progress(progress_enabled);
  progress.Update(0);
  job.loop = &loop;
  job.src = src->get();
  job.dst = dst.get();
  job.size_bytes = size_bytes;
  job.dst_size_bytes = dst->size_bytes();
  job.progress = &progress;
  absl::Status copied = size_bytes == 0 ? absl::OkStatus() : RunCopy(job, workers);
  if (copied.ok()) progress.Finish();

  absl::Status dst_closed = CloseDevice(loop, *dst);
  absl::Status src_closed = CloseDevice(loop, **src);
  if (!copied.ok()) return ReportError(absl::StrCat("convert: ", copied.message()));
  if (!dst_closed.ok()) return ReportError(absl::StrCat(dst_path, ": ", dst_closed.message()));
  if (!src_closed.ok()) return ReportError(absl::StrCat(src_path, ": ", src_closed.message()));
  return 0;
}

}  // namespace

const Command kConvertCommand = {
    "convert",
    RunConvert,
    "convert [-f FMT] [-O raw|qcow2] [-o OPTIONS] [-c] [-p] [-q] [-m N] [-W] [-l SNAPSHOT] "
    "[-t CACHE] [-T SRC_CACHE] [-U] SRC DST",
    "Copies the guest-visible contents of SRC (through its backing chain) into a new image DST.",
    kConvertOptions,
};

}  // namespace uq::tools
