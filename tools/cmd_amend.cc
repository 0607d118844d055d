// qcow2-img amend: qemu-img amend for qcow2 images: compat (0.10 <-> 1.1,
// zero clusters expanded on a downgrade), lazy_refcounts, refcount_bits (new
// refcount structures switched to with one header write, see
// engine::ChangeRefcountOrder), and backing_file / backing_fmt, which
// qemu-img 7.2 accepts only unchanged (it sends the user to rebase
// otherwise), data_file (renaming an image's existing data file) and
// data_file_raw (only off, or on where it is on), and size (a resize through
// the engine, as tools/cmd_resize.cc, but without --shrink: qemu-img amend
// shrinks too). encrypt.* is refused as unsupported, never ignored.
//
// Every refusal (qemu-img's and ours) is decided from the image as it is,
// before anything is written, so a refused amend leaves the image
// byte-identical. An image that was not closed cleanly (lazy refcounts) is
// first opened and closed through the engine, which repairs its refcounts
// and clears the dirty bit, as QEMU's open does; then the first cluster is
// re-encoded and written once, as QEMU's qcow2_update_header.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "format/bitmaps.h"
#include "format/header.h"
#include "format/status_macros.h"
#include "src/engine/check.h"
#include "src/engine/expand_zeros.h"
#include "tools/chain_edit.h"
#include "tools/commands.h"
#include "tools/convert_copy.h"
#include "tools/engine_util.h"
#include "tools/snapshot_list.h"
#include "tools/util.h"

namespace uq::tools {
namespace {

constexpr common::OptionSpec kAmendOptions[] = {
    kFormatOption,
    {'o', 'o', "", "OPTIONS",
     "comma-separated KEY=VALUE list: compat=0.10|1.1, lazy_refcounts=on|off, refcount_bits=N, "
     "data_file=NAME, data_file_raw=on|off, backing_file=NAME, backing_fmt=FMT, size=SIZE "
     "('help' lists them); may be repeated"},
    {'p', 'p', "", "", "show progress"},
    kQuietOption,
    kAllowDevicesOption,
    kHelpOption,
};

constexpr const char* kOptionHelp =
    "Amend options for 'qcow2' supported by qcow2-img:\n"
    "  backing_file=<str>     - File name of a base image (only its current value)\n"
    "  backing_fmt=<str>      - Image format of the base image (only its current value)\n"
    "  compat=<str>           - Compatibility level (v2 [0.10] or v3 [1.1])\n"
    "  data_file=<str>        - File name of an external data file (images that have one)\n"
    "  data_file_raw=<bool (on/off)> - The external data file must stay valid as a raw image\n"
    "  lazy_refcounts=<bool (on/off)> - Postpone refcount updates\n"
    "  refcount_bits=<num>    - Width of a reference count entry in bits\n"
    "  size=<size>            - Virtual disk size\n";

struct AmendArgs {
  std::string file;
  std::string format;  // "" = probe
  std::string options;
  bool progress = false;
  bool help = false;
  // The engine opens the backing chain (and data file) to repair a dirty
  // image and for size=.
  bool allow_devices = false;
};

// The options as given; a later value of a key replaces an earlier one, as
// in QEMU's option lists.
struct AmendOptionValues {
  std::optional<uint32_t> version;
  std::optional<bool> lazy_refcounts;
  std::optional<std::string> backing_file;
  std::optional<std::string> backing_fmt;
  std::optional<uint32_t> refcount_order;  // log2 of refcount_bits
  std::optional<std::string> data_file;    // "" = drop the name
  std::optional<bool> data_file_raw;
  std::optional<uint64_t> size_bytes;
};

absl::StatusOr<AmendArgs> ParseArgs(const common::ParsedArgs& parsed) {
  AmendArgs a;
  std::vector<std::string> lists;
  for (const common::ParsedOption& o : parsed.options) {
    if (o.id == 'o') lists.push_back(o.value);
  }
  if (lists.empty()) return absl::InvalidArgumentError("Must specify options (-o)");
  for (const std::string& o : lists) {
    if (o == "help" || o == "?") a.help = true;
    a.options += a.options.empty() ? o : "," + o;
  }
  if (a.help) return a;
  if (parsed.operands.size() != 1) {
    return absl::InvalidArgumentError("Expecting one image file name");
  }
  a.file = parsed.operands[0];
  if (const std::string* f = parsed.Last('f')) a.format = *f;
  if (!a.format.empty()) UQ_RETURN_IF_ERROR(ParseFormatName(a.format).status());
  a.progress = parsed.Has('p') && !parsed.Has('q');
  a.allow_devices = parsed.Has(kAllowDevicesId);
  return a;
}

// "k=v,k2=v2" with ",," standing for a comma inside a value (QEMU's
// QemuOpts syntax).
std::vector<std::pair<std::string, std::string>> SplitOptionList(const std::string& text) {
  std::vector<std::pair<std::string, std::string>> out;
  std::string item;
  auto flush = [&]() {
    const size_t eq = item.find('=');
    if (eq == std::string::npos) {
      out.emplace_back(item, "");
    } else {
      out.emplace_back(item.substr(0, eq), item.substr(eq + 1));
    }
    item.clear();
  };
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == ',' && i + 1 < text.size() && text[i + 1] == ',') {
      item += ',';
      ++i;
    } else if (text[i] == ',') {
      flush();
    } else {
      item += text[i];
    }
  }
  if (!item.empty()) flush();
  return out;
}

