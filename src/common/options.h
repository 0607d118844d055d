// Command-line options, parsed the way qemu-img parses them (getopt_long):
//   -f qcow2, -fqcow2, --format qcow2, --format=qcow2   a value, separate or attached
//   -qU                                                combined short flags
//   --form=qcow2                                       an unambiguous prefix of a long name
//   FILE -q                                            options and operands in any order
//   -- -file-                                          "--" ends the options
// and the per-command --help text listing every option a command accepts,
// generated from the same table the parser uses (so the two cannot drift).
//
// Thread-safety: Parse uses getopt_long, whose state is process-global; call
// it from one thread at a time (both commands parse before starting threads).
#ifndef UQ_SRC_COMMON_OPTIONS_H_
#define UQ_SRC_COMMON_OPTIONS_H_

#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace uq::common {

// Ids for options without a short name start here (as qemu-img's OPTION_*).
constexpr int kLongOnlyIdBase = 256;

struct OptionSpec {
  // What Parse reports for this option: by convention the short letter, or
  // kLongOnlyIdBase + n for a long-only option.
  int id = 0;
  char short_name = 0;           // 0: long name only
  absl::string_view long_name;   // empty: short name only; else views a literal (NUL-terminated)
  absl::string_view value_name;  // empty: a flag; else it takes a value, named so in --help
  absl::string_view help;        // one line for --help
};

struct ParsedOption {
  int id = 0;
  std::string value;  // empty for flags
};

struct ParsedArgs {
  std::vector<ParsedOption> options;  // in command-line order
  std::vector<std::string> operands;

  bool Has(int id) const;
  // The value of the last occurrence of `id` (qemu-img: the last one wins),
  // or nullptr.
  const std::string* Last(int id) const;
};

// Parses `args` (without the program or command name). Errors are one line:
// "unrecognized option '--x'", "missing argument for option '-f'",
// "option '--help' doesn't allow an argument", "option '--f' is ambiguous".
absl::StatusOr<ParsedArgs> ParseOptions(std::span<const std::string> args,
                                        std::span<const OptionSpec> specs);

// The help text: "usage: <usage>\n\n<summary>\n\nOptions:\n" and one aligned
// line per option ("  -f, --format=FMT  help"), 80 columns wide: the usage
// line breaks between its bracketed groups, the summary is refilled (a blank
// line, "\n\n", separates its paragraphs) and each option's text wraps under
// its column.
std::string FormatHelp(absl::string_view usage, absl::string_view summary,
                       std::span<const OptionSpec> specs);

}  // namespace uq::common

#endif  // UQ_SRC_COMMON_OPTIONS_H_
