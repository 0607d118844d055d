#include "src/cli/commands.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/sysinfo.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "format/status_macros.h"
#include "src/cli/inspect_image.h"
#include "src/cli/open_image.h"
#include "src/cli/sd_notify.h"
#include "src/cli/state.h"
#include "src/common/json.h"
#include "src/common/version.h"
#include "src/io/event_loop.h"
#include "src/ublk/control.h"
#include "src/ublk/features.h"
#include "src/ublk/server.h"

namespace uq::cli {

namespace {

using Clock = std::chrono::steady_clock;

constexpr auto kDetachWait = std::chrono::seconds(120);
constexpr auto kQuiesceWait = std::chrono::seconds(15);
constexpr auto kPartitionWait = std::chrono::seconds(10);

ublk::Want ToWant(Toggle t) {
  switch (t) {
    case Toggle::kOn:
      return ublk::Want::kOn;
    case Toggle::kOff:
      return ublk::Want::kOff;
    case Toggle::kAuto:
      break;
  }
  return ublk::Want::kAuto;
}

int Fail(const absl::Status& st) {
  std::fprintf(stderr, "ublk-qcow2: %.*s\n", static_cast<int>(st.message().size()),
               st.message().data());
  return 1;
}

// A problem that does not stop the command: "ublk-qcow2: warning: <problem>".
void Warn(const absl::Status& st) {
  if (st.ok()) return;
  std::fprintf(stderr, "ublk-qcow2: warning: %.*s\n", static_cast<int>(st.message().size()),
               st.message().data());
}

std::string BlockDevPath(uint32_t id) { return absl::StrCat(ublk::kBlockDevPrefix, id); }

// Alive and not a zombie (a reparented daemon may linger unreaped).
bool ProcessAlive(pid_t pid) {
  if (pid <= 0) return false;
  std::ifstream f(absl::StrCat("/proc/", pid, "/stat"));
  if (!f) return ::kill(pid, 0) == 0 || errno == EPERM;
  std::string line;
  std::getline(f, line);
  size_t paren = line.rfind(')');
  if (paren == std::string::npos || paren + 2 >= line.size()) return true;
  char state = line[paren + 2];
  return state != 'Z' && state != 'X';
}

// ---------------------------------------------------------------------------
// Opening the image.

// ---------------------------------------------------------------------------
// Starting a server, in the foreground or as a daemon.

// Tells whoever started the server how startup went: prints, and tells a
// service manager (foreground), or writes one line to the parent over a pipe
// (daemon).
class Notifier {
 public:
  explicit Notifier(int pipe_fd) : fd_(pipe_fd) {}
  void Ok(uint32_t dev_id, const std::string& image) {
    std::string dev = BlockDevPath(dev_id);
    if (fd_ < 0) {
      std::printf("%s\n", dev.c_str());
      std::fflush(stdout);
      // systemd's Type=notify: the device is live, its partitions scanned.
      Warn(NotifyServiceManager(absl::StrCat("READY=1\nSTATUS=serving ", image, " as ", dev)));
      return;
    }
    std::string line = absl::StrCat("OK ", dev, "\n");
    WriteAll(line);
    // From here on the daemon has no terminal: its messages go to the log.
    int log = ::open(LogPath(dev_id).c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null >= 0) {
      ::dup2(null, STDIN_FILENO);
      ::dup2(null, STDOUT_FILENO);
      ::dup2(log >= 0 ? log : null, STDERR_FILENO);
    }
    if (log >= 0) ::close(log);
    if (null >= 0) ::close(null);
    ::close(fd_);
    fd_ = -1;
  }
  int Error(const absl::Status& st) {
    if (fd_ < 0) return Fail(st);
    WriteAll(absl::StrCat("ERR ", st.message(), "\n"));
    return 1;
  }
  // The server is detaching (a foreground server tells its service manager).
  void Stopping() {
    if (fd_ < 0) Warn(NotifyServiceManager("STOPPING=1"));
  }

