#include "tools/backing_header.h"

#include "absl/strings/str_cat.h"
#include "format/status_macros.h"

namespace uq::tools {

namespace {
// QEMU's limit on a backing file name (qcow2_change_backing_file).
constexpr size_t kMaxBackingNameBytes = 1023;
}  // namespace

absl::StatusOr<BackingHeader> HeaderWithBacking(const PosixFile& file, const std::string& name,
                                                const std::optional<std::string>& format) {
  BackingHeader out;
  UQ_ASSIGN_OR_RETURN(out.header, ReadQcow2Header(file));
  const std::string shown = name.empty() ? "(null)" : name;
  if (name.size() > kMaxBackingNameBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("Could not change the backing file to '", shown, "': Invalid argument"));
  }
  out.header.backing_file = name;
  out.header.backing_format = name.empty() ? std::nullopt : format;
  out.cluster.resize(out.header.cluster_size());
  if (!format::EncodeHeader(out.header, out.cluster).ok()) {
    return absl::ResourceExhaustedError(absl::StrCat("Could not change the backing file to '",
                                                     shown, "': No space left in the file header"));
  }
  return out;
}

absl::Status WriteBackingHeader(const PosixFile& file, const std::string& name,
                                const std::optional<std::string>& format) {
  UQ_ASSIGN_OR_RETURN(BackingHeader h, HeaderWithBacking(file, name, format));
  absl::Status s = file.WriteAt(0, h.cluster);
  if (s.ok()) s = file.Sync();
  if (!s.ok()) {
    return absl::Status(
        s.code(), absl::StrCat("Could not change the backing file to '", name, "': ", s.message()));
  }
  return absl::OkStatus();
}

}  // namespace uq::tools
