#include "src/ublk/server.h"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "format/status_macros.h"
#include "src/ublk/params.h"

namespace uq::ublk {

namespace {

// START_USER_RECOVERY answers EBUSY until the dead server's /dev/ublkcN is
// fully released and the device is QUIESCED (the kernel's monitor runs every
// few seconds).
constexpr auto kRecoveryWait = std::chrono::seconds(30);
// devtmpfs creates /dev/ublkcN right away, a udev rule may briefly replace it.
constexpr auto kCdevWait = std::chrono::seconds(5);

// An unprivileged device's /dev/ublkcN is root's until the udev rule hands it
// to its owner: wait for that too.
absl::StatusOr<int> OpenCharDev(uint32_t dev_id, bool unprivileged) {
  std::string path = absl::StrCat(kCharDevPrefix, dev_id);
  auto deadline = std::chrono::steady_clock::now() + (unprivileged ? 2 * kCdevWait : kCdevWait);
  while (true) {
    int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd >= 0) return fd;
    int e = errno;
    const bool wait = e == ENOENT || e == EBUSY || (unprivileged && (e == EACCES || e == EPERM));
    if (!wait || std::chrono::steady_clock::now() > deadline) {
      return absl::UnavailableError(absl::StrCat(
          "cannot open ", path, ": ", std::strerror(e),
          unprivileged && (e == EACCES || e == EPERM)
              ? " (the udev rule installed with ublk-qcow2 gives an unprivileged device's "
                "nodes to its owner: is it installed?)"
              : ""));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

}  // namespace

absl::StatusOr<uint64_t> NewDeviceFlags(const ServerOptions& options, const KernelFeatures& kernel,
                                        bool privileged) {
  uint64_t flags = kFlagUserRecovery | (options.reissue ? kFlagUserRecoveryReissue : 0);
  bool unprivileged = false;
  switch (options.unprivileged) {
    case Want::kOn:
      if (!kernel.Has(kFlagUnprivilegedDev)) {
        return absl::FailedPreconditionError(
            "--unprivileged: this kernel has no unprivileged ublk devices "
            "(UBLK_F_UNPRIVILEGED_DEV, Linux 6.3 or later)");
      }
      if (privileged) {
        return absl::FailedPreconditionError(
            "--unprivileged: a process with CAP_SYS_ADMIN always gets a privileged device; "
            "run attach as the user");
      }
      unprivileged = true;
      break;
    case Want::kAuto:
      unprivileged = !privileged && kernel.Has(kFlagUnprivilegedDev);
      break;
    case Want::kOff:
      break;
  }
  bool user_copy = false;
  switch (options.user_copy) {
    case Want::kOn:
      if (!kernel.Has(kFlagUserCopy)) {
        return absl::FailedPreconditionError(
            "--user-copy: this kernel has no ublk user copy (UBLK_F_USER_COPY, Linux 6.5 or "
            "later)");
      }
      if (unprivileged) {
        return absl::FailedPreconditionError(
            "--user-copy: the kernel allows no user copy on unprivileged devices");
      }
      user_copy = true;
      break;
    case Want::kAuto:
      user_copy = kernel.Has(kFlagUserCopy) && !unprivileged;
      break;
    case Want::kOff:
      break;
  }
  if (unprivileged) {
    // The kernel drops user recovery from unprivileged devices (6.3-6.12 at
    // least): do not ask for what will not be there.
    flags = kFlagUnprivilegedDev;
  }
  if (user_copy) flags |= kFlagUserCopy;
  return flags;
}

absl::StatusOr<std::unique_ptr<Server>> Server::Start(std::unique_ptr<Control> control,
                                                      const ServerOptions& options,
                                                      std::vector<QueueBackend> backends) {
  if (backends.empty()) return absl::InvalidArgumentError("no queue to serve");
  std::unique_ptr<Server> server(new Server(std::move(control), options));
  server->done_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (server->done_fd_ < 0) {
    return absl::InternalError(absl::StrCat("eventfd: ", std::strerror(errno)));
  }
  absl::Status st = options.recover ? server->StartRecovery(backends) : server->StartNew(backends);
  // Backends that did not become queues (startup failed, or the kernel gave
  // fewer queues than asked for) are closed here.
  for (QueueBackend& b : backends) {
    if (b.device != nullptr) CloseDevice(*b.loop, *b.device).IgnoreError();
  }
  if (!st.ok()) {
    // A new device goes away entirely; a failed recovery leaves the device
    // (its disk may still hold a mounted filesystem) for `detach`.
    server->Teardown(/*del=*/server->added_).IgnoreError();
    server->shut_down_ = true;
    return st;
  }
  return server;
}

Server::~Server() { Shutdown().IgnoreError(); }

absl::Status Server::StartNew(std::vector<QueueBackend>& backends) {
  engine::Device& first = *backends[0].device;
  CtrlDevInfo want{};
  want.nr_hw_queues = static_cast<uint16_t>(backends.size());
  want.queue_depth = options_.depth;
  want.max_io_buf_bytes = options_.max_io_buf_bytes;
  want.dev_id = options_.dev_id;
  UQ_ASSIGN_OR_RETURN(want.flags, NewDeviceFlags(options_, control_->features(), HasCapSysAdmin()));
  UQ_ASSIGN_OR_RETURN(info_, control_->AddDev(want));
  added_ = true;
  if (info_.nr_hw_queues == 0 || info_.queue_depth == 0) {
    return absl::InternalError("ADD_DEV returned no queues");
  }
  const size_t nr_queues = std::min<size_t>(backends.size(), info_.nr_hw_queues);
  // Before any other command: an unprivileged device's commands need the
  // caller's permission on /dev/ublkcN, which the udev rule grants once the
  // node exists (OpenCharDev waits for it).
  UQ_ASSIGN_OR_RETURN(cdev_fd_,
                      OpenCharDev(info_.dev_id, (info_.flags & kFlagUnprivilegedDev) != 0));

  Geometry g;
  g.size_bytes = first.size_bytes();
  g.granularity_bytes = first.granularity_bytes();
  g.read_only = first.read_only();
  g.max_io_buf_bytes = info_.max_io_buf_bytes;
  g.writethrough = options_.writethrough;
  UQ_RETURN_IF_ERROR(control_->SetParams(info_.dev_id, ComputeParams(g)));

  UQ_RETURN_IF_ERROR(StartQueues(backends, nr_queues));
  UQ_RETURN_IF_ERROR(control_->StartDev(info_.dev_id, getpid()));
  live_ = true;
  return absl::OkStatus();
}

absl::Status Server::StartRecovery(std::vector<QueueBackend>& backends) {
  UQ_ASSIGN_OR_RETURN(info_, control_->GetDevInfo(options_.dev_id));
  if ((info_.flags & kFlagUnprivilegedDev) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "device ", info_.dev_id,
        " is an unprivileged device, which the kernel gives no user recovery: detach it"));
  }
  if ((info_.flags & kFlagUserRecovery) == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("device ", info_.dev_id, " was created without user recovery"));
  }
  if (backends.size() != info_.nr_hw_queues) {
    return absl::InvalidArgumentError(absl::StrCat(
        "device ", info_.dev_id, " has ", info_.nr_hw_queues, " queues, not ", backends.size()));
  }
  auto deadline = std::chrono::steady_clock::now() + kRecoveryWait;
  while (true) {
    absl::Status st = control_->StartUserRecovery(info_.dev_id);
    if (st.ok()) break;
    if (!absl::IsUnavailable(st) || std::chrono::steady_clock::now() > deadline) {
      return absl::Status(
          st.code(),
          absl::StrCat(st.message(),
                       info_.state == kStateLive ? " (is its server still running?)" : ""));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  UQ_RETURN_IF_ERROR(StartQueues(backends, backends.size()));
  UQ_RETURN_IF_ERROR(control_->EndUserRecovery(info_.dev_id, getpid()));
  live_ = true;
  UQ_ASSIGN_OR_RETURN(CtrlDevInfo now, control_->GetDevInfo(info_.dev_id));
  info_.state = now.state;
  info_.ublksrv_pid = now.ublksrv_pid;
  return absl::OkStatus();
}

absl::Status Server::StartQueues(std::vector<QueueBackend>& backends, size_t nr_queues) {
  if (cdev_fd_ < 0) {
    UQ_ASSIGN_OR_RETURN(cdev_fd_,
                        OpenCharDev(info_.dev_id, (info_.flags & kFlagUnprivilegedDev) != 0));
  }
  // The IO commands follow the numbering the kernel accepted for ADD_DEV; a
  // kernel that knows ioctl encoding keeps the flag in dev_info.
  const bool ioctl_io = (info_.flags & kFlagCmdIoctlEncode) != 0;
  for (size_t q = 0; q < nr_queues; ++q) {
    QueueConfig config;
    config.q_id = static_cast<uint16_t>(q);
    config.depth = info_.queue_depth;
    config.buf_bytes = info_.max_io_buf_bytes;
    config.cdev_fd = cdev_fd_;
    config.ioctl_encoded = ioctl_io;
    config.user_copy = (info_.flags & kFlagUserCopy) != 0;
    config.done_fd = done_fd_;
    config.writethrough = options_.writethrough;
    absl::StatusOr<cpu_set_t> cpus = control_->GetQueueAffinity(info_.dev_id, config.q_id);
    if (cpus.ok()) {
      config.has_affinity = true;
      config.affinity = *cpus;
    }
    UQ_ASSIGN_OR_RETURN(auto queue, Queue::Create(config, std::move(backends[q].loop),
                                                  std::move(backends[q].device)));
    queues_.push_back(std::move(queue));
  }
  for (auto& q : queues_) q->Start();
  return absl::OkStatus();
}

absl::Status Server::Teardown(bool del) {
  absl::Status first;
  if (live_) {
    // With UBLK_F_USER_RECOVERY, STOP_DEV first quiesces the device and then
    // fails every new request (6.1 sets force_abort), so the page cache that
    // del_gendisk() would write back never reaches us. Write it back now,
    // while the queues still serve.
    std::string path = absl::StrCat(kBlockDevPrefix, info_.dev_id);
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
      if (::fsync(fd) != 0) {
        first.Update(
            absl::DataLossError(absl::StrCat("flushing ", path, ": ", std::strerror(errno))));
      }
      ::close(fd);
    }
    live_ = false;
  }
  if (!queues_.empty() || cdev_fd_ >= 0) {
    // Completes every pending FETCH with ABORT (also on a never-started or
    // already-stopped device), after the kernel drained in-flight requests.
    absl::Status st = control_->StopDev(info_.dev_id);
    if (!st.ok() && !absl::IsNotFound(st)) first.Update(st);
  }
  for (auto& q : queues_) q->Join();
  for (auto& q : queues_) first.Update(q->close_status());
  queues_.clear();  // munmap: DEL_DEV waits for every mapping to go
  if (cdev_fd_ >= 0) {
    ::close(cdev_fd_);
    cdev_fd_ = -1;
  }
  if (del && added_) {
    first.Update(control_->DelDev(info_.dev_id));
  }
  if (done_fd_ >= 0) {
    ::close(done_fd_);
    done_fd_ = -1;
  }
  return first;
}

absl::Status Server::Shutdown() {
  if (shut_down_) return absl::OkStatus();
  shut_down_ = true;
  added_ = true;  // a recovered device is ours to delete too
  return Teardown(/*del=*/true);
}

}  // namespace uq::ublk
