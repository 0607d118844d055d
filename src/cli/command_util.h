// Helpers shared by the ublk-qcow2 commands (src/cli/commands.cc and the
// files it dispatches to): the one-line error and warning, device paths,
// and whether a server process is still there.
#ifndef UQ_SRC_CLI_COMMAND_UTIL_H_
#define UQ_SRC_CLI_COMMAND_UTIL_H_

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace uq::cli {

using Clock = std::chrono::steady_clock;

// Prints "ublk-qcow2: <problem>" and returns the exit status 1.
int Fail(const absl::Status& st);
// A problem that does not stop the command: "ublk-qcow2: warning: <problem>".
void Warn(const absl::Status& st);
// /dev/ublkbN.
std::string BlockDevPath(uint32_t id);
// Alive and not a zombie (a reparented daemon may linger unreaped).
bool ProcessAlive(pid_t pid);

}  // namespace uq::cli

#endif  // UQ_SRC_CLI_COMMAND_UTIL_H_
