#include "src/common/options.h"

#include <getopt.h>

#include <algorithm>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace uq::common {

bool ParsedArgs::Has(int id) const {
  return std::any_of(options.begin(), options.end(),
                     [id](const ParsedOption& o) { return o.id == id; });
}

const std::string* ParsedArgs::Last(int id) const {
  for (auto it = options.rbegin(); it != options.rend(); ++it) {
    if (it->id == id) return &it->value;
  }
  return nullptr;
}

namespace {

// getopt_long's `val` for the long option of specs[i]: above every char and
// above 1, which "-" mode returns for operands.
constexpr int kLongValBase = 1000;

std::string Spelling(const OptionSpec& spec) {
  if (!spec.long_name.empty()) return absl::StrCat("--", spec.long_name);
  return std::string{'-', spec.short_name};
}

// "--fo=x" -> "fo".
absl::string_view LongNameOf(absl::string_view arg) {
  absl::string_view name = arg.substr(std::min<size_t>(2, arg.size()));
  return name.substr(0, name.find('='));
}

absl::Status UnknownLong(absl::string_view arg, std::span<const OptionSpec> specs) {
  const absl::string_view name = LongNameOf(arg);
  size_t matches = 0;
  for (const OptionSpec& s : specs) {
    if (!s.long_name.empty() && !name.empty() && s.long_name.substr(0, name.size()) == name) {
      ++matches;
    }
  }
  if (matches > 1) {
    return absl::InvalidArgumentError(absl::StrCat("option '--", name, "' is ambiguous"));
  }
  return absl::InvalidArgumentError(absl::StrCat("unrecognized option '--", name, "'"));
}

}  // namespace

absl::StatusOr<ParsedArgs> ParseOptions(std::span<const std::string> args,
                                        std::span<const OptionSpec> specs) {
  // getopt permutes argv: hand it copies.
  std::vector<std::string> storage;
  storage.reserve(args.size() + 1);
  storage.emplace_back("qcow2");
  storage.insert(storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& s : storage) argv.push_back(s.data());
  argv.push_back(nullptr);

  // "-": operands come back in order as option 1 (independent of
  // POSIXLY_CORRECT); ":": a missing value is reported as ':' not '?'.
  std::string optstring = "-:";
  std::vector<option> longopts;
  for (size_t i = 0; i < specs.size(); ++i) {
    const OptionSpec& s = specs[i];
    const bool takes_value = !s.value_name.empty();
    if (s.short_name != 0) {
      optstring += s.short_name;
      if (takes_value) optstring += ':';
    }
    if (!s.long_name.empty()) {
      longopts.push_back(option{s.long_name.data(), takes_value ? required_argument : no_argument,
                                nullptr, kLongValBase + static_cast<int>(i)});
    }
  }
  // option::name must be NUL-terminated: the spec's long names are literals.
  longopts.push_back(option{nullptr, 0, nullptr, 0});

  ParsedArgs out;
  const int argc = static_cast<int>(argv.size()) - 1;
  optind = 0;  // GNU: 0 re-initialises the scanner
  opterr = 0;
  for (;;) {
    const int c = getopt_long(argc, argv.data(), optstring.c_str(), longopts.data(), nullptr);
    if (c == -1) break;
    if (c == 1) {
      out.operands.emplace_back(optarg);
      continue;
    }
    if (c == ':' || c == '?') {
      const absl::string_view arg = argv[optind - 1];
      const bool is_long = optopt >= kLongValBase || (optopt == 0 && absl::StartsWith(arg, "--"));
      if (c == '?' && optopt == 0) return UnknownLong(arg, specs);
      std::string spelled = is_long ? Spelling(specs[static_cast<size_t>(optopt - kLongValBase)])
                                    : std::string{'-', static_cast<char>(optopt)};
      if (c == ':') {
        return absl::InvalidArgumentError(
            absl::StrCat("missing argument for option '", spelled, "'"));
      }
      if (is_long) {
        return absl::InvalidArgumentError(
            absl::StrCat("option '", spelled, "' doesn't allow an argument"));
      }
      return absl::InvalidArgumentError(absl::StrCat("unrecognized option '", spelled, "'"));
    }
    const OptionSpec* spec = nullptr;
    if (c >= kLongValBase) {
      spec = &specs[static_cast<size_t>(c - kLongValBase)];
    } else {
      for (const OptionSpec& s : specs) {
        if (s.short_name == c) spec = &s;
      }
    }
    if (spec == nullptr) {
      return absl::InternalError(absl::StrCat("getopt_long returned unknown option ", c));
    }
    out.options.push_back(ParsedOption{spec->id, optarg != nullptr ? optarg : ""});
  }
  // After "--": the rest are operands.
  for (int i = optind; i < argc; ++i) out.operands.emplace_back(argv[static_cast<size_t>(i)]);
  return out;
}