absl::StatusOr<AmendOptionValues> ParseOptionValues(const std::string& text) {
  // qcow2 creation options: qemu-img names these "only supported for image
  // creation".
  static const char* const kCreateOnly[] = {
      "cluster_size",      "preallocation",          "encryption",         "extended_l2",
      "compression_type",  "encrypt.format",         "encrypt.cipher-alg", "encrypt.cipher-mode",
      "encrypt.ivgen-alg", "encrypt.ivgen-hash-alg", "encrypt.hash-alg",   "encrypt.key-secret"};
  AmendOptionValues v;
  for (const auto& [key, value] : SplitOptionList(text)) {
    std::optional<bool> flag;
    if (value == "on" || value == "yes" || value == "true" || value == "y") flag = true;
    if (value == "off" || value == "no" || value == "false" || value == "n") flag = false;
    if (key == "compat") {
      if (value == "0.10" || value == "v2") {
        v.version = 2;
      } else if (value == "1.1" || value == "v3") {
        v.version = 3;
      } else {
        return absl::InvalidArgumentError(absl::StrCat("Unknown compatibility level ", value));
      }
    } else if (key == "lazy_refcounts" || key == "data_file_raw") {
      if (!flag) {
        return absl::InvalidArgumentError(
            absl::StrCat("Parameter '", key, "' expects 'on' or 'off'"));
      }
      (key == "lazy_refcounts" ? v.lazy_refcounts : v.data_file_raw) = flag;
    } else if (key == "data_file") {
      v.data_file = value;
    } else if (key == "refcount_bits") {
      char* end = nullptr;
      const unsigned long long bits = std::strtoull(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0' || bits == 0 || bits > 64 || (bits & (bits - 1)) != 0) {
        return absl::InvalidArgumentError(
            "Refcount width must be a power of two and may not exceed 64 bits");
      }
      v.refcount_order = static_cast<uint32_t>(__builtin_ctzll(bits));
    } else if (key == "backing_file") {
      v.backing_file = value;
    } else if (key == "backing_fmt") {
      v.backing_fmt = value;
    } else if (key == "size") {
      absl::StatusOr<uint64_t> size = ParseSize(value);
      if (!size.ok()) {
        return absl::InvalidArgumentError(
            "Parameter 'size' expects a non-negative number below 2^64");
      }
      v.size_bytes = *size;
    } else {
      if (key.rfind("encrypt.", 0) == 0) {
        return absl::UnimplementedError(
            absl::StrCat("amending '", key, "' is not supported by qcow2-img"));
      }
      for (const char* c : kCreateOnly) {
        if (key == c) {
          return absl::InvalidArgumentError(absl::StrCat(
              "Invalid parameter '", key, "' (this option is only supported for image creation)"));
        }
      }
      return absl::InvalidArgumentError(absl::StrCat("Invalid parameter '", key, "'"));
    }
  }
  return v;
}

