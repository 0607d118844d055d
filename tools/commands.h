// qcow2-img subcommands. Each lives in its own cmd_<name>.cc and is listed
// once in the dispatch table in qcow2_img.cc.
//
// Contract for every subcommand: `args` holds the arguments after the
// subcommand name. It returns the process exit code; on failure it prints
// exactly one line "qcow2-img: <file>: <problem>" (tools::Fail) and returns 1.
// It never throws or aborts on bad input.
#ifndef UQ_TOOLS_COMMANDS_H_
#define UQ_TOOLS_COMMANDS_H_

#include <span>
#include <string_view>

namespace uq::tools {

using CommandFn = int (*)(std::span<char* const> args);

struct Command {
  std::string_view name;
  CommandFn run;
  std::string_view usage;  // one line, shown by `qcow2-img help`
};

int CmdCreate(std::span<char* const> args);
int CmdInfo(std::span<char* const> args);
// Engine-backed subcommands (cmd_io.cc, cmd_convert.cc, cmd_bench.cc).
int CmdIo(std::span<char* const> args);
int CmdConvert(std::span<char* const> args);
int CmdBench(std::span<char* const> args);

}  // namespace uq::tools

#endif  // UQ_TOOLS_COMMANDS_H_
