#include "src/cli/mount_commands.h"

#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "src/cli/command_util.h"
#include "src/cli/device_commands.h"
#include "src/cli/inspect_image.h"
#include "src/cli/serve.h"
#include "src/cli/state.h"
#include "src/ublk/control.h"
#include "src/ublk/features.h"

namespace uq::cli {

namespace {

constexpr auto kPartitionWait = std::chrono::seconds(10);

absl::Status RunMountTool(const std::string& source, const std::string& dir, bool read_only) {
  std::fflush(stdout);
  pid_t pid = ::fork();
  if (pid < 0) return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
  if (pid == 0) {
    const char* argv[] = {"mount",        "-o",        read_only ? "ro" : "rw",
                          source.c_str(), dir.c_str(), nullptr};
    ::execvp("mount", const_cast<char* const*>(argv));
    std::fprintf(stderr, "ublk-qcow2: cannot run mount: %s\n", std::strerror(errno));
    std::_Exit(127);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(absl::StrCat("cannot mount ", source, " on ", dir));
  }
  return absl::OkStatus();
}

// mount(2) and umount(2) need CAP_SYS_ADMIN whatever ublk allows.
absl::Status NeedRootFor(const char* what) {
  if (ublk::HasCapSysAdmin()) return absl::OkStatus();
  return absl::PermissionDeniedError(
      absl::StrCat(what,
                   " needs root (mounting is root-only); without root, `attach` the image and have "
                   "root mount the /dev/ublkbN it prints"));
}

}  // namespace

int DoMount(const Command& cmd) {
  if (absl::Status root = NeedRootFor("mount"); !root.ok()) return Fail(root);
  struct stat st;
  if (::stat(cmd.dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(cmd.dir, " is not a directory")));
  }
  int partition = cmd.partition;
  if (partition < 0) {
    // Without --partition: what the disk holds decides, read before attaching.
    auto layout = InspectImage(cmd.spec);
    if (!layout.ok()) return Fail(layout.status());
    auto choice = ChooseMountTarget(*layout);
    if (!choice.ok()) {
      std::fputs(LayoutText(*layout, cmd.spec.image).c_str(), stderr);
      return Fail(absl::Status(choice.status().code(),
                               absl::StrCat(cmd.spec.image, ": ", choice.status().message())));
    }
    partition = static_cast<int>(*choice);
  }
  auto id = StartDaemon(cmd, /*recover=*/false);
  if (!id.ok()) return Fail(id.status());
  std::string source = BlockDevPath(*id);
  if (partition > 0) absl::StrAppend(&source, "p", partition);

  auto undo = [&](const absl::Status& why) {
    if (auto control = ublk::Control::Open(); control.ok()) {
      Detach(**control, *id).IgnoreError();
    }
    return Fail(why);
  };
  // The kernel scans partitions at START_DEV; devtmpfs adds the nodes.
  auto deadline = Clock::now() + kPartitionWait;
  while (::access(source.c_str(), F_OK) != 0) {
    if (Clock::now() > deadline) {
      return undo(absl::NotFoundError(absl::StrCat(cmd.spec.image, " has no partition ", partition,
                                                   " (", source, " did not appear)")));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (absl::Status m = RunMountTool(source, cmd.dir, cmd.spec.read_only); !m.ok()) {
    return undo(m);
  }
  std::printf("%s\n", source.c_str());
  return 0;
}

namespace {

std::string UnescapeMountField(absl::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size()) {
      int v = 0;
      bool ok = true;
      for (size_t k = 1; k <= 3; ++k) {
        char c = s[i + k];
        if (c < '0' || c > '7') ok = false;
        v = v * 8 + (c - '0');
      }
      if (ok) {
        out += static_cast<char>(v);
        i += 3;
        continue;
      }
    }
    out += s[i];
  }
  return out;
}

}  // namespace

int DoUnmount(const Command& cmd) {
  if (absl::Status root = NeedRootFor("unmount"); !root.ok()) return Fail(root);
  char* real = ::realpath(cmd.dir.c_str(), nullptr);
  if (real == nullptr) {
    return Fail(absl::NotFoundError(absl::StrCat(cmd.dir, ": ", std::strerror(errno))));
  }
  std::string dir = real;
  std::free(real);
  std::ifstream f("/proc/self/mountinfo");
  std::string line, source;
  while (std::getline(f, line)) {
    // id parent maj:min root mountpoint opts [optional...] - fstype source super
    std::vector<absl::string_view> fields = absl::StrSplit(line, ' ');
    if (fields.size() < 5 || UnescapeMountField(fields[4]) != dir) continue;
    auto dash = std::find(fields.begin(), fields.end(), "-");
    if (dash != fields.end() && dash + 2 < fields.end()) {
      source = UnescapeMountField(*(dash + 2));  // the last mount on dir wins
    }
  }
  if (source.empty()) {
    return Fail(absl::NotFoundError(absl::StrCat(dir, " is not a mount point")));
  }
  auto id = DevIdFromPath(source);
  if (!id.ok()) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat(dir, " is mounted from ", source, ", not a ublk device")));
  }
  if (::umount2(dir.c_str(), 0) != 0) {
    return Fail(
        absl::InternalError(absl::StrCat("cannot unmount ", dir, ": ", std::strerror(errno))));
  }
  auto control = ublk::Control::Open();
  if (!control.ok()) return Fail(control.status());
  absl::Status st = Detach(**control, *id);
  return st.ok() ? 0 : Fail(st);
}

}  // namespace uq::cli
