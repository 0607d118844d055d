#include "src/common/json.h"

#include <algorithm>
#include <cstdio>
#include <numeric>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace uq::common {

Json Json::Bool(bool b) {
  Json j;
  j.kind_ = Kind::kBool;
  j.bool_ = b;
  return j;
}
Json Json::Int(int64_t v) {
  Json j;
  j.kind_ = Kind::kInt;
  j.int_ = v;
  return j;
}
Json Json::String(std::string s) {
  Json j;
  j.kind_ = Kind::kString;
  j.string_ = std::move(s);
  return j;
}
Json Json::Array() {
  Json j;
  j.kind_ = Kind::kArray;
  return j;
}
Json Json::Object() {
  Json j;
  j.kind_ = Kind::kObject;
  return j;
}

Json& Json::Push(Json v) {
  items_.push_back(std::move(v));
  return items_.back();
}

Json& Json::Set(std::string key, Json v) {
  members_.emplace_back(std::move(key), std::move(v));
  return members_.back().second;
}

const Json* Json::Find(std::string_view key) const {
  for (const auto& [k, v] : members_) {
    if (k == key) return &v;
  }
  return nullptr;
}

uint32_t QemuDictBucket(std::string_view key) {
  // QEMU's qdict.c hashes keys with tdb_hash into 512 buckets.
  constexpr uint32_t kBuckets = 512;
  uint32_t value = 0x238F13AFu * static_cast<uint32_t>(key.size());
  for (size_t i = 0; i < key.size(); ++i) {
    value += static_cast<uint32_t>(static_cast<unsigned char>(key[i])) << (i * 5 % 24);
  }
  return (1103515243u * value + 12345u) % kBuckets;
}

namespace {

void AppendEscapedUnit(std::string& out, uint32_t unit, bool upper) {
  char buf[8];
  std::snprintf(buf, sizeof(buf), upper ? "\\u%04X" : "\\u%04x", unit);
  out += buf;
}

// Decodes one code point of QEMU's "modified UTF-8" starting at s[*pos] and
// advances *pos past what it consumed; -1 for a malformed sequence (then only
// the bytes that looked valid are consumed, as QEMU's decoder does).
int32_t DecodeModifiedUtf8(std::string_view s, size_t* pos) {
  const unsigned char lead = static_cast<unsigned char>(s[(*pos)++]);
  if (lead < 0x80) return lead;
  if (lead >= 0xFE || (lead & 0x40) == 0) return -1;
  int len = 0;
  unsigned mask = 0x80;
  for (; lead & mask; mask >>= 1) ++len;
  int32_t cp = static_cast<int32_t>(lead & (mask - 1));
  for (int i = 1; i < len; ++i) {
    const unsigned char next =
        *pos < s.size() ? static_cast<unsigned char>(s[*pos]) : static_cast<unsigned char>(0);
    if ((next & 0xC0) != 0x80) return -1;
    ++*pos;
    cp = (cp << 6) | (next & 0x3F);
  }
  static constexpr int32_t kMinForLength[] = {0x80, 0x800, 0x10000, 0x200000, 0x4000000};
  if (cp > 0x10FFFF) return -1;
  if ((cp >= 0xFDD0 && cp <= 0xFDEF) || (cp & 0xFFFE) == 0xFFFE) return -1;  // noncharacters
  if (cp >= 0xD800 && cp <= 0xDFFF) return -1;                               // surrogates
  // Overlong forms are malformed, except the two-byte NUL of modified UTF-8.
  if (cp < kMinForLength[len - 2] && !(cp == 0 && len == 2)) return -1;
  return cp;
}

void QuoteQemu(std::string& out, std::string_view s) {
  out += '"';
  size_t pos = 0;
  while (pos < s.size()) {
    if (s[pos] == '\0') break;  // QEMU's strings end at NUL
    int32_t cp = DecodeModifiedUtf8(s, &pos);
    switch (cp) {
      case '"':
        out += "\\\"";
        continue;
      case '\\':
        out += "\\\\";
        continue;
      case '\b':
        out += "\\b";
        continue;
      case '\f':
        out += "\\f";
        continue;
      case '\n':
        out += "\\n";
        continue;
      case '\r':
        out += "\\r";
        continue;
      case '\t':
        out += "\\t";
        continue;
      default:
        break;
    }
    if (cp < 0) cp = 0xFFFD;
    if (cp > 0xFFFF) {
      AppendEscapedUnit(out, 0xD800 + ((static_cast<uint32_t>(cp) - 0x10000) >> 10), true);
      AppendEscapedUnit(out, 0xDC00 + ((static_cast<uint32_t>(cp) - 0x10000) & 0x3FF), true);
    } else if (cp < 0x20 || cp >= 0x7F) {
      AppendEscapedUnit(out, static_cast<uint32_t>(cp), true);
    } else {
      out += static_cast<char>(cp);
    }
  }
  out += '"';
}

void QuoteBytes(std::string& out, std::string_view s) {
  out += '"';
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          AppendEscapedUnit(out, static_cast<unsigned char>(c), false);
        } else {
          out += c;
        }
    }
  }
  out += '"';
}

