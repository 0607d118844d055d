#include "src/engine/named_file.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"

namespace uq::engine {
namespace {

const char* RoleName(NamedRole role) {
  return role == NamedRole::kBacking ? "backing file" : "data file";
}

const char* TypeName(mode_t mode) {
  if (S_ISCHR(mode)) return "character device";
  if (S_ISFIFO(mode)) return "FIFO";
  if (S_ISSOCK(mode)) return "socket";
  return "special file";
}

// realpath(3) as a string, or empty (errno set).
std::string RealPath(const std::string& path) {
  std::unique_ptr<char, decltype(&std::free)> real(::realpath(path.c_str(), nullptr), &std::free);
  return real ? std::string(real.get()) : std::string();
}

std::string DirName(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// Whether `file` (which exists) lies in the directory of the image that names
// it, both resolved: its real parent is the image directory's real path.
absl::Status CheckInImageDirectory(const NamedFile& file) {
  const std::string image_dir = RealPath(DirName(file.image_path));
  const std::string real = RealPath(file.path);
  if (image_dir.empty() || real.empty()) {
    return absl::Status(
        absl::ErrnoToStatusCode(errno),
        absl::StrCat("cannot resolve data file '", file.path, "': ", std::strerror(errno)));
  }
  if (DirName(real) == image_dir) return absl::OkStatus();
  const std::string resolved =
      real == file.path ? std::string() : absl::StrCat(" resolves to '", real, "',");
  return absl::PermissionDeniedError(absl::StrCat(
      "data file '", file.path, "' named by the image", resolved,
      " is outside the image's directory '", image_dir,
      "'; it is opened for writing only when named with --data-file PATH (or open the image "
      "read-only)"));
}

}  // namespace

absl::Status CheckNamedFile(const NamedFile& file, bool allow_devices) {
  struct stat st;
  if (::stat(file.path.c_str(), &st) != 0) return absl::OkStatus();
  if (S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat(RoleName(file.role), " '", file.path, "' named by the image is a directory"));
  }
  if (S_ISBLK(st.st_mode) && !allow_devices) {
    return absl::PermissionDeniedError(
        absl::StrCat(RoleName(file.role), " '", file.path,
                     "' named by the image is a block device, not a regular file; pass "
                     "--allow-devices to open it"));
  }
  if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
    return absl::PermissionDeniedError(absl::StrCat(
        RoleName(file.role), " '", file.path, "' named by the image is a ", TypeName(st.st_mode),
        ", not a regular file or block device, and is never opened (even with --allow-devices)"));
  }
  if (file.role == NamedRole::kDataFile && file.writable) return CheckInImageDirectory(file);
  return absl::OkStatus();
}

std::optional<FileId> IdentifyFile(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return std::nullopt;
  return FileId{static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino)};
}

absl::Status CheckNotInChain(const NamedFile& file, const std::vector<ChainImage>& chain) {
  const std::optional<FileId> id = IdentifyFile(file.path);
  if (!id) return absl::OkStatus();
  for (size_t i = 0; i < chain.size(); ++i) {
    const ChainImage& above = chain[i];
    if (above.id != *id) continue;
    const char* who = i + 1 == chain.size() ? "the image that names it"
                                            : "an image above it in the backing chain";
    const std::string same = above.path == file.path
                                 ? std::string(who)
                                 : absl::StrCat("the same file as '", above.path, "', ", who);
    const char* why = file.role == NamedRole::kBacking
                          ? "the backing chain loops"
                          : "guest data would overwrite the image's metadata";
    return absl::InvalidArgumentError(absl::StrCat(RoleName(file.role), " '", file.path,
                                                   "' named by '", file.image_path, "' is ", same,
                                                   ": ", why));
  }
  return absl::OkStatus();
}

absl::Status CheckProbedFollows(const format::Header& h, const std::string& overlay_path,
                                const std::string& backing_name) {
  if (h.backing_file.empty() && !h.has_data_file()) return absl::OkStatus();
  const std::string what = h.backing_file.empty()
                               ? std::string("an external data file")
                               : absl::StrCat("backing file '", h.backing_file, "'");
  return absl::FailedPreconditionError(absl::StrCat(
      "'", overlay_path, "' does not name this file's format and it looks like qcow2, so ", what,
      " it names is not followed; if it is a qcow2 image, name its format: "
      "qemu-img rebase -u -b '",
      backing_name, "' -F qcow2 '", overlay_path,
      "' (or recreate the overlay with backing_fmt=qcow2)"));
}

}  // namespace uq::engine
