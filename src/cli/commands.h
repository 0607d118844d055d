// The `ublk-qcow2` commands. Each returns the process exit status (0 or 1)
// and prints its own one-line error ("ublk-qcow2: <problem>").
#ifndef UQ_SRC_CLI_COMMANDS_H_
#define UQ_SRC_CLI_COMMANDS_H_

#include "src/cli/options.h"

namespace uq::cli {

int Main(int argc, char** argv);
int RunCommand(const Command& cmd);

}  // namespace uq::cli

#endif  // UQ_SRC_CLI_COMMANDS_H_
