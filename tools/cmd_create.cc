// qcow2-img create: a new qcow2 (or raw) image, laid out by
// format::BuildImageLayout and written with plain pwrite.
#include <fcntl.h>

#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "format/create.h"
#include "format/status_macros.h"
#include "tools/commands.h"
#include "tools/util.h"

namespace uq::tools {
namespace {

struct CreateArgs {
  std::string format = "raw";  // qemu-img's default
  std::vector<std::string> option_strings;
  std::optional<std::string> backing_file;
  std::optional<std::string> backing_format;
  bool unsafe = false;
  bool quiet = false;
  std::string file;
  std::optional<std::string> size;
};

// Splits "a=1,b=2" at commas; ",," is a literal comma (QEMU's escaping).
std::vector<std::string> SplitOptions(const std::string& s) {
  std::vector<std::string> out(1);
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == ',') {
      if (i + 1 < s.size() && s[i + 1] == ',') {
        out.back() += ',';
        ++i;
      } else {
        out.emplace_back();
      }
    } else {
      out.back() += s[i];
    }
  }
  return out;
}

absl::StatusOr<bool> ParseOnOff(const std::string& key, const std::string& value) {
  if (value == "on" || value == "true") return true;
  if (value == "off" || value == "false") return false;
  return absl::InvalidArgumentError(
      absl::StrCat("option ", key, "=", value, ": expected 'on' or 'off'"));
}

absl::StatusOr<uint32_t> Log2Exact(uint64_t v) {
  if (v == 0 || (v & (v - 1)) != 0) return absl::InvalidArgumentError("not a power of two");
  uint32_t bits = 0;
  while ((uint64_t{1} << bits) != v) ++bits;
  return bits;
}

// Applies -o options to `o`; also fills backing file/format and size when
// given as options.
absl::Status ApplyOptions(CreateArgs& args, format::CreateOptions& o, bool& compat_given) {
  for (const std::string& group : args.option_strings) {
    for (const std::string& item : SplitOptions(group)) {
      if (item.empty()) continue;
      const size_t eq = item.find('=');
      if (eq == std::string::npos) {
        return absl::InvalidArgumentError(
            absl::StrCat("option '", item, "' needs a value (key=value)"));
      }
      const std::string key = item.substr(0, eq);
      const std::string value = item.substr(eq + 1);
      if (key == "cluster_size") {
        absl::StatusOr<uint64_t> bytes = ParseSize(value);
        absl::StatusOr<uint32_t> bits = bytes.ok() ? Log2Exact(*bytes) : bytes.status();
        if (!bits.ok() || *bits < format::kMinClusterBits || *bits > format::kMaxClusterBits) {
          return absl::InvalidArgumentError(
              absl::StrCat("cluster_size ", value, " must be a power of two between 512 and 2M"));
        }
        o.cluster_bits = *bits;
      } else if (key == "compat") {
        if (value == "0.10" || value == "v2") {
          o.version = 2;
        } else if (value == "1.1" || value == "v3") {
          o.version = 3;
        } else {
          return absl::InvalidArgumentError(
              absl::StrCat("compat ", value, " is not supported (0.10, v2, 1.1 or v3)"));
        }
        compat_given = true;
      } else if (key == "refcount_bits") {
        absl::StatusOr<uint64_t> bits = ParseSize(value);
        absl::StatusOr<uint32_t> order = bits.ok() ? Log2Exact(*bits) : bits.status();
        if (!order.ok() || *order > 6) {
          return absl::InvalidArgumentError(
              absl::StrCat("refcount_bits ", value, " must be a power of two up to 64"));
        }
        o.refcount_order = *order;
      } else if (key == "extended_l2") {
        UQ_ASSIGN_OR_RETURN(o.extended_l2, ParseOnOff(key, value));
      } else if (key == "lazy_refcounts") {
        UQ_ASSIGN_OR_RETURN(o.lazy_refcounts, ParseOnOff(key, value));
      } else if (key == "data_file_raw") {
        UQ_ASSIGN_OR_RETURN(o.data_file_raw, ParseOnOff(key, value));
      } else if (key == "compression_type") {
        if (value == "zlib") {
          o.compression_type = format::CompressionType::kZlib;
        } else if (value == "zstd") {
          o.compression_type = format::CompressionType::kZstd;
        } else {
          return absl::InvalidArgumentError(
              absl::StrCat("compression_type ", value, " is not supported (zlib or zstd)"));
        }
      } else if (key == "preallocation") {
        if (value == "off") {
          o.preallocation = format::Preallocation::kOff;
        } else if (value == "metadata") {
          o.preallocation = format::Preallocation::kMetadata;
        } else {
          return absl::InvalidArgumentError(
              absl::StrCat("preallocation ", value, " is not supported (off or metadata)"));
        }
      } else if (key == "data_file") {
        o.data_file = value;
      } else if (key == "backing_file") {
        args.backing_file = value;
      } else if (key == "backing_fmt") {
        args.backing_format = value;
      } else if (key == "size") {
        args.size = value;
      } else {
        return absl::InvalidArgumentError(absl::StrCat("invalid option '", key, "'"));
      }
    }
  }
  return absl::OkStatus();
}

