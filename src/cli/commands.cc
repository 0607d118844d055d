#include "src/cli/commands.h"

#include <sys/utsname.h>

#include <cstdio>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "src/cli/command_util.h"
#include "src/cli/device_commands.h"
#include "src/cli/inspect_image.h"
#include "src/cli/mount_commands.h"
#include "src/cli/serve.h"
#include "src/common/version.h"
#include "src/ublk/control.h"
#include "src/ublk/features.h"

namespace uq::cli {

namespace {

int DoFeatures(const Command& cmd) {
  auto control = ublk::Control::Open();
  if (!control.ok()) return Fail(control.status());
  utsname u{};
  std::string release = ::uname(&u) == 0 ? u.release : "?";
  ublk::KernelFeatures k = (*control)->features();
  const bool privileged = ublk::HasCapSysAdmin();
  std::string out = cmd.json ? ublk::FeaturesJson(k, privileged, release)
                             : ublk::FeaturesHuman(k, privileged, release);
  std::fputs(out.c_str(), stdout);
  return 0;
}

}  // namespace

int RunCommand(const Command& cmd) {
  switch (cmd.verb) {
    case Verb::kHelp:
      std::fputs(cmd.help.empty() ? kUsage : cmd.help.c_str(), stdout);
      return 0;
    case Verb::kVersion:
      std::printf("ublk-qcow2 version %s\n", UQ_VERSION);
      return 0;
    case Verb::kAttach:
    case Verb::kRecover: {
      const bool recover = cmd.verb == Verb::kRecover;
      if (cmd.foreground) return ServeInForeground(cmd, recover);
      auto id = StartDaemon(cmd, recover);
      if (!id.ok()) return Fail(id.status());
      std::printf("%s\n", BlockDevPath(*id).c_str());
      return 0;
    }
    case Verb::kDetach:
      return DoDetach(cmd);
    case Verb::kList:
      return DoList(cmd);
    case Verb::kMount:
      return DoMount(cmd);
    case Verb::kUnmount:
      return DoUnmount(cmd);
    case Verb::kFeatures:
      return DoFeatures(cmd);
    case Verb::kPartitions: {
      absl::StatusOr<std::string> out = PartitionsOutput(cmd);
      if (!out.ok()) return Fail(out.status());
      std::fputs(out->c_str(), stdout);
      return 0;
    }
  }
  return 1;
}

int Main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  auto cmd = ParseCommandLine(args);
  if (!cmd.ok()) return Fail(cmd.status());
  return RunCommand(*cmd);
}

}  // namespace uq::cli