 private:
  void WriteAll(const std::string& s) {
    size_t off = 0;
    while (off < s.size()) {
      ssize_t n = ::write(fd_, s.data() + off, s.size() - off);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return;
      off += static_cast<size_t>(n);
    }
  }
  int fd_;
};

sigset_t StopSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  return set;
}

// Serves until SIGTERM/SIGINT/SIGHUP or until the device stops by itself,
// then detaches cleanly.
int ServeUntilStopped(ublk::Server& server, Notifier& notify) {
  sigset_t set = StopSignals();
  int sfd = signalfd(-1, &set, SFD_CLOEXEC);
  pollfd fds[2] = {{sfd, POLLIN, 0}, {server.done_fd(), POLLIN, 0}};
  while (true) {
    int r = ::poll(fds, 2, -1);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) break;
    if (fds[0].revents & POLLIN) {
      signalfd_siginfo si;
      if (::read(sfd, &si, sizeof(si)) == sizeof(si)) {
        std::fprintf(stderr, "ublk-qcow2: device %u: %s, detaching\n", server.dev_id(),
                     strsignal(static_cast<int>(si.ssi_signo)));
      }
      break;
    }
    if (fds[1].revents & POLLIN) {
      std::fprintf(stderr, "ublk-qcow2: device %u: stopped, detaching\n", server.dev_id());
      break;
    }
  }
  if (sfd >= 0) ::close(sfd);
  notify.Stopping();
  uint32_t id = server.dev_id();
  absl::Status st = server.Shutdown();
  RemoveState(id);
  if (!st.ok()) return Fail(st);
  return 0;
}

// attach (recover == false) or recover: everything after the fork.
int RunServer(const Command& cmd, bool recover, Notifier& notify) {
  // Stop signals are read through a signalfd; block them before any thread
  // exists so every queue thread inherits the mask.
  sigset_t stop = StopSignals();
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  auto control = ublk::Control::Open();
  if (!control.ok()) return notify.Error(control.status());

  ImageSpec spec = cmd.spec;
  ublk::ServerOptions options;
  uint16_t queues = 1;
  if (recover) {
    uint32_t id = static_cast<uint32_t>(cmd.dev_id);
    auto info = (*control)->GetDevInfo(id);
    if (!info.ok()) {
      if (absl::IsNotFound(info.status())) {
        return notify.Error(absl::NotFoundError(absl::StrCat("no ublk device ", id)));
      }
      return notify.Error(info.status());
    }
    if ((info->flags & ublk::kFlagUnprivilegedDev) != 0) {
      return notify.Error(absl::FailedPreconditionError(absl::StrCat(
          "device ", id,
          " is an unprivileged device, which the kernel gives no user recovery: detach it")));
    }
    auto state = ReadState(id);
    if (!state.ok()) {
      return notify.Error(
          absl::NotFoundError(absl::StrCat("device ", id, " has no state file (", StatePath(id),
                                           "): it was not attached by ublk-qcow2 on this system")));
    }
    if (info->state == ublk::kStateDead) {
      return notify.Error(absl::FailedPreconditionError(
          absl::StrCat("device ", id, " is dead (stopped), nothing to recover: detach it")));
    }
    // A server killed a moment ago may still be exiting.
    auto dying = Clock::now() + std::chrono::seconds(10);
    while (ProcessAlive(info->ublksrv_pid) && info->ublksrv_pid != getpid() &&
           Clock::now() < dying) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (ProcessAlive(info->ublksrv_pid) && info->ublksrv_pid != getpid()) {
      return notify.Error(absl::FailedPreconditionError(
          absl::StrCat("device ", id, " is still served by pid ", info->ublksrv_pid)));
    }
    spec = state->spec;
    queues = info->nr_hw_queues;
    options.recover = true;
    options.writethrough = spec.writethrough;
    options.dev_id = id;
    options.depth = info->queue_depth;
  } else {
    char* real = ::realpath(spec.image.c_str(), nullptr);
    if (real == nullptr) {
      return notify.Error(absl::NotFoundError(
          absl::StrCat("cannot open ", spec.image, ": ", std::strerror(errno))));
    }
    spec.image = real;
    std::free(real);
    // recover serves the same files whatever the working directory then.
    if (!spec.data_file.empty()) {
      char* data = ::realpath(spec.data_file.c_str(), nullptr);
      if (data == nullptr) {
        return notify.Error(absl::NotFoundError(
            absl::StrCat("cannot open ", spec.data_file, ": ", std::strerror(errno))));
      }
      spec.data_file = data;
      std::free(data);
    }
    // The kernel gives at most one queue per possible CPU.
    queues =
        spec.queues != 0
            ? static_cast<uint16_t>(std::clamp(static_cast<int>(spec.queues), 1, get_nprocs_conf()))
            : static_cast<uint16_t>(
                  std::clamp(get_nprocs(), 1, static_cast<int>(kMaxDefaultQueues)));
    options.depth = spec.depth;
    options.reissue = spec.reissue;
    options.writethrough = spec.writethrough;
    options.user_copy = ToWant(cmd.user_copy);
    options.unprivileged = ToWant(cmd.unprivileged);
  }

  // Open and validate the image before the kernel hears of a device.
  std::string note;
  auto backends = OpenQueueBackends(spec, queues, &note);
  if (!backends.ok()) return notify.Error(backends.status());

  auto server = ublk::Server::Start(std::move(*control), options, std::move(*backends));
  if (!server.ok()) return notify.Error(server.status());
  spec.queues = (*server)->queues();
  spec.depth = (*server)->info().queue_depth;
  DeviceState state{(*server)->dev_id(), getpid(), spec};
  Warn(WriteState(state));
  // Only once the device is live, so that a failed attach prints one line.
  if (!note.empty()) std::fprintf(stderr, "ublk-qcow2: %s\n", note.c_str());
  notify.Ok((*server)->dev_id(), spec.image);
  return ServeUntilStopped(**server, notify);
}

