// qcow2-img: a qemu-img-compatible image tool. main() only dispatches.
#include <cctype>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "src/common/options.h"
#include "src/common/version.h"
#include "tools/commands.h"
#include "tools/util.h"

namespace uq::tools {
namespace {

// To add a subcommand: define its Command in cmd_<name>.cc, declare it in
// commands.h and add it here.
const Command* const kCommands[] = {
    &kCreateCommand,  &kInfoCommand,    &kCheckCommand,  &kMapCommand,      &kCompareCommand,
    &kMeasureCommand, &kConvertCommand, &kIoCommand,     &kBenchCommand,    &kResizeCommand,
    &kDdCommand,      &kRebaseCommand,  &kCommitCommand, &kSnapshotCommand, &kAmendCommand,
};

void PrintUsage(std::FILE* out) {
  std::fprintf(out,
               "usage: qcow2-img COMMAND [OPTIONS] ...\n"
               "       qcow2-img --version | --help\n\ncommands:\n");
  for (const Command* c : kCommands) {
    std::fprintf(out, "  %.*s\n", static_cast<int>(c->usage.size()), c->usage.data());
  }
  std::fprintf(out, "\n'qcow2-img COMMAND --help' describes every option of COMMAND.\n");
}

int Dispatch(const Command& command, std::vector<std::string> args) {
  std::optional<std::string> last_operand;
  if (command.negative_last_operand && !args.empty() && args.back().size() > 1 &&
      args.back()[0] == '-' && std::isdigit(static_cast<unsigned char>(args.back()[1]))) {
    last_operand = std::move(args.back());
    args.pop_back();
  }
  absl::StatusOr<common::ParsedArgs> parsed = common::ParseOptions(args, command.options);
  if (parsed.ok() && last_operand.has_value()) parsed->operands.push_back(*last_operand);
  if (!parsed.ok()) {
    return Fail(
        std::string(command.name),
        absl::StrCat(parsed.status().message(), " (try 'qcow2-img ", command.name, " --help')"));
  }
  if (parsed->Has(kHelpOption.id)) {
    const std::string help = common::FormatHelp(absl::StrCat("qcow2-img ", command.usage),
                                                command.summary, command.options);
    std::fputs(help.c_str(), stdout);
    return 0;
  }
  return command.run(*parsed);
}

}  // namespace
}  // namespace uq::tools

int main(int argc, char** argv) {
  using uq::tools::kCommands;
  if (argc < 2) {
    uq::tools::PrintUsage(stderr);
    return 1;
  }
  const std::string name = argv[1];
  if (name == "help" || name == "--help" || name == "-h") {
    uq::tools::PrintUsage(stdout);
    return 0;
  }
  if (name == "--version" || name == "-V") {
    std::printf("qcow2-img version %s\n", UQ_VERSION);
    return 0;
  }
  for (const uq::tools::Command* c : kCommands) {
    if (c->name == name) {
      return uq::tools::Dispatch(*c, std::vector<std::string>(argv + 2, argv + argc));
    }
  }
  return uq::tools::Fail(name, "unknown command (try 'qcow2-img --help')");
}