// qcow2_downgrade's refusals, in its order, then ours (bitmaps, plain zero
// clusters over a backing file), all before anything changes. True when zero
// clusters must be expanded. The L2 census reads `path` through the engine.
absl::StatusOr<bool> CheckDowngrade(io::EventLoop& loop, const std::string& path,
                                    const ImageDescription& d, uint32_t refcount_order) {
  const format::Header& h = *d.header;
  if (refcount_order != 4) {
    return absl::UnimplementedError("compat=0.10 requires refcount_bits=16");
  }
  if (h.has_data_file())
    return absl::UnimplementedError("Cannot downgrade an image with a data file");
  for (const format::Snapshot& s : d.snapshots) {
    if (VmStateSize(s) > UINT32_MAX || s.disk_size_bytes() != h.size_bytes) {
      return absl::UnimplementedError("Internal snapshots prevent downgrade of image");
    }
  }
  const uint64_t incompatible =
      h.incompatible_features & ~(format::kIncompatCompression | format::kIncompatDirty);
  if (incompatible != 0) {
    return absl::UnimplementedError(absl::StrFormat(
        "Cannot downgrade an image with incompatible features 0x%x set", incompatible));
  }
  UQ_ASSIGN_OR_RETURN(std::optional<format::BitmapsExtension> bitmaps,
                      format::FindBitmapsExtension(h));
  if (bitmaps || (h.autoclear_features & format::kAutoclearBitmaps)) {
    return absl::UnimplementedError(
        "downgrading an image with persistent bitmaps is not supported by qcow2-img");
  }
  UQ_ASSIGN_OR_RETURN(std::unique_ptr<io::UringFile> file,
                      io::UringFile::Open(&loop, path, io::OpenFlags{}));
  UQ_ASSIGN_OR_RETURN(engine::L2Census census,
                      RunOnLoop(loop, engine::CensusL2(*file, h, d.snapshots)));
  if (census.zero_plain && !h.backing_file.empty()) {
    return absl::UnimplementedError(
        "downgrading an image with a backing file and zero clusters is not supported by "
        "qcow2-img");
  }
  if (h.compression_type != format::CompressionType::kZlib && census.compressed_clusters) {
    return absl::UnimplementedError(
        "Cannot downgrade an image with zstd compression type and existing compressed clusters");
  }
  return census.zero_plain || census.zero_alloc;
}

// qcow2_amend_options' checks against the image as it is. True when a
// downgrade must expand zero clusters.
absl::StatusOr<bool> CheckAmend(io::EventLoop& loop, const std::string& path,
                                const ImageDescription& d, const AmendOptionValues& v) {
  const format::Header& h = *d.header;
  if (h.incompatible_features & format::kIncompatCorrupt) {
    return absl::FailedPreconditionError("Image is corrupt; cannot be opened read/write");
  }
  if (v.backing_file || v.backing_fmt) {
    const std::optional<std::string> current_file =
        h.backing_file.empty() ? std::nullopt : std::optional<std::string>(h.backing_file);
    if (v.backing_file != current_file || v.backing_fmt != h.backing_format) {
      return absl::InvalidArgumentError(
          "Cannot amend the backing file (use 'qcow2-img rebase' instead)");
    }
  }
  if (v.data_file && !h.has_data_file()) {
    return absl::InvalidArgumentError(
        "data-file can only be set for images that use an external data file");
  }
  if (v.data_file_raw.value_or(false) && !(h.autoclear_features & format::kAutoclearDataFileRaw)) {
    return absl::InvalidArgumentError("data-file-raw cannot be set on existing images");
  }
  const uint32_t version = v.version.value_or(h.version);
  if (v.size_bytes && *v.size_bytes != h.size_bytes) {
    // qemu-img resizes between a version or width change and a downgrade; a
    // resize refused then would leave the image half amended. The resize's
    // own refusals all come before it changes anything.
    if (version != h.version || v.refcount_order.value_or(h.refcount_order) != h.refcount_order) {
      return absl::UnimplementedError(
          "amending size together with compat or refcount_bits is not supported by qcow2-img "
          "(amend them one after the other)");
    }
    if (*v.size_bytes % 512 != 0) {
      return absl::InvalidArgumentError("The new size must be a multiple of 512");
    }
    UQ_RETURN_IF_ERROR(RefuseResizeWithBitmaps(h));
  }
  if (version > h.version) {
    // Version 3 requires each snapshot's 64-bit VM state size and disk size.
    for (const format::Snapshot& s : d.snapshots) {
      if (s.extra_data.size() < 16) {
        return absl::UnimplementedError(
            "upgrading an image whose snapshots lack the version 3 extra data is not supported "
            "by qcow2-img");
      }
    }
  }
  if (v.lazy_refcounts.value_or(false) && version < 3) {
    return absl::InvalidArgumentError(
        "Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 "
        "or greater)");
  }
  const uint32_t order = v.refcount_order.value_or(h.refcount_order);
  if (order != h.refcount_order && order != 4 && version < 3) {
    return absl::InvalidArgumentError(
        "Refcount widths other than 16 bits require compatibility level 1.1 or above (use "
        "compat=1.1 or greater)");
  }
  if (version < h.version) return CheckDowngrade(loop, path, d, order);
  return false;
}

