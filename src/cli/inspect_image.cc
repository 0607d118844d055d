#include "src/cli/inspect_image.h"

#include <sys/uio.h>

#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "src/cli/open_image.h"
#include "src/io/run_sync.h"

namespace uq::cli {

absl::StatusOr<DiskLayout> InspectImage(ImageSpec spec) {
  spec.read_only = true;
  // One queue's worth: a loop and the engine on it. The note (O_DIRECT
  // refused, buffered instead) does not matter to a few small reads.
  std::string note;
  absl::StatusOr<std::vector<ublk::QueueBackend>> backends = OpenQueueBackends(spec, 1, &note);
  if (!backends.ok()) return backends.status();
  io::EventLoop* loop = (*backends)[0].loop.get();
  engine::Device* device = (*backends)[0].device.get();
  DiskReader disk;
  disk.size_bytes = device->size_bytes();
  disk.read = [&](uint64_t offset_bytes, std::span<uint8_t> out) -> absl::Status {
    if (!disk.Contains(offset_bytes, out.size())) {
      return absl::OutOfRangeError(absl::StrCat("read at ", offset_bytes, " beyond the disk"));
    }
    const iovec iov{out.data(), out.size()};
    int r = io::RunSync(loop, device->Read(offset_bytes, std::span<const iovec>(&iov, 1)));
    if (r < 0) {
      return absl::DataLossError(absl::StrCat("read of ", out.size(), " bytes at ", offset_bytes,
                                              ": ", std::strerror(-r)));
    }
    return absl::OkStatus();
  };
  absl::StatusOr<DiskLayout> layout = InspectDisk(disk);
  absl::Status closed = io::RunSync(loop, device->Close());
  if (!layout.ok()) {
    return absl::Status(layout.status().code(),
                        absl::StrCat(spec.image, ": ", layout.status().message()));
  }
  if (!closed.ok()) return closed;
  return layout;
}

absl::StatusOr<std::string> PartitionsOutput(const Command& cmd) {
  absl::StatusOr<DiskLayout> layout = InspectImage(cmd.spec);
  if (!layout.ok()) return layout.status();
  if (cmd.json) {
    return absl::StrCat(LayoutJson(*layout, cmd.spec.image).Serialize(common::JsonLayout::kLine),
                        "\n");
  }
  return LayoutText(*layout, cmd.spec.image);
}

}  // namespace uq::cli
