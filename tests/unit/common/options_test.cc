#include "src/common/options.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace uq::common {
namespace {

constexpr int kOutput = kLongOnlyIdBase;
constexpr OptionSpec kSpecs[] = {
    {'f', 'f', "format", "FMT", "image format"},
    {'r', 'r', "repair", "leaks|all", "repair"},
    {'q', 'q', "quiet", "", "quiet"},
    {'U', 'U', "force-share", "", "no lock"},
    {kOutput, 0, "output", "FMT", "output format"},
    {'c', 'c', "", "CMD", "a command"},
};

absl::StatusOr<ParsedArgs> Parse(std::vector<std::string> args) {
  return ParseOptions(args, kSpecs);
}

TEST(OptionsTest, ValuesAttachedOrSeparate) {
  for (const std::vector<std::string>& args :
       std::vector<std::vector<std::string>>{{"-f", "raw", "x"},
                                             {"-fraw", "x"},
                                             {"--format", "raw", "x"},
                                             {"--format=raw", "x"},
                                             {"--form=raw", "x"},
                                             {"x", "-f", "raw"}}) {
    absl::StatusOr<ParsedArgs> p = Parse(args);
    ASSERT_TRUE(p.ok()) << p.status();
    ASSERT_NE(p->Last('f'), nullptr);
    EXPECT_EQ(*p->Last('f'), "raw");
    EXPECT_EQ(p->operands, std::vector<std::string>{"x"});
  }
}

TEST(OptionsTest, CombinedFlagsOrderAndLastWins) {
  absl::StatusOr<ParsedArgs> p =
      Parse({"a", "-qU", "--output=json", "b", "--output", "human", "-c", "read 0 1", "-c", "x"});
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(p->Has('q'));
  EXPECT_TRUE(p->Has('U'));
  EXPECT_FALSE(p->Has('r'));
  EXPECT_EQ(*p->Last(kOutput), "human");
  EXPECT_EQ(p->operands, (std::vector<std::string>{"a", "b"}));
  std::vector<std::string> commands;
  for (const ParsedOption& o : p->options) {
    if (o.id == 'c') commands.push_back(o.value);
  }
  EXPECT_EQ(commands, (std::vector<std::string>{"read 0 1", "x"}));
}

TEST(OptionsTest, DoubleDashEndsOptions) {
  absl::StatusOr<ParsedArgs> p = Parse({"-q", "--", "-f", "--output=x", "-"});
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_FALSE(p->Has('f'));
  EXPECT_EQ(p->operands, (std::vector<std::string>{"-f", "--output=x", "-"}));
}

TEST(OptionsTest, Errors) {
  struct Bad {
    std::vector<std::string> args;
    std::string message;
  };
  for (const Bad& b : std::vector<Bad>{
           {{"-x"}, "unrecognized option '-x'"},
           {{"-qx"}, "unrecognized option '-x'"},
           {{"--bogus=1"}, "unrecognized option '--bogus'"},
           {{"-f"}, "missing argument for option '-f'"},
           {{"x", "--format"}, "missing argument for option '--format'"},
           {{"--output"}, "missing argument for option '--output'"},
           {{"--quiet=yes"}, "option '--quiet' doesn't allow an argument"},
           {{"--f"}, "option '--f' is ambiguous"},
       }) {
    absl::StatusOr<ParsedArgs> p = Parse(b.args);
    ASSERT_FALSE(p.ok()) << b.args[0];
    EXPECT_EQ(p.status().message(), b.message);
  }
}

TEST(OptionsTest, ParsesAgainAfterAnError) {
  EXPECT_FALSE(Parse({"-x", "a"}).ok());
  absl::StatusOr<ParsedArgs> p = Parse({"-q", "a"});
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->operands, std::vector<std::string>{"a"});
}

TEST(OptionsTest, HelpListsEveryOption) {
  const std::string help = FormatHelp("check [-q] FILE", "Checks FILE.", kSpecs);
  EXPECT_EQ(help.rfind("usage: check [-q] FILE\n\nChecks FILE.\n\nOptions:\n", 0), 0u) << help;
  for (const char* line : {"  -f, --format=FMT", "  -r, --repair=leaks|all", "  -q, --quiet",
                           "  -U, --force-share", "      --output=FMT", "  -c CMD"}) {
    EXPECT_NE(help.find(std::string("\n") + line + " "), std::string::npos) << line << "\n" << help;
  }
}

TEST(OptionsTest, HelpIsEightyColumnsWide) {
  const std::string usage =
      "qcow2-img measure [--output=human|json] [-O FMT] [-o OPTIONS] [--size SIZE | [-f FMT] "
      "[-l SNAPSHOT] [-U] SRC]";
  const std::string summary =
      std::string(60, 'a') + " " + std::string(30, 'b') + "\nsoft break\n\nSecond paragraph.";
  const std::string help = FormatHelp(usage, summary, kSpecs);
  EXPECT_EQ(help.rfind("usage: qcow2-img measure [--output=human|json] [-O FMT] [-o OPTIONS]\n"
                       "                         [--size SIZE | [-f FMT] [-l SNAPSHOT] [-U] "
                       "SRC]\n\n" +
                           std::string(60, 'a') + "\n" + std::string(30, 'b') +
                           " soft break\n\nSecond paragraph.\n\nOptions:\n",
                       0),
            0u)
      << help;
  for (absl::string_view line : absl::StrSplit(help, '\n')) {
    EXPECT_LE(line.size(), 80u) << line;
  }
}

}  // namespace
}  // namespace uq::common