// The header after the amend.
format::Header Amended(format::Header h, const AmendOptionValues& v) {
  const uint32_t version = v.version.value_or(h.version);
  if (v.lazy_refcounts) {
    h.compatible_features = *v.lazy_refcounts
                                ? h.compatible_features | format::kCompatLazyRefcounts
                                : h.compatible_features & ~format::kCompatLazyRefcounts;
  }
  if (v.data_file) {
    h.data_file = v.data_file->empty() ? std::nullopt : v.data_file;
  }
  if (v.data_file_raw == false) h.autoclear_features &= ~format::kAutoclearDataFileRaw;
  if (version < h.version) {
    // As qcow2_downgrade: compatible and autoclear bits may be dropped, the
    // dirty bit is clear by now, and a zstd image without compressed
    // clusters becomes zlib.
    h.compatible_features = 0;
    h.autoclear_features = 0;
    h.incompatible_features &= ~format::kIncompatCompression;
    h.compression_type = format::CompressionType::kZlib;
  }
  h.version = version;
  return h;
}

// The first cluster re-encoded from `h`, written once and synced.
absl::Status WriteHeader(const PosixFile& file, const format::Header& h) {
  std::vector<std::byte> cluster(h.cluster_size());
  UQ_RETURN_IF_ERROR(format::EncodeHeader(h, cluster));
  UQ_RETURN_IF_ERROR(file.WriteAt(0, cluster));
  return file.Sync();
}

// Zero clusters are rewritten in place, trusting the L2 entries: only an
// image that checks clean is (a preallocated zero cluster that is really
// metadata would be overwritten with zeros).
absl::Status CheckClean(io::EventLoop& loop, const std::string& path) {
  UQ_ASSIGN_OR_RETURN(std::unique_ptr<io::UringFile> file,
                      io::UringFile::Open(&loop, path, io::OpenFlags{}));
  absl::StatusOr<engine::CheckResult> r = RunOnLoop(loop, engine::CheckImage(*file));
  if (!r.ok())
    return absl::Status(r.status().code(), absl::StrCat("Check failed: ", r.status().message()));
  if (r->corruptions > 0 || r->check_errors > 0) {
    return absl::FailedPreconditionError(
        "the image has corruptions; repair it first (qcow2-img check -r all)");
  }
  return absl::OkStatus();
}

// size=: the engine's resize (grow or shrink; the image lock is the
// caller's), as qemu-img amend truncates through the qcow2 driver.
absl::Status ResizeThroughEngine(io::EventLoop& loop, const std::string& path, uint64_t size_bytes,
                                 bool allow_devices) {
  UQ_ASSIGN_OR_RETURN(std::unique_ptr<io::UringFile> file,
                      io::UringFile::Open(&loop, path, io::OpenFlags{}));
  EngineOpenOptions open;
  open.format = engine::ImageFormat::kQcow2;
  open.allow_devices = allow_devices;
  UQ_ASSIGN_OR_RETURN(std::unique_ptr<engine::Device> image,
                      OpenDeviceOnFile(loop, path, std::move(file), open));
  absl::Status s = RunOnLoop(loop, image->Resize(size_bytes, engine::GrowPreallocation::kOff));
  absl::Status closed = CloseDevice(loop, *image);
  return s.ok() ? closed : s;
}

