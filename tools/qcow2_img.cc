// qcow2-img: a qemu-img-compatible image tool. main() only dispatches.
#include <cstdio>
#include <span>
#include <string_view>

#include "tools/commands.h"
#include "tools/util.h"

namespace uq::tools {
namespace {

// To add a subcommand: implement Cmd<Name> in cmd_<name>.cc, declare it in
// commands.h and add one line here.
constexpr Command kCommands[] = {
    {"create", CmdCreate,
     "create [-f qcow2|raw] [-o options] [-b backing -F fmt] [-u] [-q] FILE [SIZE]"},
    {"info", CmdInfo, "info [-f fmt] [--output=human|json] [--backing-chain] FILE"},
    {"io", CmdIo, "io [-r] [-f qcow2|raw] [-t none|writeback] -c CMD [-c CMD ...] FILE"},
    {"convert", CmdConvert,
     "convert [-f fmt] [-O raw|qcow2] [-o options] [-c] [-p] [-m N] [-W] [-l snapshot] SRC DST"},
    {"bench", CmdBench,
     "bench [-c count] [-d depth] [-f fmt] [--flush-interval=N] [--no-drain] [-o offset] "
     "[--pattern=N] [-q] [-s size] [-S step] [-t none|writeback] [-w] FILE"},
};

void PrintUsage(std::FILE* out) {
  std::fprintf(out, "usage: qcow2-img <command> [args]\ncommands:\n");
  for (const Command& c : kCommands) {
    std::fprintf(out, "  %.*s\n", static_cast<int>(c.usage.size()), c.usage.data());
  }
}

}  // namespace
}  // namespace uq::tools

int main(int argc, char** argv) {
  using uq::tools::kCommands;
  if (argc < 2) {
    uq::tools::PrintUsage(stderr);
    return 1;
  }
  const std::string_view name = argv[1];
  if (name == "help" || name == "--help" || name == "-h") {
    uq::tools::PrintUsage(stdout);
    return 0;
  }
  for (const uq::tools::Command& c : kCommands) {
    if (c.name == name) return c.run(std::span<char* const>(argv + 2, argv + argc));
  }
  return uq::tools::Fail(name, "unknown command (try 'qcow2-img help')");
}
