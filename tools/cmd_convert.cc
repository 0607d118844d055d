// qcow2-img convert: copies the guest-visible contents of an image (its whole
// backing chain, read through the engine) into a new raw or qcow2 image.
//
//   qcow2-img convert [-f FMT] [-O raw|qcow2] [-o OPTS] [-c] [-p] [-q] [-m N] [-W]
//                     [-l SNAPSHOT] [-t CACHE] [-T SRC_CACHE] [-S SIZE] [-r RATE]
//                     [-B BACKING -F FMT] [-C] [--salvage] [-n [--target-is-zero]]
//                     [--allow-devices] SRC DST
//
// -o takes qcow2 create options: cluster_size, compat (0.10/1.1), compression_type
// (zlib/zstd), refcount_bits, extended_l2, lazy_refcounts, preallocation (raw
// targets: preallocation only). -c writes compressed clusters. Zero runs of
// at least -S bytes (default 4 KiB) are not written, so the output is sparse;
// chunks the source's block status reports as zeros are not even read. Up to
// N (-m, default 8) chunks are in flight at once; qcow2 output is written in
// guest order (unfragmented) unless -W allows out-of-order writes. The
// destination is never flushed unless -t asks (writeback, none), as qemu-img
// convert's default cache mode (unsafe). -r limits the bytes written per
// second; -B writes over a backing file only what the source's top image
// holds; -C copies data as it is (copy_file_range raw to raw); --salvage goes
// on past read errors. --allow-devices lets SRC's chain and DST's (-B's
// backing file) hold block devices. A convert that fails removes the target
// it created.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "format/create.h"
#include "format/status_macros.h"
#include "src/engine/raw_device.h"
#include "src/io/uring_file.h"
#include "tools/block_status.h"
#include "tools/commands.h"
#include "tools/compress_pool.h"
#include "tools/convert_copy.h"
#include "tools/convert_options.h"
#include "tools/convert_target.h"
#include "tools/engine_util.h"
#include "tools/image_lock.h"
#include "tools/sparse_runs.h"
#include "tools/zero_chunks.h"

