#include "src/cli/command_util.h"

#include <signal.h>

#include <cerrno>
#include <cstdio>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "src/ublk/control.h"

namespace uq::cli {

int Fail(const absl::Status& st) {
  std::fprintf(stderr, "ublk-qcow2: %.*s\n", static_cast<int>(st.message().size()),
               st.message().data());
  return 1;
}

void Warn(const absl::Status& st) {
  if (st.ok()) return;
  std::fprintf(stderr, "ublk-qcow2: warning: %.*s\n", static_cast<int>(st.message().size()),
               st.message().data());
}

std::string BlockDevPath(uint32_t id) { return absl::StrCat(ublk::kBlockDevPrefix, id); }

bool ProcessAlive(pid_t pid) {
  if (pid <= 0) return false;
  std::ifstream f(absl::StrCat("/proc/", pid, "/stat"));
  if (!f) return ::kill(pid, 0) == 0 || errno == EPERM;
  std::string line;
  std::getline(f, line);
  size_t paren = line.rfind(')');
  if (paren == std::string::npos || paren + 2 >= line.size()) return true;
  char state = line[paren + 2];
  return state != 'Z' && state != 'X';
}

}  // namespace uq::cli