constexpr common::OptionSpec kCreateOptions[] = {
    {'f', 'f', "format", "FMT", "image format, qcow2 or raw (default raw)"},
    {'o', 'o', "options", "OPTS",
     "comma-separated KEY=VALUE creation options (repeatable): cluster_size, compat, "
     "refcount_bits, extended_l2, lazy_refcounts, compression_type, preallocation "
     "(off|metadata), data_file, data_file_raw, backing_file, backing_fmt, size"},
    {'b', 'b', "backing", "BACKING",
     "backing file (relative names resolve against FILE's directory)"},
    {'F', 'F', "backing-format", "FMT", "format of the backing file (required with -b)"},
    {'u', 'u', "unsafe", "", "do not open the backing file (SIZE is then required)"},
    {'q', 'q', "quiet", "", "do not print the \"Formatting ...\" line"},
    kHelpOption,
};

// Errors come back as one line without the file name.
absl::StatusOr<CreateArgs> ParseArgs(const common::ParsedArgs& parsed) {
  CreateArgs args;
  for (const common::ParsedOption& o : parsed.options) {
    switch (o.id) {
      case 'f':
        args.format = o.value;
        break;
      case 'o':
        args.option_strings.push_back(o.value);
        break;
      case 'b':
        args.backing_file = o.value;
        break;
      case 'F':
        args.backing_format = o.value;
        break;
      case 'u':
        args.unsafe = true;
        break;
      case 'q':
        args.quiet = true;
        break;
    }
  }
  const std::vector<std::string>& positional = parsed.operands;
  if (positional.empty()) return absl::InvalidArgumentError("Expecting image file name");
  if (positional.size() > 2) {
    return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", positional[2], "'"));
  }
  args.file = positional[0];
  if (positional.size() == 2) args.size = positional[1];
  return args;
}

// Opens (creating) `path` for writing and takes the writer's lock before
// anything is truncated, so an image in use is left alone.
absl::StatusOr<PosixFile> OpenLockedForCreate(const std::string& path) {
  UQ_ASSIGN_OR_RETURN(PosixFile f, PosixFile::Open(path, O_RDWR | O_CREAT));
  UQ_RETURN_IF_ERROR(LockImageFile(f.fd(), LockMode::kExclusive));
  return f;
}

absl::Status CreateRaw(const CreateArgs& args, uint64_t size_bytes) {
  if (!args.option_strings.empty() || args.backing_file) {
    return absl::InvalidArgumentError("raw images take no -o options or backing file");
  }
  UQ_ASSIGN_OR_RETURN(PosixFile f, OpenLockedForCreate(args.file));
  UQ_RETURN_IF_ERROR(f.Truncate(0));
  UQ_RETURN_IF_ERROR(f.Truncate(size_bytes));
  if (!args.quiet) {
    std::printf("Formatting '%s', fmt=raw size=%llu\n", args.file.c_str(),
                static_cast<unsigned long long>(size_bytes));
  }
  return f.Sync();
}

std::string FormattingLine(const CreateArgs& args, const format::CreateOptions& o,
                           bool compat_given) {
  std::vector<std::string> parts = {absl::StrCat("Formatting '", args.file, "', fmt=qcow2"),
                                    absl::StrCat("cluster_size=", uint64_t{1} << o.cluster_bits),
                                    absl::StrCat("extended_l2=", o.extended_l2 ? "on" : "off")};
  if (o.preallocation == format::Preallocation::kMetadata) {
    parts.push_back("preallocation=metadata");
  }
  parts.push_back(absl::StrCat(
      "compression_type=", o.compression_type == format::CompressionType::kZstd ? "zstd" : "zlib"));
  parts.push_back(absl::StrCat("size=", o.size_bytes));
  if (!o.backing_file.empty()) {
    parts.push_back(absl::StrCat("backing_file=", o.backing_file));
    if (o.backing_format) parts.push_back(absl::StrCat("backing_fmt=", *o.backing_format));
  }
  if (!o.data_file.empty()) {
    parts.push_back(absl::StrCat("data_file=", o.data_file));
    parts.push_back(absl::StrCat("data_file_raw=", o.data_file_raw ? "on" : "off"));
  }
  if (compat_given) parts.push_back(absl::StrCat("compat=", o.version == 2 ? "0.10" : "1.1"));
  parts.push_back(absl::StrCat("lazy_refcounts=", o.lazy_refcounts ? "on" : "off"));
  parts.push_back(absl::StrCat("refcount_bits=", 1u << o.refcount_order));
  return absl::StrJoin(parts, " ");
}