namespace uq::tools {

namespace {

// qemu-img convert's IO_BUF_SIZE: the chunk of every uncompressed copy, so
// zero runs shorter than -S are written only inside one chunk, as there.
constexpr uint64_t kQemuBufferBytes = 2 << 20;
// -c into qcow2: the clusters one compression job takes together (the
// chunk qcow2 targets had before they moved to kQemuBufferBytes).
constexpr uint64_t kCompressedChunkBytes = 256 << 10;

// -B / -C: the source's extents as the copy treats them. -B: the top
// image's own, over the new backing file, whose size (read from the target's
// chain) bounds the zero ranges worth writing (with -n there is no such
// bound, as in qemu-img); zero runs in data are zeroed. -C: the whole chain's.
absl::Status SetUpExtentCopy(const std::string& src_path, const EngineOpenOptions& src_options,
                             const std::string& dst_path, bool no_create, bool backing,
                             uint64_t size_bytes, CopyJob& job) {
  uint64_t backing_end = UINT64_MAX;
  if (backing && !no_create) {
    UQ_ASSIGN_OR_RETURN(Chain chain, Chain::Open(dst_path, "qcow2", LockMode::kNone,
                                                 /*snapshot=*/"", src_options.allow_devices));
    backing_end = chain.depth() > 1 ? chain.layer(1).size_bytes() : 0;
  }
  UQ_ASSIGN_OR_RETURN(
      job.extents,
      SourceExtents(src_path, FormatName(src_options.format), src_options.snapshot,
                    src_options.allow_devices, size_bytes, /*top_only=*/backing, backing_end,
                    /*zeros_as_data=*/backing && job.min_sparse_sectors == 0));
  job.zero_chunks.clear();
  if (backing) job.dst_reads_zero = false;
  return absl::OkStatus();
}

// A descriptor closed on destruction (-C's plain view of the source).
struct OwnedFd {
  int fd = -1;
  ~OwnedFd() {
    if (fd >= 0) close(fd);
  }
};

// Whether convert -C can hand raw-to-raw copies to copy_file_range: plain
// (not O_DIRECT) files, a raw source. Opens the source's view into `fd`.
void SetUpOffload(const std::string& src_path, const EngineOpenOptions& src_options, int dst_fd,
                  OwnedFd& fd, CopyJob& job) {
  if (src_options.format == engine::ImageFormat::kQcow2 || src_options.direct_io) return;
  fd.fd = open(src_path.c_str(), O_RDONLY | O_CLOEXEC);
  char magic[4] = {};
  if (fd.fd < 0 || pread(fd.fd, magic, 4, 0) < 0 || std::memcmp(magic, "QFI\xfb", 4) == 0) return;
  job.offload_src_fd = fd.fd;
  job.offload_dst_fd = dst_fd;
}

enum : int { kTargetIsZero = common::kLongOnlyIdBase, kSalvage };

constexpr common::OptionSpec kConvertOptions[] = {
    {'f', 'f', "format", "FMT", "source format, qcow2 or raw (probed when omitted)"},
    {'O', 'O', "output-format", "FMT", "destination format, raw (default) or qcow2"},
    {'o', 'o', "options", "OPTS",
     "creation options (repeatable): cluster_size, compat, compression_type, refcount_bits, "
     "extended_l2, lazy_refcounts, preallocation (off, metadata, falloc, full); raw: "
     "preallocation (off, falloc, full)"},
    {'B', 'B', "backing", "BACKING",
     "DST (qcow2) gets BACKING as its backing file; only what SRC's top image holds is "
     "written (needs -F)"},
    {'F', 'F', "backing-format", "FMT", "the format of BACKING, qcow2 or raw"},
    {'C', 'C', "copy-offloading", "",
     "copy data with copy_file_range where the kernel can (raw to raw), as it is, zeros "
     "included; not with -c or -S"},
    {'c', 'c', "compress", "", "write compressed clusters (-O qcow2)"},
    {'p', 'p', "progress", "", "show progress on stderr"},
    {'q', 'q', "quiet", "", "no progress"},
    {'m', 'm', "coroutines", "N", "chunks in flight at once (1..16, default 8)"},
    {'W', 'W', "out-of-order", "", "allow out-of-order writes (qcow2 output may be fragmented)"},
    {'l', 'l', "snapshot", "SNAPSHOT",
     "convert internal snapshot SNAPSHOT (a name or id, or snapshot.name=NAME)"},
    {'t', 't', "cache", "CACHE",
     "destination cache mode: unsafe (default, never flushed), writeback (flushed at the end) "
     "or none (O_DIRECT, flushed at the end)"},
    {'T', 'T', "source-cache", "CACHE", "source cache mode: writeback (default), unsafe or none"},
    {'U', 'U', "force-share", "", "open the source without taking the image lock"},
    {'n', 'n', "no-create", "",
     "DST exists: write into it (as large as SRC at least) instead of creating it"},
    {'S', 'S', "sparse-size", "SIZE",
     "zero runs of at least SIZE bytes (a multiple of 512, default 4k) are left unallocated; "
     "0 writes every byte (fully allocates DST)"},
    {'r', 'r', "rate-limit", "RATE",
     "write at most RATE bytes per second to DST (k, M, G suffixes; 0: no limit)"},
    {kSalvage, 0, "salvage", "",
     "go on past read errors: each unreadable 512-byte sector is reported on stderr and "
     "copied as zeros (not with -C)"},
    {kTargetIsZero, 0, "target-is-zero", "",
     "with -n: DST reads as zeros already, so zero ranges are not written"},
    kAllowDevicesOption,
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
  CacheMode dst_cache{.no_flush = true};
  int workers = 8;
  bool no_create = false;
  bool target_is_zero = false;
  bool copy_offload = false;
  bool salvage = false;
  bool quiet = false;
  bool explicit_sparse = false;
  uint32_t min_sparse_sectors = 8;  // qemu-img's default, 4 KiB
  uint64_t rate_limit = 0;
  std::vector<std::string> create_option_strings;
  std::string backing;
  std::string backing_format;

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
      case 't': {
        auto mode = ParseCacheMode(value);
        if (!mode.ok()) return ReportError(absl::StrCat("convert: ", mode.status().message()));
        dst_cache = *mode;
        break;
      }
      case 'T': {
        auto mode = ParseCacheMode(value);
        if (!mode.ok()) return ReportError(absl::StrCat("convert: ", mode.status().message()));
        src_options.direct_io = mode->direct;
        break;
      }
      case 'B':
        backing = value;
        break;
      case 'F': {
        auto f = ParseFormatName(value);
        if (!f.ok()) return ReportError(absl::StrCat("convert: ", f.status().message()));
        backing_format = value;
        break;
      }
      case 'C':
        copy_offload = true;
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
        quiet = true;
        break;
      case 'U':
        src_options.force_share = true;
        break;
      case 'n':
        no_create = true;
        break;
      case 'S': {
        auto sectors = ParseSparseSectors(value);
        if (!sectors.ok())
          return ReportError(absl::StrCat("convert: ", sectors.status().message()));
        min_sparse_sectors = *sectors;
        explicit_sparse = true;
        break;
      }
      case 'r': {
        auto rate = ParseRateLimit(value);
        if (!rate.ok()) return ReportError(absl::StrCat("convert: ", rate.status().message()));
        rate_limit = *rate;
        break;
      }
      case kSalvage:
        salvage = true;
        break;
      case kTargetIsZero:
        target_is_zero = true;
        break;
      case kAllowDevicesId:
        src_options.allow_devices = true;
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
  }
  if (!backing.empty() && backing_format.empty()) {
    return ReportError("convert: -B needs -F (the backing file's format)");
  }
  if (backing.empty() && !backing_format.empty()) {
    return ReportError("convert: -F names the format of a backing file, and there is no -B");
  }
  if (!backing.empty() && out_format != "qcow2") {
    return ReportError("convert: -B needs -O qcow2 (raw has no backing file)");
  }
  if (!backing.empty() && target_is_zero) {
    return ReportError("convert: --target-is-zero cannot be used with a backing file (-B)");
  }
  if (target_is_zero && !no_create) {
    return ReportError("convert: --target-is-zero requires -n");
  }
  if (no_create && !create_option_strings.empty()) {
    return ReportError("convert: -o creates DST; with -n, DST exists already");
  }
  TargetPreallocation prealloc = TargetPreallocation::kOff;
  for (const std::string& o : create_option_strings) {
    absl::Status s = ApplyCreateOptions(o, out_format == "raw", create, prealloc);
    if (!s.ok()) return ReportError(absl::StrCat("convert: ", s.message()));
  }
  if (copy_offload && salvage) {
    return ReportError("convert: -C (copy offloading) cannot be used with --salvage");
  }
  if (copy_offload && (compress || explicit_sparse)) {
    return ReportError(
        absl::StrCat("convert: -C (copy offloading) cannot be used with -", compress ? "c" : "S"));
  }
  if (compress && prealloc != TargetPreallocation::kOff) {
    return ReportError("convert: -c and preallocation cannot be used together");
  }

