#include "src/engine/named_file.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>

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

}  // namespace uq::engine
