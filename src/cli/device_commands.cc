#include "src/cli/device_commands.h"

#include <dirent.h>
#include <signal.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "format/status_macros.h"
#include "src/cli/command_util.h"
#include "src/cli/state.h"
#include "src/common/json.h"
#include "src/ublk/features.h"

namespace uq::cli {

namespace {

constexpr auto kDetachWait = std::chrono::seconds(120);
constexpr auto kQuiesceWait = std::chrono::seconds(15);

}  // namespace

std::vector<uint32_t> ListDeviceIds() {
  std::vector<uint32_t> ids;
  for (const char* dir : {"/sys/class/ublk-char", "/dev"}) {
    DIR* d = ::opendir(dir);
    if (d == nullptr) continue;
    while (dirent* e = ::readdir(d)) {
      absl::string_view name = e->d_name;
      uint32_t id;
      if (name.rfind("ublkc", 0) == 0 && absl::SimpleAtoi(name.substr(5), &id)) {
        ids.push_back(id);
      }
    }
    ::closedir(d);
    if (!ids.empty()) break;
  }
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

absl::Status Detach(ublk::Control& control, uint32_t id) {
  auto info = control.GetDevInfo(id);
  if (!info.ok()) {
    if (absl::IsNotFound(info.status())) {
      RemoveState(id);
      return absl::NotFoundError(absl::StrCat("no ublk device ", id));
    }
    return info.status();
  }
  pid_t pid = info->ublksrv_pid;
  auto state = ReadState(id);
  if (pid <= 0 && state.ok()) pid = state->pid;

  if (ProcessAlive(pid)) {
    // The server flushes, closes the image, stops and deletes the device.
    if (::kill(pid, SIGTERM) != 0 && errno != ESRCH) {
      return absl::PermissionDeniedError(
          absl::StrCat("cannot signal server pid ", pid, ": ", std::strerror(errno)));
    }
    auto deadline = Clock::now() + kDetachWait;
    bool gone = false;
    while (Clock::now() < deadline) {
      bool alive = ProcessAlive(pid);
      auto now = control.GetDevInfo(id);
      gone = !now.ok() && absl::IsNotFound(now.status());
      if (gone && !alive) return absl::OkStatus();
      if (!alive) break;  // died without deleting the device: finish below
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (gone) return absl::OkStatus();
    if (ProcessAlive(pid)) {
      return absl::DeadlineExceededError(
          absl::StrCat("server pid ", pid, " did not detach device ", id, " in time"));
    }
    info = control.GetDevInfo(id);
    if (!info.ok()) return absl::IsNotFound(info.status()) ? absl::OkStatus() : info.status();
  }

  // No server: the kernel notices a dead server within its monitor period
  // (LIVE -> QUIESCED with user recovery, or -> DEAD); stop then delete.
  auto deadline = Clock::now() + kQuiesceWait;
  while (info->state == ublk::kStateLive && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    info = control.GetDevInfo(id);
    if (!info.ok()) return absl::IsNotFound(info.status()) ? absl::OkStatus() : info.status();
  }
  UQ_RETURN_IF_ERROR(control.StopDev(id));
  UQ_RETURN_IF_ERROR(control.DelDev(id));
  RemoveState(id);
  return absl::OkStatus();
}

int DoDetach(const Command& cmd) {
  auto control = ublk::Control::Open();
  if (!control.ok()) return Fail(control.status());
  if (!cmd.all) {
    absl::Status st = Detach(**control, static_cast<uint32_t>(cmd.dev_id));
    return st.ok() ? 0 : Fail(st);
  }
  int rc = 0;
  // Without CAP_SYS_ADMIN, --all means the devices this user may detach (its
  // own unprivileged ones); the kernel refuses the others.
  const bool privileged = ublk::HasCapSysAdmin();
  for (uint32_t id : ListDeviceIds()) {
    absl::Status st = Detach(**control, id);
    if (!privileged && absl::IsPermissionDenied(st)) continue;
    if (!st.ok() && !absl::IsNotFound(st)) rc = Fail(st);
  }
  return rc;
}

int DoList(const Command& cmd) {
  std::vector<uint32_t> ids = ListDeviceIds();
  std::unique_ptr<ublk::Control> control;
  if (!ids.empty()) {
    auto c = ublk::Control::Open();
    if (!c.ok()) return Fail(c.status());
    control = std::move(*c);
  }
  std::string json = "[";
  if (!cmd.json) {
    std::printf("%-4s %-14s %-9s %-6s %-5s %-8s %-3s %s\n", "ID", "DEVICE", "STATE", "QUEUES",
                "DEPTH", "PID", "RO", "IMAGE");
  }
  bool first = true;
  for (uint32_t id : ids) {
    auto info = control->GetDevInfo(id);
    if (!info.ok()) continue;  // deleted meanwhile
    auto state = ReadState(id);
    std::string image = state.ok() ? state->spec.image : "";
    bool ro = state.ok() && state->spec.read_only;
    pid_t pid = info->ublksrv_pid > 0 ? info->ublksrv_pid : (state.ok() ? state->pid : -1);
    const char* st_name = ublk::StateName(info->state);
    const bool unprivileged = (info->flags & ublk::kFlagUnprivilegedDev) != 0;
    if (cmd.json) {
      common::Json o = common::Json::Object();
      o.Set("id", common::Json::Int(id));
      o.Set("device", common::Json::String(BlockDevPath(id)));
      o.Set("image", common::Json::String(image));
      o.Set("format", common::Json::String(state.ok() ? FormatName(state->spec.format) : ""));
      o.Set("state", common::Json::String(st_name));
      o.Set("queues", common::Json::Int(info->nr_hw_queues));
      o.Set("depth", common::Json::Int(info->queue_depth));
      o.Set("pid", common::Json::Int(pid));
      o.Set("read_only", common::Json::Bool(ro));
      o.Set("user_copy", common::Json::Bool((info->flags & ublk::kFlagUserCopy) != 0));
      o.Set("unprivileged", common::Json::Bool(unprivileged));
      o.Set("owner_uid", common::Json::Int(unprivileged ? info->owner_uid : 0));
      o.Set("flags", common::Json::String(ublk::FlagNames(info->flags)));
      absl::StrAppend(&json, first ? "" : ",", "\n  ", o.Serialize(common::JsonLayout::kLine));
    } else {
      std::printf("%-4u %-14s %-9s %-6u %-5u %-8d %-3s %s\n", id, BlockDevPath(id).c_str(), st_name,
                  info->nr_hw_queues, info->queue_depth, pid, ro ? "yes" : "no", image.c_str());
    }
    first = false;
  }
  if (cmd.json) std::printf("%s%s]\n", json.c_str(), first ? "" : "\n");
  return 0;
}

}  // namespace uq::cli