  auto loop_or = io::EventLoop::Create(128);
  if (!loop_or.ok()) return ReportError(loop_or.status());
  io::EventLoop& loop = **loop_or;

  auto src = OpenDevice(loop, src_path, src_options);
  if (!src.ok()) return ReportError(absl::StrCat(src_path, ": ", src.status().message()));
  uint64_t size_bytes = (*src)->size_bytes();

  // Validate the new image's layout before touching DST.
  std::optional<format::ImageLayout> layout;
  if (out_format == "qcow2" && !no_create) {
    create.size_bytes = (size_bytes + 511) / 512 * 512;
    create.backing_file = backing;
    if (!backing.empty()) create.backing_format = backing_format;
    auto built = format::BuildImageLayout(create);
    if (!built.ok()) return ReportError(absl::StrCat("convert: ", built.status().message()));
    layout = std::move(*built);
  }
  CreatedTarget created_target;  // declared before the devices: unlinked after they close
  if (!no_create) {
    const bool existed = access(dst_path.c_str(), F_OK) == 0;
    absl::Status created =
        PrepareDestination(loop, dst_path, layout ? &*layout : nullptr, size_bytes, prealloc);
    // A file that was there and that we could not lock is someone else's.
    if (created.ok() || !existed) created_target.Arm(dst_path);
    if (!created.ok()) return ReportError(absl::StrCat(dst_path, ": ", created.message()));
  }

