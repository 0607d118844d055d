#include "src/cli/state.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace uq::cli {

namespace {

bool MakeDir(const std::string& dir) {
  if (::mkdir(dir.c_str(), 0755) == 0 || errno == EEXIST) {
    return ::access(dir.c_str(), W_OK) == 0;
  }
  return false;
}

}  // namespace

std::string StateDir() {
  if (const char* env = std::getenv("UBLK_QCOW2_STATE_DIR"); env != nullptr && *env != '\0') {
    MakeDir(env);
    return env;
  }
  static const std::string kRun = "/run/ublk-qcow2";
  if (MakeDir(kRun)) return kRun;
  static const std::string kTmp = "/tmp/ublk-qcow2";
  MakeDir(kTmp);
  return kTmp;
}

std::string StatePath(uint32_t dev_id) { return absl::StrCat(StateDir(), "/", dev_id, ".json"); }
std::string LogPath(uint32_t dev_id) { return absl::StrCat(StateDir(), "/", dev_id, ".log"); }

std::string JsonQuote(absl::string_view s) {
  std::string out = "\"";
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
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  out += '"';
  return out;
}

std::string EncodeState(const DeviceState& s) {
  const ImageSpec& i = s.spec;
  return absl::StrCat("{\"dev_id\": ", s.dev_id, ", \"pid\": ", s.pid,
                      ", \"image\": ", JsonQuote(i.image), ", \"format\": \"", FormatName(i.format),
                      "\", \"read_only\": ", i.read_only ? "true" : "false",
                      ", \"snapshot\": ", JsonQuote(i.snapshot), ", \"queues\": ", i.queues,
                      ", \"depth\": ", i.depth, ", \"cache_size\": ", i.cache_size_bytes,
                      ", \"reissue\": ", i.reissue ? "true" : "false",
                      ", \"writethrough\": ", i.writethrough ? "true" : "false", "}\n");
}

absl::StatusOr<std::map<std::string, std::string>> ParseFlatJson(absl::string_view t) {
  std::map<std::string, std::string> out;
  size_t i = 0;
  auto skip = [&] {
    while (i < t.size() && std::isspace(static_cast<unsigned char>(t[i]))) ++i;
  };
  auto bad = [&](const char* what) {
    return absl::InvalidArgumentError(absl::StrCat("state file: ", what, " at offset ", i));
  };
  auto read_string = [&](std::string* s) -> bool {
    if (i >= t.size() || t[i] != '"') return false;
    ++i;
    while (i < t.size() && t[i] != '"') {
      char c = t[i++];
      if (c == '\\') {
        if (i >= t.size()) return false;
        char e = t[i++];
        switch (e) {
          case 'n':
            *s += '\n';
            break;
          case 't':
            *s += '\t';
            break;
          case 'u': {
            unsigned v;
            if (i + 4 > t.size() || !absl::SimpleHexAtoi(t.substr(i, 4), &v) || v > 0x7f) {
              return false;
            }
            *s += static_cast<char>(v);
            i += 4;
            break;
          }
          default:
            *s += e;
        }
      } else {
        *s += c;
      }
    }
    if (i >= t.size()) return false;
    ++i;
    return true;
  };
  skip();
  if (i >= t.size() || t[i] != '{') return bad("expected '{'");
  ++i;
  skip();
  if (i < t.size() && t[i] == '}') return out;
  while (true) {
    skip();
    std::string key;
    if (!read_string(&key)) return bad("expected a key");
    skip();
    if (i >= t.size() || t[i] != ':') return bad("expected ':'");
    ++i;
    skip();
    std::string value;
    if (i < t.size() && t[i] == '"') {
      if (!read_string(&value)) return bad("bad string");
    } else {
      while (i < t.size() && t[i] != ',' && t[i] != '}' &&
             !std::isspace(static_cast<unsigned char>(t[i]))) {
        value += t[i++];
      }
      if (value.empty()) return bad("expected a value");
    }
    out[key] = value;
    skip();
    if (i < t.size() && t[i] == ',') {
      ++i;
      continue;
    }
    if (i < t.size() && t[i] == '}') return out;
    return bad("expected ',' or '}'");
  }
}

absl::StatusOr<DeviceState> DecodeState(absl::string_view text) {
  auto kv = ParseFlatJson(text);
  if (!kv.ok()) return kv.status();
  DeviceState s;
  auto get_int = [&](const char* key, uint64_t* v) -> absl::Status {
    auto it = kv->find(key);
    if (it == kv->end() || !absl::SimpleAtoi(it->second, v)) {
      return absl::InvalidArgumentError(absl::StrCat("state file: bad or missing '", key, "'"));
    }
    return absl::OkStatus();
  };
  auto get_bool = [&](const char* key) {
    auto it = kv->find(key);
    return it != kv->end() && it->second == "true";
  };
  uint64_t v;
  if (auto st = get_int("dev_id", &v); !st.ok()) return st;
  s.dev_id = static_cast<uint32_t>(v);
  if (auto st = get_int("pid", &v); !st.ok()) return st;
  s.pid = static_cast<pid_t>(v);
  if (auto st = get_int("queues", &v); !st.ok()) return st;
  s.spec.queues = static_cast<uint16_t>(v);
  if (auto st = get_int("depth", &v); !st.ok()) return st;
  s.spec.depth = static_cast<uint16_t>(v);
  if (auto st = get_int("cache_size", &v); !st.ok()) return st;
  s.spec.cache_size_bytes = v;
  s.spec.image = (*kv)["image"];
  if (s.spec.image.empty()) return absl::InvalidArgumentError("state file: no image");
  s.spec.snapshot = (*kv)["snapshot"];
  auto f = ParseFormat((*kv)["format"]);
  if (!f.ok()) return f.status();
  s.spec.format = *f;
  s.spec.read_only = get_bool("read_only");
  s.spec.reissue = get_bool("reissue");
  s.spec.writethrough = get_bool("writethrough");
  return s;
}

absl::Status WriteState(const DeviceState& state) {
  std::string path = StatePath(state.dev_id);
  std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    f << EncodeState(state);
    f.flush();
    if (!f) return absl::InternalError(absl::StrCat("cannot write ", tmp));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("cannot rename ", tmp, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::StatusOr<DeviceState> ReadState(uint32_t dev_id) {
  std::string path = StatePath(dev_id);
  std::ifstream f(path);
  if (!f) return absl::NotFoundError(absl::StrCat("no state file ", path));
  std::stringstream ss;
  ss << f.rdbuf();
  auto s = DecodeState(ss.str());
  if (!s.ok())
    return absl::Status(s.status().code(), absl::StrCat(path, ": ", s.status().message()));
  return s;
}

void RemoveState(uint32_t dev_id) { ::unlink(StatePath(dev_id).c_str()); }

}  // namespace uq::cli
