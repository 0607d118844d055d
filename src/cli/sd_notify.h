// Service-manager notification (systemd's Type=notify), written by hand: the
// protocol is one datagram of newline-separated VAR=VALUE assignments
// ("READY=1", "STATUS=...", "STOPPING=1") sent to the AF_UNIX socket that
// $NOTIFY_SOCKET names, either a file system path ("/run/...") or an abstract
// socket name ("@name": the '@' stands for the leading NUL byte).
//
// Thread-safety: reads the environment; call from one thread.
#ifndef UQ_SRC_CLI_SD_NOTIFY_H_
#define UQ_SRC_CLI_SD_NOTIFY_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace uq::cli {

// Sends `state` as one datagram to `socket_name`. Errors (a name that is not a
// path or "@name", too long for sockaddr_un, a failed send) are one line.
absl::Status SendNotify(absl::string_view socket_name, absl::string_view state);

// SendNotify to $NOTIFY_SOCKET; does nothing and returns OK when the variable
// is unset or empty (not started by a service manager).
absl::Status NotifyServiceManager(absl::string_view state);

}  // namespace uq::cli

#endif  // UQ_SRC_CLI_SD_NOTIFY_H_