  std::unique_ptr<engine::Device> dst;
  int raw_dst_fd = -1;  // -C: the raw target's descriptor, owned by dst
  CopyJob job;
  if (out_format == "raw") {
    io::OpenFlags flags;
    flags.direct = dst_cache.direct;
    auto file = io::UringFile::Open(&loop, dst_path, flags);
    if (file.ok() && !dst_cache.direct) raw_dst_fd = (*file)->fd();
    if (!file.ok()) return ReportError(absl::StrCat(dst_path, ": ", file.status().message()));
    absl::Status locked = LockImageFile((*file)->fd(), LockMode::kExclusive);
    if (!locked.ok()) return ReportError(absl::StrCat(dst_path, ": ", locked.message()));
    if (!no_create) {
      int r = RunOnLoop(loop, (*file)->Truncate(size_bytes));
      if (r < 0) return ReportError(absl::StrCat(dst_path, ": truncate: ", std::strerror(-r)));
    }
    const uint64_t dst_size = no_create ? (*file)->size_bytes() : size_bytes;
    dst = std::make_unique<engine::RawDevice>(MaybeNoFlush(std::move(*file), dst_cache.no_flush),
                                              dst_size);
    job.chunk_bytes = kQemuBufferBytes;
    // O_DIRECT writes must stay 4 KiB aligned.
    job.alignment_sectors = dst_cache.direct ? 8 : 1;
  } else {
    EngineOpenOptions dst_options;
    dst_options.format = engine::ImageFormat::kQcow2;
    dst_options.direct_io = dst_cache.direct;
    dst_options.no_flush = dst_cache.no_flush;
    // -B's backing file (or, with -n, what DST names) may be a device too.
    dst_options.allow_devices = src_options.allow_devices;
    auto opened = OpenDevice(loop, dst_path, dst_options);
    if (!opened.ok()) return ReportError(absl::StrCat(dst_path, ": ", opened.status().message()));
    dst = std::move(*opened);
    const uint64_t cluster_bytes = dst->granularity_bytes();
    job.unit_bytes = cluster_bytes;
    job.alignment_sectors = 1;  // the engine aligns its own I/O
    // Widen writes to whole clusters only where the target allocates whole
    // clusters: a preallocated cluster keeps the holes a partial write
    // leaves in the file, as under qemu-img, and a new image with extended
    // L2 entries allocates subclusters (a 32nd of a cluster).
    if (prealloc == TargetPreallocation::kOff) {
      job.widen_bytes = !no_create && create.extended_l2 ? cluster_bytes / 32 : cluster_bytes;
    }
    job.chunk_bytes = std::max(cluster_bytes, compress ? kCompressedChunkBytes : kQemuBufferBytes);
    job.in_order = !out_of_order;
    if (compress) {
      job.compress = true;
      if (!dst->supports_compressed_writes()) {
        return ReportError("convert: the destination does not support compressed writes");
      }
    }
  }

