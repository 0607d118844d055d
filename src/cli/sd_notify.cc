#include "src/cli/sd_notify.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace uq::cli {

absl::Status SendNotify(absl::string_view socket_name, absl::string_view state) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_name.size() < 2 || (socket_name[0] != '/' && socket_name[0] != '@')) {
    return absl::InvalidArgumentError(
        absl::StrCat("NOTIFY_SOCKET '", socket_name, "' is neither a path nor an @abstract name"));
  }
  // A path needs its terminating NUL inside sun_path; an abstract name does
  // not (its length is given by the address length instead).
  const bool abstract = socket_name[0] == '@';
  if (socket_name.size() + (abstract ? 0 : 1) > sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "NOTIFY_SOCKET '", socket_name, "' is longer than ", sizeof(addr.sun_path), " bytes"));
  }
  std::memcpy(addr.sun_path, socket_name.data(), socket_name.size());
  if (abstract) addr.sun_path[0] = '\0';
  const socklen_t len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) +
                                               socket_name.size() + (abstract ? 0 : 1));

  int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  ssize_t n;
  do {
    n = ::sendto(fd, state.data(), state.size(), MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&addr),
                 len);
  } while (n < 0 && errno == EINTR);
  const int err = errno;
  ::close(fd);
  if (n < 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot notify ", socket_name, ": ", std::strerror(err)));
  }
  if (static_cast<size_t>(n) != state.size()) {
    return absl::UnavailableError(absl::StrCat("cannot notify ", socket_name, ": short send"));
  }
  return absl::OkStatus();
}

absl::Status NotifyServiceManager(absl::string_view state) {
  const char* name = std::getenv("NOTIFY_SOCKET");
  if (name == nullptr || *name == '\0') return absl::OkStatus();
  return SendNotify(name, state);
}

}  // namespace uq::cli
