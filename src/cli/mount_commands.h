// mount and unmount: attach an image and mount its file system (or the
// partition that holds one) in one step, and undo both.
#ifndef UQ_SRC_CLI_MOUNT_COMMANDS_H_
#define UQ_SRC_CLI_MOUNT_COMMANDS_H_

#include "src/cli/options.h"

namespace uq::cli {

int DoMount(const Command& cmd);
int DoUnmount(const Command& cmd);

}  // namespace uq::cli

#endif  // UQ_SRC_CLI_MOUNT_COMMANDS_H_
