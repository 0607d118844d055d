// Devices already attached: list and detach (ublk-qcow2 list, detach).
#ifndef UQ_SRC_CLI_DEVICE_COMMANDS_H_
#define UQ_SRC_CLI_DEVICE_COMMANDS_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "src/cli/options.h"
#include "src/ublk/control.h"

namespace uq::cli {

// The ids of the ublk devices on this system, sorted.
std::vector<uint32_t> ListDeviceIds();
// Detaches device `id`: its server (if alive) flushes, closes the image and
// deletes the device; a device without a server is stopped and deleted.
absl::Status Detach(ublk::Control& control, uint32_t id);

int DoDetach(const Command& cmd);
int DoList(const Command& cmd);

}  // namespace uq::cli

#endif  // UQ_SRC_CLI_DEVICE_COMMANDS_H_