void Quote(std::string& out, std::string_view s, JsonLayout layout) {
  if (layout == JsonLayout::kQemu) {
    QuoteQemu(out, s);
  } else {
    QuoteBytes(out, s);
  }
}

// Opens a line inside a container of nesting `depth` (kQemu only).
void NewLine(std::string& out, JsonLayout layout, int depth) {
  if (layout != JsonLayout::kQemu) return;
  out += '\n';
  out.append(static_cast<size_t>(depth) * 4, ' ');
}

// Member indices in QDict iteration order: ascending bucket, and within a
// bucket the most recently inserted first.
std::vector<size_t> QemuMemberOrder(const std::vector<std::pair<std::string, Json>>& members) {
  std::vector<size_t> order(members.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::vector<uint32_t> bucket(members.size());
  for (size_t i = 0; i < members.size(); ++i) bucket[i] = QemuDictBucket(members[i].first);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (bucket[a] != bucket[b]) return bucket[a] < bucket[b];
    return a > b;
  });
  return order;
}

}  // namespace

std::string JsonQuote(std::string_view s, JsonLayout layout) {
  std::string out;
  Quote(out, s, layout);
  return out;
}

void Json::SerializeTo(std::string& out, JsonLayout layout, int depth) const {
  switch (kind_) {
    case Kind::kNull:
      out += "null";
      return;
    case Kind::kBool:
      out += bool_ ? "true" : "false";
      return;
    case Kind::kInt:
      absl::StrAppend(&out, int_);
      return;
    case Kind::kString:
      Quote(out, string_, layout);
      return;
    case Kind::kArray:
    case Kind::kObject:
      break;
  }
  const bool is_object = kind_ == Kind::kObject;
  const size_t count = is_object ? members_.size() : items_.size();
  std::vector<size_t> order;
  if (is_object && layout == JsonLayout::kQemu) {
    order = QemuMemberOrder(members_);
  } else {
    order.resize(count);
    std::iota(order.begin(), order.end(), size_t{0});
  }
  out += is_object ? '{' : '[';
  for (size_t n = 0; n < count; ++n) {
    if (n > 0) out += layout == JsonLayout::kQemu ? "," : ", ";
    NewLine(out, layout, depth + 1);
    const Json* value = nullptr;
    if (is_object) {
      const auto& member = members_[order[n]];
      Quote(out, member.first, layout);
      out += ": ";
      value = &member.second;
    } else {
      value = &items_[order[n]];
    }
    value->SerializeTo(out, layout, depth + 1);
  }
  // QEMU's writer breaks the line before the closing bracket even when the
  // container is empty.
  NewLine(out, layout, depth);
  out += is_object ? '}' : ']';
}

std::string Json::Serialize(JsonLayout layout) const {
  std::string out;
  SerializeTo(out, layout, 0);
  return out;
}

namespace {

void AppendUtf8(std::string& s, uint32_t code) {
  if (code < 0x80) {
    s += static_cast<char>(code);
  } else if (code < 0x800) {
    s += static_cast<char>(0xc0 | (code >> 6));
    s += static_cast<char>(0x80 | (code & 0x3f));
  } else if (code < 0x10000) {
    s += static_cast<char>(0xe0 | (code >> 12));
    s += static_cast<char>(0x80 | ((code >> 6) & 0x3f));
    s += static_cast<char>(0x80 | (code & 0x3f));
  } else {
    s += static_cast<char>(0xf0 | (code >> 18));
    s += static_cast<char>(0x80 | ((code >> 12) & 0x3f));
    s += static_cast<char>(0x80 | ((code >> 6) & 0x3f));
    s += static_cast<char>(0x80 | (code & 0x3f));
  }
}

class Parser {
 public:
  explicit Parser(std::string_view text) : text_(text) {}

  absl::StatusOr<Json> ParseDocument() {
    absl::StatusOr<Json> v = ParseValue(0);
    if (!v.ok()) return v;
    SkipSpace();
    if (pos_ != text_.size()) return Error("trailing characters");
    return v;
  }

 private:
  static constexpr int kMaxDepth = 64;

