#include "src/cli/state.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "format/status_macros.h"
#include "src/common/json.h"

namespace uq::cli {

namespace {

bool MakeDir(const std::string& dir) {
  if (::mkdir(dir.c_str(), 0755) == 0 || errno == EEXIST) {
    return ::access(dir.c_str(), W_OK) == 0;
  }
  return false;
}

// A directory of our own: created 0700, or existing, ours and not a symlink
// (a shared /tmp must not let another user plant it).
bool PrivateDir(const std::string& dir) {
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) return false;
  struct stat st;
  return ::lstat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == ::geteuid() &&
         (st.st_mode & 022) == 0;
}

}  // namespace

std::string StateDir() {
  if (const char* env = std::getenv("UBLK_QCOW2_STATE_DIR"); env != nullptr && *env != '\0') {
    MakeDir(env);
    return env;
  }
  if (::geteuid() != 0) {
    // Unprivileged devices: the user's own files, where root's tools do not
    // trust them (a state file names the image `recover` opens).
    if (const char* xdg = std::getenv("XDG_RUNTIME_DIR"); xdg != nullptr && *xdg == '/') {
      std::string dir = absl::StrCat(xdg, "/ublk-qcow2");
      if (PrivateDir(dir)) return dir;
    }
    std::string dir = absl::StrCat("/tmp/ublk-qcow2-", ::geteuid());
    PrivateDir(dir);
    return dir;
  }
  static const std::string kRun = "/run/ublk-qcow2";
  if (MakeDir(kRun)) return kRun;
  static const std::string kTmp = "/tmp/ublk-qcow2";
  MakeDir(kTmp);
  return kTmp;
}

std::string StatePath(uint32_t dev_id) { return absl::StrCat(StateDir(), "/", dev_id, ".json"); }
std::string LogPath(uint32_t dev_id) { return absl::StrCat(StateDir(), "/", dev_id, ".log"); }

std::string EncodeState(const DeviceState& s) {
  const ImageSpec& i = s.spec;
  common::Json j = common::Json::Object();
  j.Set("dev_id", common::Json::Int(s.dev_id));
  j.Set("pid", common::Json::Int(s.pid));
  j.Set("image", common::Json::String(i.image));
  j.Set("format", common::Json::String(FormatName(i.format)));
  j.Set("read_only", common::Json::Bool(i.read_only));
  j.Set("snapshot", common::Json::String(i.snapshot));
  j.Set("queues", common::Json::Int(i.queues));
  j.Set("depth", common::Json::Int(i.depth));
  j.Set("cache", common::Json::String(CacheModeName(i.cache)));
  j.Set("cache_size", common::Json::Int(static_cast<int64_t>(i.cache_size_bytes)));
  j.Set("reissue", common::Json::Bool(i.reissue));
  j.Set("writethrough", common::Json::Bool(i.writethrough));
  j.Set("data_file", common::Json::String(i.data_file));
  j.Set("allow_devices", common::Json::Bool(i.allow_devices));
  return j.Serialize(common::JsonLayout::kLine) + "\n";
}

namespace {

absl::Status Missing(absl::string_view key, absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("state file: bad or missing '", key, "' (", what, ")"));
}

absl::StatusOr<uint64_t> GetUint(const common::Json& j, absl::string_view key, uint64_t max) {
  const common::Json* v = j.Find(std::string_view(key.data(), key.size()));
  if (v == nullptr || v->kind() != common::Json::Kind::kInt || v->AsInt() < 0 ||
      static_cast<uint64_t>(v->AsInt()) > max) {
    return Missing(key, "an integer");
  }
  return static_cast<uint64_t>(v->AsInt());
}

// Absent booleans are false (older state files may lack newer flags).
bool GetBool(const common::Json& j, const char* key) {
  const common::Json* v = j.Find(key);
  return v != nullptr && v->kind() == common::Json::Kind::kBool && v->AsBool();
}

std::string GetString(const common::Json& j, const char* key) {
  const common::Json* v = j.Find(key);
  return v != nullptr && v->kind() == common::Json::Kind::kString ? v->AsString() : "";
}

}  // namespace

absl::StatusOr<DeviceState> DecodeState(absl::string_view text) {
  absl::StatusOr<common::Json> j = common::Json::Parse(std::string_view(text.data(), text.size()));
  if (!j.ok())
    return absl::InvalidArgumentError(absl::StrCat("state file: ", j.status().message()));
  if (j->kind() != common::Json::Kind::kObject) {
    return absl::InvalidArgumentError("state file: not a JSON object");
  }
  DeviceState s;
  UQ_ASSIGN_OR_RETURN(uint64_t dev_id, GetUint(*j, "dev_id", UINT32_MAX));
  s.dev_id = static_cast<uint32_t>(dev_id);
  UQ_ASSIGN_OR_RETURN(uint64_t pid, GetUint(*j, "pid", INT32_MAX));
  s.pid = static_cast<pid_t>(pid);
  UQ_ASSIGN_OR_RETURN(uint64_t queues, GetUint(*j, "queues", UINT16_MAX));
  s.spec.queues = static_cast<uint16_t>(queues);
  UQ_ASSIGN_OR_RETURN(uint64_t depth, GetUint(*j, "depth", UINT16_MAX));
  s.spec.depth = static_cast<uint16_t>(depth);
  UQ_ASSIGN_OR_RETURN(s.spec.cache_size_bytes, GetUint(*j, "cache_size", INT64_MAX));
  s.spec.image = GetString(*j, "image");
  if (s.spec.image.empty()) return absl::InvalidArgumentError("state file: no image");
  s.spec.snapshot = GetString(*j, "snapshot");
  UQ_ASSIGN_OR_RETURN(s.spec.format, ParseFormat(GetString(*j, "format")));
  s.spec.read_only = GetBool(*j, "read_only");
  s.spec.reissue = GetBool(*j, "reissue");
  s.spec.writethrough = GetBool(*j, "writethrough");
  s.spec.data_file = GetString(*j, "data_file");
  s.spec.allow_devices = GetBool(*j, "allow_devices");
  // State files from before --cache served through the page cache.
  const std::string cache = GetString(*j, "cache");
  if (cache.empty()) {
    s.spec.cache = CacheMode::kWriteback;
  } else {
    UQ_ASSIGN_OR_RETURN(s.spec.cache, ParseCacheMode(cache));
  }
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
