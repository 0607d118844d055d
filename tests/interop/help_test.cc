// `qcow2-img --version` and every command's --help: the help lists every
// option the command accepts (each listed option is accepted, with a value
// where the help names one, and every option of the usage line is listed),
// and an option it does not list is refused.
#include <gtest/gtest.h>

#include <cstdlib>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "tests/interop/interop_util.h"

namespace uq::interop {
namespace {

std::string Qcow2Img() {
  const char* env = std::getenv("UQ_QCOW2_IMG");
  return env && *env ? env : QCOW2_IMG_PATH;
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// The commands `qcow2-img --help` lists ("  <name> [options]...").
std::vector<std::string> Commands() {
  const RunResult r = RunCommand(Quote(Qcow2Img()) + " --help");
  EXPECT_EQ(r.exit_code, 0);
  std::vector<std::string> names;
  bool in_list = false;
  for (const std::string& line : Lines(r.out)) {
    if (line == "commands:") {
      in_list = true;
    } else if (in_list && line.rfind("  ", 0) == 0) {
      names.push_back(line.substr(2, line.find(' ', 2) - 2));
    } else if (in_list) {
      break;
    }
  }
  return names;
}

TEST(HelpTest, VersionComesFromTheProject) {
  const RunResult r = RunCommand(Quote(Qcow2Img()) + " --version");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.out, std::string("qcow2-img version ") + UQ_PROJECT_VERSION + "\n");
}

TEST(HelpTest, EveryCommandDocumentsEveryOptionItAccepts) {
  const std::vector<std::string> commands = Commands();
  // Issue 9's verbs, the earlier ones and issue 10's resize, dd, rebase, commit, snapshot and
  // amend.
  for (const char* expected :
       {"create", "info", "check", "map", "compare", "measure", "convert", "io", "bench", "resize",
        "dd", "rebase", "commit", "snapshot", "amend"}) {
    EXPECT_NE(std::find(commands.begin(), commands.end(), expected), commands.end()) << expected;
  }
  const std::regex option_line(R"(^  (?:-(\w))?(?:, )?(?:\s*--([\w-]+))?(?:[= ](\S+))?(?:\s|$))");
  const std::regex usage_option(R"((?:^|[\s\[|])(--?[\w-]+))");
  for (const std::string& command : commands) {
    SCOPED_TRACE(command);
    const std::string q = Quote(Qcow2Img()) + " " + command;
    const RunResult help = RunCommand(q + " --help");
    ASSERT_EQ(help.exit_code, 0) << help.err;
    const std::vector<std::string> lines = Lines(help.out);
    ASSERT_FALSE(lines.empty());
    EXPECT_EQ(lines[0].rfind("usage: qcow2-img " + command, 0), 0u) << lines[0];
    for (const std::string& line : lines) EXPECT_LE(line.size(), 80u) << line;
    // The usage may continue on indented lines; its options are checked below.
    std::string usage = lines[0];
    for (size_t i = 1; i < lines.size() && !lines[i].empty(); ++i) usage += " " + lines[i];
    std::vector<std::string> listed;  // "-x" and "--name" spellings
    bool options = false;
    for (const std::string& line : lines) {
      if (line == "Options:") {
        options = true;
        continue;
      }
      std::smatch m;
      if (!options || !std::regex_search(line, m, option_line)) continue;
      const std::string value = m[3].matched ? " 1" : "";
      for (const std::string& spelled :
           {m[1].matched ? "-" + m[1].str() : "", m[2].matched ? "--" + m[2].str() : ""}) {
        if (spelled.empty()) continue;
        listed.push_back(spelled);
        // Accepted (with a value where one is named): no option error, even
        // though the command then fails for want of operands.
        const RunResult r = RunCommand(q + " " + spelled + value);
        EXPECT_EQ(r.err.find("unrecognized option"), std::string::npos) << spelled << ": " << r.err;
        EXPECT_EQ(r.err.find("argument for option"), std::string::npos) << spelled << ": " << r.err;
        EXPECT_EQ(r.err.find("doesn't allow"), std::string::npos) << spelled << ": " << r.err;
      }
    }
    EXPECT_NE(std::find(listed.begin(), listed.end(), "--help"), listed.end());
    // Every option of the usage line is listed.
    for (auto it = std::sregex_iterator(usage.begin(), usage.end(), usage_option);
         it != std::sregex_iterator(); ++it) {
      const std::string spelled = (*it)[1];
      EXPECT_NE(std::find(listed.begin(), listed.end(), spelled), listed.end())
          << spelled << " is in the usage line but not listed:\n"
          << help.out;
    }
    // An option the help does not list is refused.
    const RunResult bogus = RunCommand(q + " --no-such-option x");
    EXPECT_EQ(bogus.exit_code, 1);
    EXPECT_NE(bogus.err.find("unrecognized option '--no-such-option'"), std::string::npos)
        << bogus.err;
  }
}

// --allow-devices, with io's wording, in every command that opens an image's
// backing chain or external data file (and in none that opens neither).
TEST(HelpTest, CommandsThatOpenAChainTakeAllowDevices) {
  for (const char* command : {"info", "io", "map", "compare", "measure", "convert", "dd", "bench",
                              "resize", "snapshot", "amend", "rebase", "commit"}) {
    SCOPED_TRACE(command);
    const RunResult help = RunCommand(Quote(Qcow2Img()) + " " + command + " --help");
    ASSERT_EQ(help.exit_code, 0) << help.err;
    // The help's lines are wrapped and aligned: compare with single spaces.
    const std::string text = std::regex_replace(help.out, std::regex(R"(\s+)"), " ");
    EXPECT_NE(text.find("[--allow-devices]"), std::string::npos) << help.out;
    EXPECT_NE(text.find(" --allow-devices let the image name block devices as backing or data "
                        "file "),
              std::string::npos)
        << help.out;
  }
  // create reads a backing file it is given, not one an image names; check
  // reads the image's own metadata only.
  for (const char* command : {"create", "check"}) {
    SCOPED_TRACE(command);
    const RunResult help = RunCommand(Quote(Qcow2Img()) + " " + command + " --help");
    ASSERT_EQ(help.exit_code, 0) << help.err;
    EXPECT_EQ(help.out.find("--allow-devices"), std::string::npos) << help.out;
  }
}

}  // namespace
}  // namespace uq::interop
