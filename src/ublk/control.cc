#include "src/ublk/control.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace uq::ublk {

namespace {

constexpr uint16_t kNoQueue = 0xffff;
constexpr int kENOTSUPP = 524;  // kernel-internal "not supported", seen by userspace as is

// What an unknown command number gets back: EOPNOTSUPP on 6.1 (some
// revisions answer ENOTSUPP or EINVAL).
bool Unsupported(int res) { return res == -EOPNOTSUPP || res == -kENOTSUPP || res == -EINVAL; }

struct SyncWaiter final : io::Completion {
  bool done = false;
  int32_t res = 0;
  void OnComplete(int32_t r, uint32_t) override {
    res = r;
    done = true;
  }
};

CtrlCmd MakeCmd(uint32_t dev_id) {
  CtrlCmd c{};
  c.dev_id = dev_id;
  c.queue_id = kNoQueue;
  return c;
}

}  // namespace

const char* StateName(uint16_t state) {
  switch (state) {
    case kStateDead:
      return "DEAD";
    case kStateLive:
      return "LIVE";
    case kStateQuiesced:
      return "QUIESCED";
    case kStateFailIo:
      return "FAIL_IO";
    default:
      return "UNKNOWN";
  }
}

absl::StatusOr<std::unique_ptr<Control>> Control::Open() {
  int fd = ::open(kControlPath, O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    if (e == ENOENT) {
      return absl::NotFoundError(
          absl::StrCat(kControlPath, " not found: load the ublk_drv module (modprobe ublk_drv)"));
    }
    if (e == EACCES || e == EPERM) {
      return absl::PermissionDeniedError(absl::StrCat("cannot open ", kControlPath, ": ",
                                                      std::strerror(e),
                                                      " (ublk needs root / CAP_SYS_ADMIN)"));
    }
    return absl::UnavailableError(
        absl::StrCat("cannot open ", kControlPath, ": ", std::strerror(e)));
  }
  auto loop = io::EventLoop::Create(4, IORING_SETUP_SQE128);
  if (!loop.ok()) {
    ::close(fd);
    return loop.status();
  }
  return std::unique_ptr<Control>(new Control(fd, std::move(*loop)));
}

Control::~Control() { ::close(fd_); }

int Control::SendEncoded(uint32_t op, const CtrlCmd& cmd) {
  io_uring_sqe* sqe = loop_->GetSqe();  // zeroed, 128 bytes
  sqe->opcode = IORING_OP_URING_CMD;
  sqe->fd = fd_;
  sqe->cmd_op = op;
  std::memcpy(sqe->cmd, &cmd, sizeof(cmd));
  SyncWaiter waiter;
  io_uring_sqe_set_data(sqe, static_cast<io::Completion*>(&waiter));
  while (!waiter.done) {
    int r = loop_->RunOnce(true);
    if (r < 0 && r != -EINTR) {
      // The ring itself failed; the SQE may still complete later, so the
      // waiter must not go out of scope with it pending. This only happens on
      // a broken ring: give up loudly.
      std::abort();
    }
  }
  return waiter.res;
}

int Control::Send(uint32_t nr, const CtrlCmd& cmd) {
  switch (encoding_) {
    case Encoding::kIoctl:
      return SendEncoded(IoctlCtrl(nr), cmd);
    case Encoding::kLegacy:
      return SendEncoded(nr, cmd);
    case Encoding::kUnknown:
      break;
  }
  int res = SendEncoded(IoctlCtrl(nr), cmd);
  if (!Unsupported(res)) {
    encoding_ = Encoding::kIoctl;
    return res;
  }
  int legacy = SendEncoded(nr, cmd);
  if (!Unsupported(legacy)) encoding_ = Encoding::kLegacy;
  return legacy;
}

absl::Status Control::Check(int res, const char* what, uint32_t dev_id) {
  if (res >= 0) return absl::OkStatus();
  std::string msg = absl::StrCat(what, " (device ", dev_id, "): ", std::strerror(-res));
  switch (-res) {
    case EPERM:
    case EACCES:
      return absl::PermissionDeniedError(
          absl::StrCat(msg, " (ublk control commands need CAP_SYS_ADMIN)"));
    case ENODEV:
    case ENOENT:
      return absl::NotFoundError(msg);
    case EBUSY:
      return absl::UnavailableError(msg);
    default:
      return absl::InternalError(msg);
  }
}

