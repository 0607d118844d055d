// The per-device state file an attached server writes, so that `recover`,
// `list` and `detach` know which image a device serves and how.
//
// Location: $UBLK_QCOW2_STATE_DIR, else for root /run/ublk-qcow2 (falling
// back to /tmp/ublk-qcow2 where /run is not writable), for another user
// $XDG_RUNTIME_DIR/ublk-qcow2 or /tmp/ublk-qcow2-UID (0700, theirs); one
// "N.json" per device id,
// written atomically (temp file + rename), plus the daemon's log "N.log".
// Contents: one flat JSON object (strings, integers, booleans).
#ifndef UQ_SRC_CLI_STATE_H_
#define UQ_SRC_CLI_STATE_H_

#include <sys/types.h>

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "src/cli/options.h"

namespace uq::cli {

struct DeviceState {
  uint32_t dev_id = 0;
  pid_t pid = 0;
  ImageSpec spec;
};

// The state directory (created if missing).
std::string StateDir();
std::string StatePath(uint32_t dev_id);
std::string LogPath(uint32_t dev_id);

absl::Status WriteState(const DeviceState& state);
// NotFound when the device has no state file.
absl::StatusOr<DeviceState> ReadState(uint32_t dev_id);
void RemoveState(uint32_t dev_id);

// The state file's contents: one line of JSON (src/common/json.h, kLine
// layout, so any byte string in a path round-trips), exposed for tests.
std::string EncodeState(const DeviceState& state);
absl::StatusOr<DeviceState> DecodeState(absl::string_view text);

}  // namespace uq::cli

#endif  // UQ_SRC_CLI_STATE_H_