absl::Status Amend(io::EventLoop& loop, const AmendArgs& a, const AmendOptionValues& v,
                   LockedImage& locked) {
  UQ_ASSIGN_OR_RETURN(ImageDescription d, DescribeImage(a.file, "qcow2", LockMode::kNone));
  UQ_ASSIGN_OR_RETURN(const bool expand_zeros, CheckAmend(loop, a.file, d, v));
  if (d.header->incompatible_features & format::kIncompatDirty) {
    EngineOpenOptions open;
    open.format = engine::ImageFormat::kQcow2;
    open.allow_devices = a.allow_devices;
    UQ_ASSIGN_OR_RETURN(std::unique_ptr<engine::Device> image,
                        OpenDeviceOnFile(loop, a.file, std::move(locked.file), open));
    UQ_RETURN_IF_ERROR(CloseDevice(loop, *image));
  }
  UQ_ASSIGN_OR_RETURN(format::Header h, ReadQcow2Header(locked.header));
  if (h.incompatible_features & format::kIncompatDirty) {
    return absl::InternalError("Failed to make the image clean");
  }
  if (v.size_bytes && *v.size_bytes != h.size_bytes) {
    UQ_RETURN_IF_ERROR(ResizeThroughEngine(loop, a.file, *v.size_bytes, a.allow_devices));
    UQ_ASSIGN_OR_RETURN(h, ReadQcow2Header(locked.header));
  }
  if (v.refcount_order && *v.refcount_order != h.refcount_order) {
    // As QEMU: an upgrade first (the width change needs v3), then the width.
    if (h.version < 3) {
      UQ_RETURN_IF_ERROR(WriteHeader(locked.header, Amended(h, v)));
      UQ_ASSIGN_OR_RETURN(h, ReadQcow2Header(locked.header));
    }
    UQ_ASSIGN_OR_RETURN(std::unique_ptr<io::UringFile> file,
                        io::UringFile::Open(&loop, a.file, io::OpenFlags{}));
    UQ_RETURN_IF_ERROR(RunOnLoop(loop, engine::ChangeRefcountOrder(*file, h, *v.refcount_order)));
    UQ_ASSIGN_OR_RETURN(h, ReadQcow2Header(locked.header));
  }
  if (expand_zeros) {
    UQ_RETURN_IF_ERROR(CheckClean(loop, a.file));
    UQ_ASSIGN_OR_RETURN(std::unique_ptr<io::UringFile> file,
                        io::UringFile::Open(&loop, a.file, io::OpenFlags{}));
    UQ_RETURN_IF_ERROR(RunOnLoop(loop, engine::ExpandZeroClusters(*file, h, d.snapshots)));
  }
  // Written only if it changes: an amend that restates the current values
  // leaves the file as it was, as qemu-img does.
  std::vector<std::byte> cluster(h.cluster_size());
  UQ_RETURN_IF_ERROR(format::EncodeHeader(Amended(h, v), cluster));
  UQ_ASSIGN_OR_RETURN(std::vector<std::byte> current, locked.header.ReadAt(0, cluster.size()));
  if (current == cluster) return absl::OkStatus();
  UQ_RETURN_IF_ERROR(locked.header.WriteAt(0, cluster));
  return locked.header.Sync();
}

int RunAmend(const common::ParsedArgs& parsed) {
  absl::StatusOr<AmendArgs> args = ParseArgs(parsed);
  if (!args.ok()) return Fail("amend", args.status());
  if (args->help) {
    std::fputs(kOptionHelp, stdout);
    return 0;
  }
  absl::StatusOr<AmendOptionValues> values = ParseOptionValues(args->options);
  if (!values.ok()) return Fail(args->file, values.status());
  absl::StatusOr<std::unique_ptr<io::EventLoop>> loop = io::EventLoop::Create(32);
  if (!loop.ok()) return ReportError(loop.status());
  absl::StatusOr<LockedImage> locked = OpenLockedImage(**loop, args->file, args->format);
  if (!locked.ok()) return ReportError(locked.status());
  if (!locked->qcow2) {
    return Fail(args->file, "Format driver 'raw' does not support option amendment");
  }
  Progress progress(args->progress);
  progress.Update(0);
  if (absl::Status s = Amend(**loop, *args, *values, *locked); !s.ok()) {
    return Fail(args->file, s);
  }
  progress.Finish();
  return 0;
}

}  // namespace

const Command kAmendCommand = {
    "amend",
    RunAmend,
    "amend [-f FMT] -o OPTIONS [-p] [-q] [--allow-devices] FILE",
    "Changes options of an existing qcow2 image as qemu-img amend does. Supported: compat=0.10 "
    "or compat=1.1 (v2 <-> v3), lazy_refcounts=on|off (v3 only; turning it off on an image that "
    "was not closed cleanly repairs its refcounts first), refcount_bits=1|2|4|8|16|32|64 (v3 "
    "only: new refcount structures are written past the end of the file, flushed, and switched "
    "to with one header write; the old ones become free space), and backing_file / backing_fmt, "
    "which, "
    "as in qemu-img 7.2, may only restate the current values (use rebase to change them). A "
    "downgrade is refused where qemu-img refuses it (refcount_bits other than 16, an external "
    "data file, extended L2 or other incompatible features, snapshots of another size, zstd "
    "with compressed clusters) and, unlike qemu-img, for images with persistent bitmaps, images "
    "holding plain zero clusters over a backing file, and images that do not check clean when "
    "zero clusters must be rewritten. Zero clusters become unallocated (plain ones) or hold "
    "written zeros (preallocated ones), as in qemu-img. data_file=NAME renames an existing "
    "external data file; data_file_raw may be turned off, or restated on. size=SIZE grows or "
    "shrinks the disk as resize does (a smaller size needs no extra option, as in qemu-img "
    "amend; refused as by resize). Not supported (refused before any change): encrypt.*, and "
    "size together with compat or refcount_bits changes (amend them one after the other). A "
    "refused amend leaves FILE unchanged.",
    kAmendOptions,
};

}  // namespace uq::tools
