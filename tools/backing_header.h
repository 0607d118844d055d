// Rewriting the backing file name and format in a qcow2 header, as QEMU's
// qcow2_change_backing_file does for qemu-img rebase: the first cluster is
// re-encoded (header, extensions, then the name) and written whole.
//
// Crash safety is the caller's: everything the new backing file relies on
// must be durable before the header changes (rebase closes the image, which
// flushes, before calling WriteBackingHeader). The write itself is one
// cluster, as QEMU's.
//
// Thread-safety: plain functions on a descriptor the caller owns and locks.
#ifndef UQ_TOOLS_BACKING_HEADER_H_
#define UQ_TOOLS_BACKING_HEADER_H_

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "format/header.h"
#include "tools/util.h"

namespace uq::tools {

// The header of `file` with its backing file set to `name` ("" = none) and
// its backing format to `format` (nullopt = none): `header` as decoded and
// `cluster` its first cluster as it would be written. Fails (changing
// nothing) when the name is too long or does not fit in the first cluster
// beside the header extensions, with qemu-img's wording.
struct BackingHeader {
  format::Header header;
  std::vector<std::byte> cluster;
};
absl::StatusOr<BackingHeader> HeaderWithBacking(const PosixFile& file, const std::string& name,
                                                const std::optional<std::string>& format);

// HeaderWithBacking, then writes the cluster and syncs the file.
absl::Status WriteBackingHeader(const PosixFile& file, const std::string& name,
                                const std::optional<std::string>& format);

}  // namespace uq::tools

#endif  // UQ_TOOLS_BACKING_HEADER_H_
