// A minimal JSON value with insertion-ordered objects: enough to print
// qemu-img-compatible `--output=json` and to read such output back in tests.
// Numbers are kept as int64 (qemu-img prints only integers); a number with a
// fraction or exponent is a parse error.
#ifndef UQ_TOOLS_JSON_H_
#define UQ_TOOLS_JSON_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace uq::tools {

class Json {
 public:
  enum class Kind { kNull, kBool, kInt, kString, kArray, kObject };

  Json() = default;
  static Json Bool(bool b);
  static Json Int(int64_t v);
  static Json String(std::string s);
  static Json Array();
  static Json Object();

  Kind kind() const { return kind_; }
  bool AsBool() const { return bool_; }
  int64_t AsInt() const { return int_; }
  const std::string& AsString() const { return string_; }
  const std::vector<Json>& items() const { return items_; }
  const std::vector<std::pair<std::string, Json>>& members() const { return members_; }

  // Arrays: append. Objects: append a member (no duplicate check: callers
  // build objects once, in the order qemu-img prints them).
  Json& Push(Json v);
  Json& Set(std::string key, Json v);
  // Objects: the member named `key`, or nullptr.
  const Json* Find(std::string_view key) const;

  // qemu-img's layout: 4-space indent, "key": value, no trailing newline.
  std::string Serialize() const;

  static absl::StatusOr<Json> Parse(std::string_view text);

 private:
  void SerializeTo(std::string& out, int depth) const;

  Kind kind_ = Kind::kNull;
  bool bool_ = false;
  int64_t int_ = 0;
  std::string string_;
  std::vector<Json> items_;
  std::vector<std::pair<std::string, Json>> members_;
};

}  // namespace uq::tools

#endif  // UQ_TOOLS_JSON_H_
