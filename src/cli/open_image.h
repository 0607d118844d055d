// Opening the image an attach serves: one engine state shared by every queue.
//
// OpenQueueBackends opens the image (and its backing chain and data file)
// once, with one event loop per queue: each file is opened on the first loop
// and cloned onto the others (io::PerLoopFile: each queue thread its own
// descriptor and ring), the engine is opened once over them, and every queue
// gets a handle to it (engine::ShareDevice). Nothing is per queue but the
// loop and the descriptors.
//
// --cache none opens every file with O_DIRECT and tells the engine to align
// its I/O; where the file system refuses O_DIRECT (tmpfs) `note` gets one
// line saying so and the files are buffered (writeback).
#ifndef UQ_SRC_CLI_OPEN_IMAGE_H_
#define UQ_SRC_CLI_OPEN_IMAGE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "src/cli/options.h"
#include "src/ublk/server.h"

namespace uq::cli {

// Errors are one line naming the image. REQUIRES: queues >= 1.
absl::StatusOr<std::vector<ublk::QueueBackend>> OpenQueueBackends(const ImageSpec& spec,
                                                                  uint16_t queues,
                                                                  std::string* note);

}  // namespace uq::cli

#endif  // UQ_SRC_CLI_OPEN_IMAGE_H_