// Forks; the child becomes the server (new session, no terminal once the
// device is live). Returns the device's id once the child reports it live.
absl::StatusOr<uint32_t> StartDaemon(const Command& cmd, bool recover) {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) {
    return absl::InternalError(absl::StrCat("pipe: ", std::strerror(errno)));
  }
  std::fflush(stdout);
  std::fflush(stderr);
  pid_t pid = ::fork();
  if (pid < 0) return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
  if (pid == 0) {
    ::close(p[0]);
    ::setsid();
    Notifier notify(p[1]);
    std::exit(RunServer(cmd, recover, notify));
  }
  ::close(p[1]);
  std::string msg;
  char buf[512];
  while (true) {
    ssize_t n = ::read(p[0], buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    msg.append(buf, static_cast<size_t>(n));
    if (msg.find('\n') != std::string::npos) break;
  }
  ::close(p[0]);
  if (!msg.empty() && msg.back() == '\n') msg.pop_back();
  if (msg.rfind("OK ", 0) == 0) {
    auto id = DevIdFromPath(msg.substr(3));
    if (id.ok()) return *id;
    return absl::InternalError(absl::StrCat("server reported '", msg, "'"));
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (msg.rfind("ERR ", 0) == 0) return absl::UnknownError(msg.substr(4));
  return absl::InternalError(absl::StrCat("server exited during startup (",
                                          WIFSIGNALED(status)
                                              ? absl::StrCat("signal ", WTERMSIG(status))
                                              : absl::StrCat("status ", WEXITSTATUS(status)),
                                          ")"));
}

// ---------------------------------------------------------------------------
// Detaching, listing.

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

// ---------------------------------------------------------------------------
// mount / unmount.

absl::Status RunMountTool(const std::string& source, const std::string& dir, bool read_only) {
  std::fflush(stdout);
  pid_t pid = ::fork();
  if (pid < 0) return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
  if (pid == 0) {
    const char* argv[] = {"mount",        "-o",        read_only ? "ro" : "rw",
                          source.c_str(), dir.c_str(), nullptr};
    ::execvp("mount", const_cast<char* const*>(argv));
    std::fprintf(stderr, "ublk-qcow2: cannot run mount: %s\n", std::strerror(errno));
    std::_Exit(127);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(absl::StrCat("cannot mount ", source, " on ", dir));
  }
  return absl::OkStatus();
}

// mount(2) and umount(2) need CAP_SYS_ADMIN whatever ublk allows.
absl::Status NeedRootFor(const char* what) {
  if (ublk::HasCapSysAdmin()) return absl::OkStatus();
  return absl::PermissionDeniedError(
      absl::StrCat(what,
                   " needs root (mounting is root-only); without root, `attach` the image and have "
                   "root mount the /dev/ublkbN it prints"));
}

int DoMount(const Command& cmd) {
  if (absl::Status root = NeedRootFor("mount"); !root.ok()) return Fail(root);
  struct stat st;
  if (::stat(cmd.dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(cmd.dir, " is not a directory")));
  }
  int partition = cmd.partition;
  if (partition < 0) {
    // Without --partition: what the disk holds decides, read before attaching.
    auto layout = InspectImage(cmd.spec);
    if (!layout.ok()) return Fail(layout.status());
    auto choice = ChooseMountTarget(*layout);
    if (!choice.ok()) {
      std::fputs(LayoutText(*layout, cmd.spec.image).c_str(), stderr);
      return Fail(absl::Status(choice.status().code(),
                               absl::StrCat(cmd.spec.image, ": ", choice.status().message())));
    }
    partition = static_cast<int>(*choice);
  }
  auto id = StartDaemon(cmd, /*recover=*/false);
  if (!id.ok()) return Fail(id.status());
  std::string source = BlockDevPath(*id);
  if (partition > 0) absl::StrAppend(&source, "p", partition);

  auto undo = [&](const absl::Status& why) {
    if (auto control = ublk::Control::Open(); control.ok()) {
      Detach(**control, *id).IgnoreError();
    }
    return Fail(why);
  };
  // The kernel scans partitions at START_DEV; devtmpfs adds the nodes.
  auto deadline = Clock::now() + kPartitionWait;
  while (::access(source.c_str(), F_OK) != 0) {
    if (Clock::now() > deadline) {
      return undo(absl::NotFoundError(absl::StrCat(cmd.spec.image, " has no partition ", partition,
                                                   " (", source, " did not appear)")));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (absl::Status m = RunMountTool(source, cmd.dir, cmd.spec.read_only); !m.ok()) {
    return undo(m);
  }
  std::printf("%s\n", source.c_str());
  return 0;
}

std::string UnescapeMountField(absl::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size()) {
      int v = 0;
      bool ok = true;
      for (size_t k = 1; k <= 3; ++k) {
        char c = s[i + k];
        if (c < '0' || c > '7') ok = false;
        v = v * 8 + (c - '0');
      }
      if (ok) {
        out += static_cast<char>(v);
        i += 3;
        continue;
      }
    }
    out += s[i];
  }
  return out;
}