absl::Status CreateQcow2(CreateArgs& args) {
  format::CreateOptions o;
  bool compat_given = false;
  UQ_RETURN_IF_ERROR(ApplyOptions(args, o, compat_given));
  std::optional<uint64_t> size_bytes;
  if (args.size) {
    UQ_ASSIGN_OR_RETURN(size_bytes, ParseSize(*args.size));
  }
  if (args.backing_file) {
    o.backing_file = *args.backing_file;
    if (!args.backing_format) {
      return absl::InvalidArgumentError("backing file specified without backing format (-F)");
    }
    o.backing_format = *args.backing_format;
    if (!args.unsafe) {
      const std::string path = ResolveRelative(args.file, o.backing_file);
      // qemu-img reads the backing file's size without locking it (it may be in use).
      absl::StatusOr<ImageDescription> backing =
          DescribeImage(path, *args.backing_format, LockMode::kNone);
      if (!backing.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "could not open backing file ", o.backing_file, ": ", backing.status().message()));
      }
      if (!size_bytes) size_bytes = backing->virtual_size_bytes;
    }
  }
  if (!size_bytes) return absl::InvalidArgumentError("image creation needs a size");
  o.size_bytes = *size_bytes;
  UQ_ASSIGN_OR_RETURN(format::ImageLayout layout, format::BuildImageLayout(o));

  if (!args.quiet) std::printf("%s\n", FormattingLine(args, o, compat_given).c_str());
  UQ_ASSIGN_OR_RETURN(PosixFile f, OpenLockedForCreate(args.file));
  UQ_RETURN_IF_ERROR(f.Truncate(0));
  for (const format::WriteRange& w : layout.writes) {
    UQ_RETURN_IF_ERROR(f.WriteAt(w.offset_bytes, w.data));
  }
  UQ_RETURN_IF_ERROR(f.Truncate(layout.file_size_bytes));
  UQ_RETURN_IF_ERROR(f.Sync());
  if (!o.data_file.empty()) {
    // The data file holds the guest data at guest offsets; QEMU sizes it to
    // the virtual size up front.
    const std::string path = ResolveRelative(args.file, o.data_file);
    absl::StatusOr<PosixFile> data = OpenLockedForCreate(path);
    if (!data.ok()) {
      return absl::Status(data.status().code(),
                          absl::StrCat("data file ", path, ": ", data.status().message()));
    }
    UQ_RETURN_IF_ERROR(data->Truncate(0));
    UQ_RETURN_IF_ERROR(data->Truncate(layout.header.size_bytes));
    UQ_RETURN_IF_ERROR(data->Sync());
  }
  return absl::OkStatus();
}

int RunCreate(const common::ParsedArgs& parsed) {
  absl::StatusOr<CreateArgs> args = ParseArgs(parsed);
  if (!args.ok()) return Fail("create", args.status());
  absl::Status status;
  if (args->format == "qcow2") {
    status = CreateQcow2(*args);
  } else if (args->format == "raw") {
    if (!args->size) {
      status = absl::InvalidArgumentError("image creation needs a size");
    } else {
      absl::StatusOr<uint64_t> size = ParseSize(*args->size);
      status = size.ok() ? CreateRaw(*args, *size) : size.status();
    }
  } else {
    status = absl::InvalidArgumentError(
        absl::StrCat("unknown format '", args->format, "' (qcow2 or raw)"));
  }
  if (!status.ok()) return Fail(args->file, status);
  return 0;
}

}  // namespace

const Command kCreateCommand = {
    "create",
    RunCreate,
    "create [-f qcow2|raw] [-o OPTIONS] [-b BACKING -F FMT] [-u] [-q] FILE [SIZE]",
    "Creates FILE, SIZE bytes (suffixes k, M, G, T, P, E) or the backing file's size.",
    kCreateOptions,
};

}  // namespace uq::tools