namespace {

constexpr size_t kWidth = 80;

// "usage: <usage>", broken at spaces outside brackets so that no line is
// wider than kWidth where it can be helped; continuation lines start under
// the first option (after "usage: <program> <command> ").
std::string WrapUsage(absl::string_view usage) {
  std::vector<std::string> groups;  // "[-f FMT]", "FILE", ...
  int depth = 0;
  std::string current;
  for (char c : usage) {
    if (c == ' ' && depth == 0) {
      if (!current.empty()) groups.push_back(std::move(current));
      current.clear();
      continue;
    }
    if (c == '[') ++depth;
    if (c == ']' && depth > 0) --depth;
    current += c;
  }
  if (!current.empty()) groups.push_back(std::move(current));
  std::string out = "usage:";
  size_t indent = out.size() + 1;
  for (size_t i = 0; i < groups.size() && i < 2; ++i) indent += groups[i].size() + 1;
  if (indent > kWidth / 2) indent = 8;
  size_t used = out.size();
  for (size_t i = 0; i < groups.size(); ++i) {
    if (i >= 2 && used + 1 + groups[i].size() > kWidth) {
      absl::StrAppend(&out, "\n", std::string(indent - 1, ' '));
      used = indent - 1;
    }
    absl::StrAppend(&out, " ", groups[i]);
    used += 1 + groups[i].size();
  }
  return out + "\n";
}

// One paragraph of the summary, its words refilled to kWidth columns.
std::string Reflow(absl::string_view paragraph) {
  std::string out;
  size_t used = 0;
  for (absl::string_view word :
       absl::StrSplit(paragraph, absl::ByAnyChar(" \n"), absl::SkipEmpty())) {
    if (used != 0 && used + 1 + word.size() > kWidth) {
      out += '\n';
      used = 0;
    }
    if (used != 0) {
      out += ' ';
      ++used;
    }
    absl::StrAppend(&out, word);
    used += word.size();
  }
  return out;
}

}  // namespace

std::string FormatHelp(absl::string_view usage, absl::string_view summary,
                       std::span<const OptionSpec> specs) {
  std::vector<std::string> left;
  size_t width = 0;
  for (const OptionSpec& s : specs) {
    std::string l = s.short_name != 0 ? std::string{' ', ' ', '-', s.short_name} : "    ";
    if (!s.long_name.empty()) {
      absl::StrAppend(&l, s.short_name != 0 ? ", " : "  ", "--", s.long_name);
      if (!s.value_name.empty()) absl::StrAppend(&l, "=", s.value_name);
    } else if (!s.value_name.empty()) {
      absl::StrAppend(&l, " ", s.value_name);
    }
    width = std::max(width, l.size());
    left.push_back(std::move(l));
  }
  constexpr size_t kMaxColumn = 30;
  const size_t column = std::min(width, kMaxColumn) + 2;
  std::string out = WrapUsage(usage);
  for (absl::string_view paragraph : absl::StrSplit(summary, "\n\n", absl::SkipEmpty())) {
    absl::StrAppend(&out, "\n", Reflow(paragraph), "\n");
  }
  if (!specs.empty()) absl::StrAppend(&out, "\nOptions:\n");
  for (size_t i = 0; i < specs.size(); ++i) {
    std::string line = left[i];
    if (line.size() + 2 > column) {
      absl::StrAppend(&line, "\n");
      line.append(column, ' ');
    } else {
      line.append(column - line.size(), ' ');
    }
    // Word-wrap the help text to the width, continuing under its column.
    size_t used = column;
    bool first = true;
    for (absl::string_view word : absl::StrSplit(specs[i].help, ' ', absl::SkipEmpty())) {
      if (!first && used + 1 + word.size() > kWidth) {
        absl::StrAppend(&line, "\n", std::string(column, ' '));
        used = column;
        first = true;
      }
      absl::StrAppend(&line, first ? "" : " ", word);
      used += (first ? 0 : 1) + word.size();
      first = false;
    }
    absl::StrAppend(&out, line, "\n");
  }
  return out;
}

}  // namespace uq::common
