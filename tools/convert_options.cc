#include "tools/convert_options.h"

#include <bit>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "format/status_macros.h"
#include "tools/engine_util.h"

namespace uq::tools {

namespace {

// qemu-img convert's largest -S: MAX_BUF_SECTORS sectors of 512 bytes.
constexpr uint64_t kMaxSparseBytes = uint64_t{32768} * 512;

// Parses "on"/"off" (and QEMU's other boolean spellings).
absl::StatusOr<bool> ParseOnOff(absl::string_view key, absl::string_view value) {
  if (value == "on" || value == "true" || value == "yes") return true;
  if (value == "off" || value == "false" || value == "no") return false;
  return absl::InvalidArgumentError(
      absl::StrCat("invalid value '", value, "' for option ", key, " (expected on or off)"));
}

absl::StatusOr<TargetPreallocation> ParsePreallocation(absl::string_view value, bool raw) {
  if (value == "off") return TargetPreallocation::kOff;
  if (value == "metadata" && !raw) return TargetPreallocation::kMetadata;
  if (value == "falloc") return TargetPreallocation::kFalloc;
  if (value == "full") return TargetPreallocation::kFull;
  return absl::InvalidArgumentError(
      absl::StrCat("unsupported preallocation mode '", value, "'",
                   raw ? " for -O raw (off, falloc or full)" : " (off, metadata, falloc or full)"));
}

}  // namespace

// Applies one "-o" string ("key=value,key=value") to `options`.
absl::Status ApplyCreateOptions(absl::string_view text, bool raw, format::CreateOptions& options,
                                TargetPreallocation& prealloc) {
  for (absl::string_view item : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    size_t eq = item.find('=');
    if (eq == absl::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("invalid option '", item, "' (expected key=value)"));
    }
    absl::string_view key = item.substr(0, eq);
    absl::string_view value = item.substr(eq + 1);
    if (key == "preallocation") {
      UQ_ASSIGN_OR_RETURN(prealloc, ParsePreallocation(value, raw));
      options.preallocation = prealloc == TargetPreallocation::kOff
                                  ? format::Preallocation::kOff
                                  : format::Preallocation::kMetadata;
    } else if (raw) {
      return absl::InvalidArgumentError(absl::StrCat("unsupported create option '", key,
                                                     "' for -O raw (supported: preallocation)"));
    } else if (key == "cluster_size") {
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
          "lazy_refcounts, preallocation)"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<CacheMode> ParseCacheMode(absl::string_view mode) {
  if (mode == "none") return CacheMode{.direct = true};
  if (mode == "writeback") return CacheMode{};
  if (mode == "unsafe") return CacheMode{.no_flush = true};
  return absl::InvalidArgumentError(
      absl::StrCat("unsupported cache mode '", mode, "' (supported: none, writeback, unsafe)"));
}

std::string FormatName(engine::ImageFormat format) {
  switch (format) {
    case engine::ImageFormat::kQcow2:
      return "qcow2";
    case engine::ImageFormat::kRaw:
      return "raw";
    case engine::ImageFormat::kAuto:
      break;
  }
  return "";
}

absl::StatusOr<uint32_t> ParseSparseSectors(absl::string_view text) {
  auto bytes = ParseByteCount(text, "sparse size");
  if (!bytes.ok() || *bytes % 512 != 0 || *bytes > kMaxSparseBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "invalid -S '", text, "': a multiple of 512 up to 16M, or 0 to allocate the whole target"));
  }
  return static_cast<uint32_t>(*bytes / 512);
}

absl::StatusOr<uint64_t> ParseRateLimit(absl::string_view text) {
  auto rate = ParseByteCount(text, "rate limit");
  if (!rate.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid -r '", text, "': bytes per second, with k, M, G, T, P or E"));
  }
  return *rate;
}

}  // namespace uq::tools
