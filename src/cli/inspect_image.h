// Inspecting an image without attaching it: its partition table and file
// systems, read through the engine (qcow2 with its backing chain, or raw).
#ifndef UQ_SRC_CLI_INSPECT_IMAGE_H_
#define UQ_SRC_CLI_INSPECT_IMAGE_H_

#include <string>

#include "absl/status/statusor.h"
#include "src/cli/inspect.h"
#include "src/cli/options.h"

namespace uq::cli {

// Opens spec.image read-only (a shared lock: an image attached writable is
// refused), reads its layout and closes it. Errors are one line naming the
// image.
absl::StatusOr<DiskLayout> InspectImage(ImageSpec spec);

// `partitions`: the layout of cmd.spec.image as text or JSON (LayoutJson,
// with the image's path as sfdisk's "device").
absl::StatusOr<std::string> PartitionsOutput(const Command& cmd);

}  // namespace uq::cli

#endif  // UQ_SRC_CLI_INSPECT_IMAGE_H_
