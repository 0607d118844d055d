// qcow2-img snapshot: qemu-img snapshot for qcow2 images: list (-l), create
// (-c), apply (-a) and delete (-d) internal snapshots (src/engine/snapshot.h),
// with qemu-img's messages. The changing actions take the image's write lock
// and open it through the engine (dirty bit, ordering, overlap checks).
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "src/engine/qcow2_image.h"
#include "src/engine/snapshot.h"
#include "src/io/uring_file.h"
#include "tools/commands.h"
#include "tools/engine_util.h"
#include "tools/image_lock.h"
#include "tools/snapshot_list.h"
#include "tools/util.h"

namespace uq::tools {
namespace {

constexpr common::OptionSpec kSnapshotOptions[] = {
    {'l', 'l', "", "", "list the snapshots"},
    {'c', 'c', "", "NAME", "create a snapshot of the current disk named NAME"},
    {'a', 'a', "", "NAME", "revert the disk to the snapshot with id or name NAME"},
    {'d', 'd', "", "NAME", "delete the (first) snapshot named NAME"},
    kQuietOption,
    kForceShareOption,
    kAllowDevicesOption,
    kHelpOption,
};

enum class Action { kNone, kList, kCreate, kApply, kDelete };

struct SnapshotArgs {
  Action action = Action::kNone;
  std::string name;
  bool force_share = false;
  bool allow_devices = false;  // -c, -a, -d: the engine opens the backing chain
  std::string file;
};

absl::StatusOr<SnapshotArgs> ParseArgs(const common::ParsedArgs& parsed) {
  SnapshotArgs a;
  for (const common::ParsedOption& o : parsed.options) {
    Action act = Action::kNone;
    switch (o.id) {
      case 'l':
        act = Action::kList;
        break;
      case 'c':
        act = Action::kCreate;
        break;
      case 'a':
        act = Action::kApply;
        break;
      case 'd':
        act = Action::kDelete;
        break;
      default:
        continue;
    }
    // qemu-img takes one action, and the same one twice is a mix too.
    if (a.action != Action::kNone) {
      return absl::InvalidArgumentError("Cannot mix '-l', '-a', '-c', '-d'");
    }
    a.action = act;
    a.name = o.value;
  }
  a.force_share = parsed.Has('U');
  a.allow_devices = parsed.Has(kAllowDevicesId);
  if (parsed.operands.size() != 1) {
    return absl::InvalidArgumentError("Expecting one image file name");
  }
  a.file = parsed.operands[0];
  return a;
}

int List(const SnapshotArgs& a) {
  absl::StatusOr<LockMode> lock = LockModeFor(/*writable=*/false, a.force_share);
  if (!lock.ok()) return Fail(a.file, lock.status());
  absl::StatusOr<ImageDescription> d = DescribeImage(a.file, "", *lock);
  if (!d.ok()) return Fail(a.file, d.status());
  // qemu-img prints nothing for an image without snapshots (or a raw one).
  if (!d->snapshots.empty()) std::fputs(SnapshotListText(d->snapshots).c_str(), stdout);
  return 0;
}

// qemu-img's words for a failed action. A create reports an errno as
// "-95 (Operation not supported)".
std::string Failure(const SnapshotArgs& a, const absl::Status& s) {
  switch (a.action) {
    case Action::kCreate: {
      std::string problem(s.message());
      for (int e : {ENOTSUP, EINVAL, EFBIG}) {
        if (problem == std::strerror(e)) problem = absl::StrCat(-e, " (", problem, ")");
      }
      return absl::StrCat("Could not create snapshot '", a.name, "': ", problem);
    }
    case Action::kApply:
      return absl::StrCat("Could not apply snapshot '", a.name, "': ", s.message());
    default:
      return absl::StrCat("Could not delete snapshot '", a.name, "': ", s.message());
  }
}

// What qemu-img says of each action on a raw image.
absl::Status RawImageRefusal(Action action) {
  switch (action) {
    case Action::kCreate:
      return absl::UnimplementedError(std::strerror(ENOTSUP));
    case Action::kApply:
      return absl::UnimplementedError("Block driver does not support snapshots");
    default:
      return absl::NotFoundError("snapshot not found");
  }
}

absl::Status Change(io::EventLoop& loop, engine::Qcow2Image& image, const SnapshotArgs& a) {
  switch (a.action) {
    case Action::kCreate: {
      timespec now{};
      clock_gettime(CLOCK_REALTIME, &now);
      engine::NewSnapshot s;
      s.name = a.name;
      s.date_sec = static_cast<uint32_t>(now.tv_sec);
      // qemu-img takes the time in microseconds.
      s.date_nsec = static_cast<uint32_t>(now.tv_nsec / 1000 * 1000);
      return RunOnLoop(loop, engine::CreateSnapshot(image, s));
    }
    case Action::kApply:
      return RunOnLoop(loop, engine::RevertSnapshot(image, a.name));
    default:
      return RunOnLoop(loop, engine::DeleteSnapshot(image, a.name));
  }
}

int RunSnapshot(const common::ParsedArgs& parsed) {
  absl::StatusOr<SnapshotArgs> args = ParseArgs(parsed);
  if (!args.ok()) return Fail("snapshot", args.status());
  const SnapshotArgs& a = *args;
  if (a.action == Action::kList) return List(a);
  if (a.force_share) {
    return ReportError(absl::StrCat("Could not open '", a.file,
                                    "': force-share=on can only be used with read-only images"));
  }
  absl::StatusOr<std::unique_ptr<io::EventLoop>> loop = io::EventLoop::Create(32);
  if (!loop.ok()) return ReportError(loop.status());
  absl::StatusOr<std::unique_ptr<io::UringFile>> file =
      io::UringFile::Open(loop->get(), a.file, io::OpenFlags{});
  if (!file.ok()) {
    return ReportError(absl::StrCat("Could not open '", a.file, "': ", file.status().message()));
  }
  if (absl::Status st = LockImageFile((*file)->fd(), LockMode::kExclusive); !st.ok()) {
    return Fail(a.file, st);
  }
  absl::StatusOr<bool> qcow2 = IsQcow2(**loop, **file, "");
  if (!qcow2.ok()) return Fail(a.file, qcow2.status());
  if (!*qcow2) {
    // A raw image has no snapshot table.
    if (a.action == Action::kNone) return 0;
    return ReportError(Failure(a, RawImageRefusal(a.action)));
  }
  EngineOpenOptions open;
  open.format = engine::ImageFormat::kQcow2;
  open.allow_devices = a.allow_devices;
  absl::StatusOr<std::unique_ptr<engine::Device>> device =
      OpenDeviceOnFile(**loop, a.file, std::move(*file), open);
  if (!device.ok()) {
    return ReportError(absl::StrCat("Could not open '", a.file, "': ", device.status().message()));
  }
  auto* image = dynamic_cast<engine::Qcow2Image*>(device->get());
  absl::Status s = absl::OkStatus();
  // Without an action qemu-img opens the image and changes nothing.
  if (image != nullptr && a.action != Action::kNone) s = Change(**loop, *image, a);
  absl::Status closed = CloseDevice(**loop, **device);
  if (!s.ok()) return ReportError(Failure(a, s));
  if (!closed.ok()) return Fail(a.file, closed);
  return 0;
}

}  // namespace

const Command kSnapshotCommand = {
    "snapshot",
    RunSnapshot,
    "snapshot [-l | -c NAME | -a NAME | -d NAME] [-q] [-U] [--allow-devices] FILE",
    "Lists, creates, applies or deletes internal snapshots of a qcow2 image as qemu-img snapshot "
    "does. -l prints qemu-img's snapshot table (nothing when there are none). -c copies the "
    "current disk into a new snapshot (disk only: no VM state, VM clock 0; names may repeat, ids "
    "are numbered). -a reverts the disk to a snapshot, found by id first, then by name, resizing "
    "the disk to the snapshot's size if it differs (and growing the L1 table if the snapshot's is "
    "longer). -d deletes the first snapshot with that "
    "name and frees the clusters only it used. One action at a time; without one nothing "
    "changes. -c, -a and -d take the image's write lock and are crash-safe: a version 3 image "
    "carries the dirty bit while they run; a version 2 image, and a revert that changes the "
    "disk size, get new tables beside the old ones and switch to them with one header write "
    "(the size included).\n\n"
    "Not supported (refused before any change): images with an external data file (qemu-img "
    "refuses them too) and raw images.",
    kSnapshotOptions,
};

}  // namespace uq::tools