  absl::Status Error(std::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat("JSON: ", std::string(what), " at offset ", pos_));
  }
  void SkipSpace() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\n' ||
                                   text_[pos_] == '\t' || text_[pos_] == '\r')) {
      ++pos_;
    }
  }
  bool Consume(std::string_view word) {
    if (text_.substr(pos_, word.size()) != word) return false;
    pos_ += word.size();
    return true;
  }

  absl::StatusOr<uint32_t> ParseHex4() {
    if (pos_ + 4 > text_.size()) return Error("short \\u escape");
    uint32_t code = 0;
    for (int i = 0; i < 4; ++i) {
      const char h = text_[pos_++];
      code <<= 4;
      if (h >= '0' && h <= '9') {
        code |= static_cast<uint32_t>(h - '0');
      } else if (h >= 'a' && h <= 'f') {
        code |= static_cast<uint32_t>(h - 'a' + 10);
      } else if (h >= 'A' && h <= 'F') {
        code |= static_cast<uint32_t>(h - 'A' + 10);
      } else {
        return Error("bad \\u escape");
      }
    }
    return code;
  }

  // After "\u": one code unit, or a surrogate pair combined.
  absl::Status ParseUnicodeEscape(std::string& s) {
    absl::StatusOr<uint32_t> code = ParseHex4();
    if (!code.ok()) return code.status();
    if (*code >= 0xD800 && *code < 0xDC00 && text_.substr(pos_, 2) == "\\u") {
      const size_t save = pos_;
      pos_ += 2;
      absl::StatusOr<uint32_t> low = ParseHex4();
      if (!low.ok()) return low.status();
      if (*low >= 0xDC00 && *low < 0xE000) {
        AppendUtf8(s, 0x10000 + ((*code - 0xD800) << 10) + (*low - 0xDC00));
        return absl::OkStatus();
      }
      pos_ = save;
    }
    AppendUtf8(s, *code);
    return absl::OkStatus();
  }

  absl::StatusOr<std::string> ParseString() {
    if (!Consume("\"")) return Error("expected string");
    std::string s;
    while (pos_ < text_.size() && text_[pos_] != '"') {
      const char c = text_[pos_++];
      if (c != '\\') {
        s += c;
        continue;
      }
      if (pos_ >= text_.size()) break;
      const char e = text_[pos_++];
      switch (e) {
        case 'n':
          s += '\n';
          break;
        case 't':
          s += '\t';
          break;
        case 'r':
          s += '\r';
          break;
        case 'b':
          s += '\b';
          break;
        case 'f':
          s += '\f';
          break;
        case 'u':
          if (absl::Status st = ParseUnicodeEscape(s); !st.ok()) return st;
          break;
        case '"':
        case '\\':
        case '/':
          s += e;
          break;
        default:
          return Error("bad escape");
      }
    }
    if (!Consume("\"")) return Error("unterminated string");
    return s;
  }

  absl::StatusOr<Json> ParseNumber() {
    const bool negative = text_[pos_] == '-';
    if (negative) ++pos_;
    uint64_t v = 0;
    size_t digits = 0;
    while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') {
      const uint64_t d = static_cast<uint64_t>(text_[pos_] - '0');
      if (v > (UINT64_MAX - d) / 10) return Error("number too large");
      v = v * 10 + d;
      ++pos_;
      ++digits;
    }
    if (digits == 0) return Error("bad number");
    if (pos_ < text_.size() && (text_[pos_] == '.' || text_[pos_] == 'e' || text_[pos_] == 'E')) {
      return Error("non-integer number");
    }
    if (v > static_cast<uint64_t>(INT64_MAX) + (negative ? 1 : 0)) {
      return Error("number out of range");
    }
    return Json::Int(negative ? static_cast<int64_t>(0 - v) : static_cast<int64_t>(v));
  }

  // After '{' or '[': the members or items up to the closing bracket.
  absl::StatusOr<Json> ParseContainer(bool is_object, int depth) {
    Json out = is_object ? Json::Object() : Json::Array();
    const char close = is_object ? '}' : ']';
    SkipSpace();
    if (Consume(std::string_view(&close, 1))) return out;
    for (;;) {
      std::string key;
      if (is_object) {
        SkipSpace();
        absl::StatusOr<std::string> k = ParseString();
        if (!k.ok()) return k.status();
        key = *std::move(k);
        SkipSpace();
        if (!Consume(":")) return Error("expected ':'");
      }
      absl::StatusOr<Json> v = ParseValue(depth + 1);
      if (!v.ok()) return v;
      if (is_object) {
        out.Set(std::move(key), *std::move(v));
      } else {
        out.Push(*std::move(v));
      }
      SkipSpace();
      if (Consume(std::string_view(&close, 1))) return out;
      if (!Consume(",")) return Error(is_object ? "expected ',' or '}'" : "expected ',' or ']'");
    }
  }

  absl::StatusOr<Json> ParseValue(int depth) {
    if (depth > kMaxDepth) return Error("nesting too deep");
    SkipSpace();
    if (pos_ >= text_.size()) return Error("unexpected end");
    const char c = text_[pos_];
    if (c == '{' || c == '[') {
      ++pos_;
      return ParseContainer(c == '{', depth);
    }
    if (c == '"') {
      absl::StatusOr<std::string> s = ParseString();
      if (!s.ok()) return s.status();
      return Json::String(*std::move(s));
    }
    if (Consume("true")) return Json::Bool(true);
    if (Consume("false")) return Json::Bool(false);
    if (Consume("null")) return Json();
    if (c == '-' || (c >= '0' && c <= '9')) return ParseNumber();
    return Error("unexpected character");
  }

  std::string_view text_;
  size_t pos_ = 0;
};

}  // namespace

absl::StatusOr<Json> Json::Parse(std::string_view text) { return Parser(text).ParseDocument(); }

}  // namespace uq::common