  // Skip what the source says reads as zeros: the new destination reads as
  // zeros there already. If the source's metadata cannot be walked that way,
  // every chunk is read (the zero detection then still keeps DST sparse).
  // -S 0 writes the zeros too (qemu-img: "fully allocates output").
  job.min_sparse_sectors = min_sparse_sectors;
  job.rate_bytes_per_second = rate_limit;
  job.salvage = salvage;
  job.quiet = quiet;
  if (min_sparse_sectors != 0) {
    job.alignment_sectors = std::max(job.alignment_sectors, PowerOfTwoFloor(min_sparse_sectors));
    auto zero_chunks = ZeroChunks(src_path, FormatName(src_options.format), src_options.snapshot,
                                  src_options.allow_devices, size_bytes, job.chunk_bytes);
    if (zero_chunks.ok()) job.zero_chunks = std::move(*zero_chunks);
  }

  // -c: clusters are compressed on one thread per online CPU while the loop
  // reads and writes (the output does not depend on how many).
  std::unique_ptr<CompressPool> pool;
  if (job.compress) {
    loop.MakeCurrent();
    pool = std::make_unique<CompressPool>(std::max(1u, std::thread::hardware_concurrency()));
    job.pool = pool.get();
  }

  Progress progress(progress_enabled);
  progress.Update(0);
  job.loop = &loop;
  job.src = src->get();
  job.dst = dst.get();
  job.size_bytes = size_bytes;
  // Up to the source's end (rounded up to a sector for qcow2): an existing
  // DST (-n) may be larger, and its bytes past that stay as they are.
  const uint64_t copy_end = out_format == "raw" ? size_bytes : (size_bytes + 511) / 512 * 512;
  job.dst_size_bytes = std::min(dst->size_bytes(), copy_end);
  if (job.dst_size_bytes < size_bytes) {
    CloseDevice(loop, *dst).IgnoreError();
    CloseDevice(loop, **src).IgnoreError();
    return ReportError(absl::StrCat("convert: ", dst_path, " (", dst->size_bytes(),
                                    " bytes) is smaller than ", src_path, " (", size_bytes,
                                    " bytes)"));
  }
  job.dst_reads_zero = !no_create || target_is_zero;
  OwnedFd offload_src;
  if (!backing.empty() || copy_offload) {
    absl::Status s = SetUpExtentCopy(src_path, src_options, dst_path, no_create, !backing.empty(),
                                     size_bytes, job);
    if (!s.ok()) {
      CloseDevice(loop, *dst).IgnoreError();
      CloseDevice(loop, **src).IgnoreError();
      return ReportError(absl::StrCat("convert: ", backing.empty() ? "-C: " : "-B: ", s.message()));
    }
  }
  if (copy_offload) {
    // Data is copied as it is, zeros too (qemu-img's copy_range does not
    // look at the bytes).
    job.min_sparse_sectors = 0;
    if (raw_dst_fd >= 0) SetUpOffload(src_path, src_options, raw_dst_fd, offload_src, job);
  }
  job.progress = &progress;
  absl::Status copied = size_bytes == 0 ? absl::OkStatus() : RunCopy(job, workers);
  if (copied.ok()) progress.Finish();

  absl::Status dst_closed = CloseDevice(loop, *dst);
  absl::Status src_closed = CloseDevice(loop, **src);
  if (!copied.ok()) return ReportError(absl::StrCat("convert: ", copied.message()));
  if (!dst_closed.ok()) return ReportError(absl::StrCat(dst_path, ": ", dst_closed.message()));
  if (!src_closed.ok()) return ReportError(absl::StrCat(src_path, ": ", src_closed.message()));
  created_target.Keep();
  return 0;
}

}  // namespace

const Command kConvertCommand = {
    "convert",
    RunConvert,
    "convert [-f FMT] [-O raw|qcow2] [-o OPTIONS] [-c] [-p] [-q] [-m N] [-W] [-l SNAPSHOT] "
    "[-t CACHE] [-T SRC_CACHE] [-U] [-S SIZE] [-r RATE] [-B BACKING -F FMT] [-C] "
    "[--salvage] [-n [--target-is-zero]] [--allow-devices] SRC DST",
    "Copies the guest-visible contents of SRC (through its backing chain) into a new image DST.",
    kConvertOptions,
};

}  // namespace uq::tools
