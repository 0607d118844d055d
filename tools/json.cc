#include "tools/json.h"

#include <cstdio>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace uq::tools {

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

namespace {

void Quote(std::string& out, const std::string& s) {
  out += '"';
  for (unsigned char c : s) {
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
      case '\r':
        out += "\\r";
        break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += '"';
}

void Indent(std::string& out, int depth) { out.append(static_cast<size_t>(depth) * 4, ' '); }

}  // namespace

void Json::SerializeTo(std::string& out, int depth) const {
  switch (kind_) {
    case Kind::kNull:
      out += "null";
      break;
    case Kind::kBool:
      out += bool_ ? "true" : "false";
      break;
    case Kind::kInt:
      out += absl::StrCat(int_);
      break;
    case Kind::kString:
      Quote(out, string_);
      break;
    case Kind::kArray:
      if (items_.empty()) {  // qemu-img's printer still breaks the line
        out += "[\n";
        Indent(out, depth);
        out += ']';
        break;
      }
      out += "[\n";
      for (size_t i = 0; i < items_.size(); ++i) {
        Indent(out, depth + 1);
        items_[i].SerializeTo(out, depth + 1);
        out += i + 1 < items_.size() ? ",\n" : "\n";
      }
      Indent(out, depth);
      out += ']';
      break;
    case Kind::kObject:
      if (members_.empty()) {
        out += "{\n";
        Indent(out, depth);
        out += '}';
        break;
      }
      out += "{\n";
      for (size_t i = 0; i < members_.size(); ++i) {
        Indent(out, depth + 1);
        Quote(out, members_[i].first);
        out += ": ";
        members_[i].second.SerializeTo(out, depth + 1);
        out += i + 1 < members_.size() ? ",\n" : "\n";
      }
      Indent(out, depth);
      out += '}';
      break;
  }
}

std::string Json::Serialize() const {
  std::string out;
  SerializeTo(out, 0);
  return out;
}

namespace {

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

  absl::StatusOr<std::string> ParseString() {
    if (!Consume("\"")) return Error("expected string");
    std::string s;
    while (pos_ < text_.size() && text_[pos_] != '"') {
      char c = text_[pos_++];
      if (c != '\\') {
        s += c;
        continue;
      }
      if (pos_ >= text_.size()) break;
      char e = text_[pos_++];
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
        case 'u': {
          if (pos_ + 4 > text_.size()) return Error("short \\u escape");
          unsigned code = 0;
          for (int i = 0; i < 4; ++i) {
            char h = text_[pos_++];
            code <<= 4;
            if (h >= '0' && h <= '9') {
              code |= static_cast<unsigned>(h - '0');
            } else if (h >= 'a' && h <= 'f') {
              code |= static_cast<unsigned>(h - 'a' + 10);
            } else if (h >= 'A' && h <= 'F') {
              code |= static_cast<unsigned>(h - 'A' + 10);
            } else {
              return Error("bad \\u escape");
            }
          }
          if (code < 0x80) {
            s += static_cast<char>(code);
          } else if (code < 0x800) {
            s += static_cast<char>(0xc0 | (code >> 6));
            s += static_cast<char>(0x80 | (code & 0x3f));
          } else {
            s += static_cast<char>(0xe0 | (code >> 12));
            s += static_cast<char>(0x80 | ((code >> 6) & 0x3f));
            s += static_cast<char>(0x80 | (code & 0x3f));
          }
          break;
        }
        default:
          s += e;  // \" \\ \/
      }
    }
    if (!Consume("\"")) return Error("unterminated string");
    return s;
  }

  absl::StatusOr<Json> ParseValue(int depth) {
    if (depth > kMaxDepth) return Error("nesting too deep");
    SkipSpace();
    if (pos_ >= text_.size()) return Error("unexpected end");
    const char c = text_[pos_];
    if (c == '{') {
      ++pos_;
      Json obj = Json::Object();
      SkipSpace();
      if (Consume("}")) return obj;
      for (;;) {
        SkipSpace();
        absl::StatusOr<std::string> key = ParseString();
        if (!key.ok()) return key.status();
        SkipSpace();
        if (!Consume(":")) return Error("expected ':'");
        absl::StatusOr<Json> v = ParseValue(depth + 1);
        if (!v.ok()) return v;
        obj.Set(*std::move(key), *std::move(v));
        SkipSpace();
        if (Consume("}")) return obj;
        if (!Consume(",")) return Error("expected ',' or '}'");
      }
    }
    if (c == '[') {
      ++pos_;
      Json arr = Json::Array();
      SkipSpace();
      if (Consume("]")) return arr;
      for (;;) {
        absl::StatusOr<Json> v = ParseValue(depth + 1);
        if (!v.ok()) return v;
        arr.Push(*std::move(v));
        SkipSpace();
        if (Consume("]")) return arr;
        if (!Consume(",")) return Error("expected ',' or ']'");
      }
    }
    if (c == '"') {
      absl::StatusOr<std::string> s = ParseString();
      if (!s.ok()) return s.status();
      return Json::String(*std::move(s));
    }
    if (Consume("true")) return Json::Bool(true);
    if (Consume("false")) return Json::Bool(false);
    if (Consume("null")) return Json();
    if (c == '-' || (c >= '0' && c <= '9')) {
      const bool negative = c == '-';
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
    return Error("unexpected character");
  }

  std::string_view text_;
  size_t pos_ = 0;
};

}  // namespace

absl::StatusOr<Json> Json::Parse(std::string_view text) { return Parser(text).ParseDocument(); }

}  // namespace uq::tools
