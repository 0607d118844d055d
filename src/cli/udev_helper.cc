// ublk-qcow2-udev NAME: the helper the project's udev rule runs for every new
// ublk node (NAME = udev's %k: ublkcN, ublkbN or ublkbNpM).
//
// An unprivileged device (UBLK_F_UNPRIVILEGED_DEV) records the uid/gid of
// the user who added it; the kernel creates its nodes as root's, and only
// the owner may then open them (the kernel checks that too). This hands
// /dev/NAME to that owner, mode 0600. Nodes of privileged devices are left
// alone. Exit 0 on success or nothing to do, 1 with one line on stderr.
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "src/ublk/control.h"

namespace {

int Fail(const std::string& msg) {
  std::fprintf(stderr, "ublk-qcow2-udev: %s\n", msg.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) return Fail("usage: ublk-qcow2-udev ublkcN | ublkbN[pM]");
  const std::string name = argv[1];
  if (name.size() < 6 || name.find('/') != std::string::npos ||
      (name.rfind("ublkc", 0) != 0 && name.rfind("ublkb", 0) != 0)) {
    return Fail(absl::StrCat("'", name, "' is not a ublk device name"));
  }
  std::string digits = name.substr(
      5, name.find('p', 5) == std::string::npos ? std::string::npos : name.find('p', 5) - 5);
  uint32_t id;
  if (!absl::SimpleAtoi(digits, &id)) {
    return Fail(absl::StrCat("'", name, "' is not a ublk device name"));
  }
  auto control = uq::ublk::Control::Open();
  if (!control.ok()) return Fail(std::string(control.status().message()));
  auto info = (*control)->GetDevInfo(id);
  if (!info.ok()) return Fail(std::string(info.status().message()));
  if ((info->flags & uq::ublk::kFlagUnprivilegedDev) == 0) return 0;
  const std::string path = absl::StrCat("/dev/", name);
  if (::chown(path.c_str(), info->owner_uid, info->owner_gid) != 0 ||
      ::chmod(path.c_str(), 0600) != 0) {
    return Fail(absl::StrCat("cannot give ", path, " to uid ", info->owner_uid, ": ",
                             std::strerror(errno)));
  }
  return 0;
}
