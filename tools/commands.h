// qcow2-img subcommands. Each lives in its own cmd_<name>.cc, defines its
// Command (options table, usage, summary) and is listed once in the dispatch
// table in qcow2_img.cc.
//
// The dispatcher parses argv against the command's option table
// (src/common/options.h, qemu-img's conventions), answers --help from the
// same table, and calls `run` with the parsed options and operands. `run`
// returns the process exit code; on failure it prints exactly one line
// "qcow2-img: <file or command>: <problem>" (tools::Fail / ReportError). It
// never throws or aborts on bad input.
#ifndef UQ_TOOLS_COMMANDS_H_
#define UQ_TOOLS_COMMANDS_H_

#include <span>

#include "absl/strings/string_view.h"
#include "src/common/options.h"

namespace uq::tools {

struct Command {
  absl::string_view name;
  int (*run)(const common::ParsedArgs& args);
  absl::string_view usage;    // the synopsis after "qcow2-img "
  absl::string_view summary;  // what it does, for --help
  std::span<const common::OptionSpec> options;
  // A last argument "-<digit>..." is an operand, not an option (resize's
  // relative size: qemu-img takes it off argv before parsing, so "-1G" needs
  // no "--").
  bool negative_last_operand = false;
};

// Options several commands share, spelled as qemu-img spells them.
inline constexpr common::OptionSpec kHelpOption{'h', 'h', "help", "", "print this help and exit"};
inline constexpr common::OptionSpec kFormatOption{
    'f', 'f', "format", "FMT", "image format, qcow2 or raw (probed when omitted)"};
inline constexpr common::OptionSpec kForceShareOption{
    'U', 'U', "force-share", "",
    "open read-only without taking the image lock (another process may be writing)"};
inline constexpr common::OptionSpec kQuietOption{'q', 'q', "quiet", "", "print nothing on success"};
inline constexpr int kOutputId = common::kLongOnlyIdBase;
inline constexpr common::OptionSpec kOutputOption{kOutputId, 0, "output", "human|json",
                                                  "output format (default human)"};
// Every command that opens an image's backing chain or external data file
// takes it and passes it to each of those opens (engine::CheckNamedFile).
// Its id is above any command's own long-only ids.
inline constexpr int kAllowDevicesId = common::kLongOnlyIdBase + 64;
inline constexpr common::OptionSpec kAllowDevicesOption{
    kAllowDevicesId, 0, "allow-devices", "",
    "let the image name block devices as backing or data file"};

extern const Command kCreateCommand;
extern const Command kInfoCommand;
extern const Command kCheckCommand;
extern const Command kMapCommand;
extern const Command kCompareCommand;
extern const Command kMeasureCommand;
extern const Command kIoCommand;
extern const Command kConvertCommand;
extern const Command kBenchCommand;
extern const Command kResizeCommand;
extern const Command kDdCommand;
extern const Command kRebaseCommand;
extern const Command kCommitCommand;
extern const Command kSnapshotCommand;
extern const Command kAmendCommand;

}  // namespace uq::tools

#endif  // UQ_TOOLS_COMMANDS_H_
