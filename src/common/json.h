// The one JSON value, writer and reader of the project (qcow2-img's
// --output=json, the ublk-qcow2 state file and `list --output=json`, and the
// tests that read qemu-img's output back).
//
// Objects keep insertion order; numbers are int64 (qemu-img prints only
// integers; a fraction or exponent is a parse error).
//
// Two layouts:
//   kQemu  byte for byte what qemu-img 7.2 prints for a QAPI object: 4-space
//          indent, "key": value, members in the iteration order of QEMU's
//          QDict (a 512-bucket hash table; colliding keys later-inserted
//          first, so build objects in the QAPI schema's member order), and
//          strings escaped as QEMU's JSON writer does (every code point
//          outside printable ASCII as \uXXXX, malformed UTF-8 as \uFFFD).
//   kLine  one line, members in insertion order, bytes >= 0x80 verbatim and
//          control bytes as \u00xx: any byte string (a file name) round-trips
//          through Parse unchanged.
//
// Thread-safety: a Json is a plain value.
#ifndef UQ_SRC_COMMON_JSON_H_
#define UQ_SRC_COMMON_JSON_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace uq::common {

enum class JsonLayout { kQemu, kLine };

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
  // build objects once).
  Json& Push(Json v);
  Json& Set(std::string key, Json v);
  // Objects: the member named `key`, or nullptr.
  const Json* Find(std::string_view key) const;

  // No trailing newline.
  std::string Serialize(JsonLayout layout = JsonLayout::kQemu) const;

  // Any JSON document whose numbers are integers; \u escapes (surrogate
  // pairs included) become UTF-8. Errors name the byte offset.
  static absl::StatusOr<Json> Parse(std::string_view text);

 private:
  void SerializeTo(std::string& out, JsonLayout layout, int depth) const;

  Kind kind_ = Kind::kNull;
  bool bool_ = false;
  int64_t int_ = 0;
  std::string string_;
  std::vector<Json> items_;
  std::vector<std::pair<std::string, Json>> members_;
};

// `s` as a JSON string literal, escaped for `layout`.
std::string JsonQuote(std::string_view s, JsonLayout layout);

// The QDict bucket QEMU files `key` under (exposed for tests).
uint32_t QemuDictBucket(std::string_view key);

}  // namespace uq::common

#endif  // UQ_SRC_COMMON_JSON_H_
