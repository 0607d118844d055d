#include "tests/interop/interop_util.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

namespace uq::interop {

std::string Quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << data;
}

RunResult RunCommand(const std::string& command) {
  TempDir tmp;
  const std::string out_path = tmp.File("stdout");
  const std::string err_path = tmp.File("stderr");
  const std::string full =
      "(" + command + ") >" + Quote(out_path) + " 2>" + Quote(err_path) + " </dev/null";
  const int status = std::system(full.c_str());
  RunResult r;
  if (status != -1 && WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  r.out = ReadFile(out_path);
  r.err = ReadFile(err_path);
  return r;
}

RunResult In(const std::string& dir, const std::string& command) {
  return RunCommand("cd " + Quote(dir) + " && " + command);
}

bool HaveTool(const std::string& tool) {
  return std::system(("command -v " + Quote(tool) + " >/dev/null 2>&1").c_str()) == 0;
}

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string templ = std::string(base && *base ? base : "/tmp") + "/uq-interop-XXXXXX";
  char* made = mkdtemp(templ.data());
  if (made == nullptr) {
    ADD_FAILURE() << "mkdtemp failed for " << templ;
    path_ = "/nonexistent";
    return;
  }
  path_ = made;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

namespace {

const char* KindName(common::Json::Kind k) {
  switch (k) {
    case common::Json::Kind::kNull:
      return "null";
    case common::Json::Kind::kBool:
      return "bool";
    case common::Json::Kind::kInt:
      return "int";
    case common::Json::Kind::kString:
      return "string";
    case common::Json::Kind::kArray:
      return "array";
    case common::Json::Kind::kObject:
      return "object";
  }
  return "?";
}

}  // namespace

std::string JsonDiff(const common::Json& a, const common::Json& b, const std::string& where) {
  using Kind = common::Json::Kind;
  if (a.kind() != b.kind()) {
    return where + ": " + KindName(a.kind()) + " vs " + KindName(b.kind());
  }
  switch (a.kind()) {
    case Kind::kNull:
      return "";
    case Kind::kBool:
      return a.AsBool() == b.AsBool() ? ""
                                      : where + ": " + (a.AsBool() ? "true" : "false") + " vs " +
                                            (b.AsBool() ? "true" : "false");
    case Kind::kInt:
      return a.AsInt() == b.AsInt()
                 ? ""
                 : where + ": " + std::to_string(a.AsInt()) + " vs " + std::to_string(b.AsInt());
    case Kind::kString:
      return a.AsString() == b.AsString()
                 ? ""
                 : where + ": \"" + a.AsString() + "\" vs \"" + b.AsString() + "\"";
    case Kind::kArray:
      if (a.items().size() != b.items().size()) {
        return where + ": " + std::to_string(a.items().size()) + " vs " +
               std::to_string(b.items().size()) + " elements";
      }
      for (size_t i = 0; i < a.items().size(); ++i) {
        std::string d = JsonDiff(a.items()[i], b.items()[i], where + "[" + std::to_string(i) + "]");
        if (!d.empty()) return d;
      }
      return "";
    case Kind::kObject:
      for (const auto& [key, value] : a.members()) {
        const common::Json* other = b.Find(key);
        if (other == nullptr) return where + "." + key + ": only in the first";
        std::string d = JsonDiff(value, *other, where + "." + key);
        if (!d.empty()) return d;
      }
      for (const auto& [key, value] : b.members()) {
        if (a.Find(key) == nullptr) return where + "." + key + ": only in the second";
      }
      return "";
  }
  return "";
}

common::Json ParseOrDie(const std::string& text) {
  absl::StatusOr<common::Json> j = common::Json::Parse(text);
  if (!j.ok()) {
    ADD_FAILURE() << j.status() << "\n" << text;
    return common::Json();
  }
  return *std::move(j);
}

std::string InfoWithoutVaryingFields(const std::string& json) {
  static const std::regex kVarying(R"x("(date-sec|date-nsec|actual-size)": [0-9]+)x");
  static const std::regex kName(R"x("filename": "[^"]*")x");
  return std::regex_replace(std::regex_replace(json, kVarying, "\"$1\": 0"), kName,
                            "\"filename\": \"\"");
}

}  // namespace uq::interop
