// Serving an image as a ublk device: attach and recover, in the foreground
// (the process is the server until it is stopped) or as a daemon.
#ifndef UQ_SRC_CLI_SERVE_H_
#define UQ_SRC_CLI_SERVE_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "src/cli/options.h"

namespace uq::cli {

// Serves cmd's image (attach; recover: takes over device cmd.dev_id) in this
// process until SIGTERM, SIGINT or SIGHUP or until the device stops, then
// detaches. Prints the device (and tells a service manager) once it is live.
// Returns the exit status.
int ServeInForeground(const Command& cmd, bool recover);

// Forks; the child becomes the server (new session, no terminal once the
// device is live). Returns the device's id once the child reports it live.
absl::StatusOr<uint32_t> StartDaemon(const Command& cmd, bool recover);

}  // namespace uq::cli

#endif  // UQ_SRC_CLI_SERVE_H_
