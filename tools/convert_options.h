// Option values of qcow2-img convert, parsed with qemu-img convert's meaning:
// the target's creation options (-o), cache modes (-t/-T), the sparse size
// (-S) and the rate limit (-r).
//
// Thread-safety: plain functions.
#ifndef UQ_TOOLS_CONVERT_OPTIONS_H_
#define UQ_TOOLS_CONVERT_OPTIONS_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "format/create.h"
#include "src/engine/image.h"

namespace uq::tools {

// -o preallocation=: metadata (qcow2 only) allocates the L2 tables and
// clusters; falloc also reserves the data on the host (fallocate), full
// writes zeros over it.
enum class TargetPreallocation { kOff, kMetadata, kFalloc, kFull };

// Applies one "-o" string ("key=value,key=value") to `options` and
// `prealloc`. A raw target (`raw`) takes only preallocation (off, falloc,
// full), as qemu-img's raw driver.
absl::Status ApplyCreateOptions(absl::string_view text, bool raw, format::CreateOptions& options,
                                TargetPreallocation& prealloc);

// qemu-img's cache modes that convert serves: none (O_DIRECT, flushed at the
// end), writeback (flushed at the end) and unsafe (never flushed: the
// default for the target, as qemu-img convert's; for the source, which is
// only read, it is the same as writeback).
struct CacheMode {
  bool direct = false;
  bool no_flush = false;
};
absl::StatusOr<CacheMode> ParseCacheMode(absl::string_view mode);

// "qcow2" / "raw", or "" for kAuto.
std::string FormatName(engine::ImageFormat format);

// -S: a byte count that is a multiple of 512 up to 16 MiB (qemu-img's
// MAX_BUF_SECTORS), returned in 512-byte sectors. 0 disables sparse
// detection (the target is fully allocated).
absl::StatusOr<uint32_t> ParseSparseSectors(absl::string_view text);

// -r: bytes per second, with qemu's size suffixes; 0 means no limit.
absl::StatusOr<uint64_t> ParseRateLimit(absl::string_view text);

}  // namespace uq::tools

#endif  // UQ_TOOLS_CONVERT_OPTIONS_H_
