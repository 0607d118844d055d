#include "src/cli/serve.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/sysinfo.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "src/cli/command_util.h"
#include "src/cli/open_image.h"
#include "src/cli/sd_notify.h"
#include "src/cli/state.h"
#include "src/ublk/control.h"
#include "src/ublk/server.h"

namespace uq::cli {

namespace {

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
    // recover serves the same files whatever the working directory then.
    for (std::string* path : {&spec.image, &spec.data_file}) {
      if (path == &spec.data_file && path->empty()) continue;  // none named
      char* real = ::realpath(path->c_str(), nullptr);
      if (real == nullptr) {
        return notify.Error(
            absl::NotFoundError(absl::StrCat("cannot open ", *path, ": ", std::strerror(errno))));
      }
      *path = real;
      std::free(real);
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

}  // namespace

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

int ServeInForeground(const Command& cmd, bool recover) {
  Notifier notify(-1);
  return RunServer(cmd, recover, notify);
}

}  // namespace uq::cli
