// Helpers of the open policy tests (open_policy_test.cc and
// open_policy_devices_test.cc, one executable): the qcow2-img under test,
// shell commands through it with a time limit, and byte patches of an image.
#ifndef UQ_TESTS_INTEROP_OPEN_POLICY_UTIL_H_
#define UQ_TESTS_INTEROP_OPEN_POLICY_UTIL_H_

#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <string>

#include "tests/interop/interop_util.h"

namespace uq::interop::open_policy {

inline std::string Qcow2Img() {
  const char* env = std::getenv("UQ_QCOW2_IMG");
  return env && *env ? env : QCOW2_IMG_PATH;
}

inline RunResult Sh(const std::string& command) { return RunCommand(command); }

inline void MustSh(const std::string& command) {
  const RunResult r = RunCommand(command);
  ASSERT_EQ(r.exit_code, 0) << command << "\n" << r.err;
}

// qcow2-img with a time limit: a FIFO opened by mistake would block.
inline std::string Img(const std::string& args) {
  return "timeout 60 " + Quote(Qcow2Img()) + " " + args;
}

inline int Lines(const std::string& text) {
  return static_cast<int>(std::count(text.begin(), text.end(), '\n'));
}

// Replaces the only occurrence of `from` in the file with `to` (same length).
inline void Patch(const std::string& path, const std::string& from, const std::string& to) {
  ASSERT_EQ(from.size(), to.size());
  std::string bytes = ReadFile(path);
  const size_t at = bytes.find(from);
  ASSERT_NE(at, std::string::npos) << from << " not in " << path;
  ASSERT_EQ(bytes.find(from, at + 1), std::string::npos);
  bytes.replace(at, from.size(), to);
  WriteFile(path, bytes);
}

// Removes the backing format header extension: its type becomes one no
// reader knows, which readers skip (the spec), so the image names no format.
inline void DropBackingFormat(const std::string& path) {
  Patch(path, std::string("\xe2\x79\x2a\xca", 4), std::string("\x75\x6e\x6b\x6e", 4));
}

}  // namespace uq::interop::open_policy

#endif  // UQ_TESTS_INTEROP_OPEN_POLICY_UTIL_H_