int DoUnmount(const Command& cmd) {
  if (absl::Status root = NeedRootFor("unmount"); !root.ok()) return Fail(root);
  char* real = ::realpath(cmd.dir.c_str(), nullptr);
  if (real == nullptr) {
    return Fail(absl::NotFoundError(absl::StrCat(cmd.dir, ": ", std::strerror(errno))));
  }
  std::string dir = real;
  std::free(real);
  std::ifstream f("/proc/self/mountinfo");
  std::string line, source;
  while (std::getline(f, line)) {
    // id parent maj:min root mountpoint opts [optional...] - fstype source super
    std::vector<absl::string_view> fields = absl::StrSplit(line, ' ');
    if (fields.size() < 5 || UnescapeMountField(fields[4]) != dir) continue;
    auto dash = std::find(fields.begin(), fields.end(), "-");
    if (dash != fields.end() && dash + 2 < fields.end()) {
      source = UnescapeMountField(*(dash + 2));  // the last mount on dir wins
    }
  }
  if (source.empty()) {
    return Fail(absl::NotFoundError(absl::StrCat(dir, " is not a mount point")));
  }
  auto id = DevIdFromPath(source);
  if (!id.ok()) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat(dir, " is mounted from ", source, ", not a ublk device")));
  }
  if (::umount2(dir.c_str(), 0) != 0) {
    return Fail(
        absl::InternalError(absl::StrCat("cannot unmount ", dir, ": ", std::strerror(errno))));
  }
  auto control = ublk::Control::Open();
  if (!control.ok()) return Fail(control.status());
  absl::Status st = Detach(**control, *id);
  return st.ok() ? 0 : Fail(st);
}

// ---------------------------------------------------------------------------
// features

int DoFeatures(const Command& cmd) {
  auto control = ublk::Control::Open();
  if (!control.ok()) return Fail(control.status());
  utsname u{};
  std::string release = ::uname(&u) == 0 ? u.release : "?";
  ublk::KernelFeatures k = (*control)->features();
  const bool privileged = ublk::HasCapSysAdmin();
  std::string out = cmd.json ? ublk::FeaturesJson(k, privileged, release)
                             : ublk::FeaturesHuman(k, privileged, release);
  std::fputs(out.c_str(), stdout);
  return 0;
}

}  // namespace

int RunCommand(const Command& cmd) {
  switch (cmd.verb) {
    case Verb::kHelp:
      std::fputs(cmd.help.empty() ? kUsage : cmd.help.c_str(), stdout);
      return 0;
    case Verb::kVersion:
      std::printf("ublk-qcow2 version %s\n", UQ_VERSION);
      return 0;
    case Verb::kAttach:
    case Verb::kRecover: {
      const bool recover = cmd.verb == Verb::kRecover;
      if (cmd.foreground) {
        Notifier notify(-1);
        return RunServer(cmd, recover, notify);
      }
      auto id = StartDaemon(cmd, recover);
      if (!id.ok()) return Fail(id.status());
      std::printf("%s\n", BlockDevPath(*id).c_str());
      return 0;
    }
    case Verb::kDetach:
      return DoDetach(cmd);
    case Verb::kList:
      return DoList(cmd);
    case Verb::kMount:
      return DoMount(cmd);
    case Verb::kUnmount:
      return DoUnmount(cmd);
    case Verb::kFeatures:
      return DoFeatures(cmd);
    case Verb::kPartitions: {
      absl::StatusOr<std::string> out = PartitionsOutput(cmd);
      if (!out.ok()) return Fail(out.status());
      std::fputs(out->c_str(), stdout);
      return 0;
    }
  }
  return 1;
}

int Main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  auto cmd = ParseCommandLine(args);
  if (!cmd.ok()) return Fail(cmd.status());
  return RunCommand(*cmd);
}

}  // namespace uq::cli