absl::StatusOr<CtrlDevInfo> Control::AddDev(const CtrlDevInfo& info) {
  CtrlDevInfo out{};
  auto attempt = [&](bool encoded) {
    out = info;
    if (encoded) {
      out.flags |= kFlagCmdIoctlEncode;
    } else {
      out.flags &= ~kFlagCmdIoctlEncode;
    }
    CtrlCmd c = MakeCmd(info.dev_id);
    c.addr = reinterpret_cast<uint64_t>(&out);
    c.len = sizeof(out);
    return SendEncoded(encoded ? IoctlCtrl(kCmdAddDev) : kCmdAddDev, c);
  };
  int res;
  if (encoding_ == Encoding::kUnknown) {
    res = attempt(true);
    // 6.1 looks the device up by id for every number but its own ADD_DEV,
    // so an ioctl-encoded ADD_DEV (dev_id -1) answers ENODEV there.
    if (Unsupported(res) || res == -ENODEV) {
      res = attempt(false);
      if (res >= 0) encoding_ = Encoding::kLegacy;
    } else if (res >= 0) {
      encoding_ = Encoding::kIoctl;
    }
  } else {
    res = attempt(encoding_ == Encoding::kIoctl);
  }
  if (res < 0) return Check(res, "ADD_DEV", info.dev_id);
  return out;
}

absl::Status Control::DelDev(uint32_t dev_id) {
  return Check(Send(kCmdDelDev, MakeCmd(dev_id)), "DEL_DEV", dev_id);
}

absl::Status Control::SetParams(uint32_t dev_id, const Params& params) {
  Params copy = params;
  CtrlCmd c = MakeCmd(dev_id);
  c.addr = reinterpret_cast<uint64_t>(&copy);
  c.len = sizeof(copy);
  return Check(Send(kCmdSetParams, c), "SET_PARAMS", dev_id);
}

absl::Status Control::StartDev(uint32_t dev_id, pid_t server_pid) {
  CtrlCmd c = MakeCmd(dev_id);
  c.data[0] = static_cast<uint64_t>(server_pid);
  return Check(Send(kCmdStartDev, c), "START_DEV", dev_id);
}

absl::Status Control::StopDev(uint32_t dev_id) {
  return Check(Send(kCmdStopDev, MakeCmd(dev_id)), "STOP_DEV", dev_id);
}

absl::StatusOr<CtrlDevInfo> Control::GetDevInfo(uint32_t dev_id) {
  CtrlDevInfo info{};
  CtrlCmd c = MakeCmd(dev_id);
  c.addr = reinterpret_cast<uint64_t>(&info);
  c.len = sizeof(info);
  int res = Send(kCmdGetDevInfo, c);
  if (res < 0) return Check(res, "GET_DEV_INFO", dev_id);
  return info;
}

absl::StatusOr<cpu_set_t> Control::GetQueueAffinity(uint32_t dev_id, uint16_t queue_id) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CtrlCmd c = MakeCmd(dev_id);
  c.addr = reinterpret_cast<uint64_t>(&set);
  c.len = sizeof(set);
  c.data[0] = queue_id;
  int res = Send(kCmdGetQueueAffinity, c);
  if (res < 0) return Check(res, "GET_QUEUE_AFFINITY", dev_id);
  return set;
}

absl::Status Control::StartUserRecovery(uint32_t dev_id) {
  return Check(Send(kCmdStartUserRecovery, MakeCmd(dev_id)), "START_USER_RECOVERY", dev_id);
}

absl::Status Control::EndUserRecovery(uint32_t dev_id, pid_t server_pid) {
  CtrlCmd c = MakeCmd(dev_id);
  c.data[0] = static_cast<uint64_t>(server_pid);
  return Check(Send(kCmdEndUserRecovery, c), "END_USER_RECOVERY", dev_id);
}

}  // namespace uq::ublk
