// Helpers for tests that use QEMU's tools as the oracle: running commands,
// temporary directories, comparing JSON documents.
#ifndef UQ_TESTS_INTEROP_INTEROP_UTIL_H_
#define UQ_TESTS_INTEROP_INTEROP_UTIL_H_

#include <string>
#include <vector>

#include "src/common/json.h"

namespace uq::interop {

struct RunResult {
  int exit_code = -1;  // -1: did not exit normally (signal)
  std::string out;
  std::string err;
};

// Runs `command` with /bin/sh, capturing stdout and stderr separately.
RunResult RunCommand(const std::string& command);

// RunCommand of `command` in the directory `dir`.
RunResult In(const std::string& dir, const std::string& command);

// Single-quotes `s` for the shell.
std::string Quote(const std::string& s);

// True if `tool` is on PATH.
bool HaveTool(const std::string& tool);

// A fresh directory under $TMPDIR (or /tmp), removed with its contents on
// destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Order-insensitive comparison of two JSON documents (objects compare by
// key set and values, arrays element-wise). Returns "" if equal, else a
// description of the first difference ("$.format-specific.data.compat: ...").
std::string JsonDiff(const common::Json& a, const common::Json& b, const std::string& where = "$");

// Parses `text` or fails the current test with the text in the message.
common::Json ParseOrDie(const std::string& text);

// `qemu-img info --output=json` text without what may differ between two
// copies of one image changed by different tools: file name, allocated size
// and snapshot dates (each set to 0 or "").
std::string InfoWithoutVaryingFields(const std::string& json);

// File contents (binary), or "" if unreadable.
std::string ReadFile(const std::string& path);
void WriteFile(const std::string& path, const std::string& data);

}  // namespace uq::interop

#endif  // UQ_TESTS_INTEROP_INTEROP_UTIL_H_
