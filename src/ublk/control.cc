#include "src/ublk/control.h"

#include <fcntl.h>
#include <linux/capability.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

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

bool HasCapSysAdmin() {
  __user_cap_header_struct header{};
  header.version = _LINUX_CAPABILITY_VERSION_3;
  header.pid = 0;
  __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = {};
  if (syscall(SYS_capget, &header, data) != 0) return geteuid() == 0;
  return (data[CAP_TO_INDEX(CAP_SYS_ADMIN)].effective & CAP_TO_MASK(CAP_SYS_ADMIN)) != 0;
}

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
      return absl::PermissionDeniedError(
          absl::StrCat("cannot open ", kControlPath, ": ", std::strerror(e),
                       " (ublk needs root / CAP_SYS_ADMIN, or a group the administrator "
                       "granted ",
                       kControlPath, " to)"));
    }
    return absl::UnavailableError(
        absl::StrCat("cannot open ", kControlPath, ": ", std::strerror(e)));
  }
  auto loop = io::EventLoop::Create(4, IORING_SETUP_SQE128);
  if (!loop.ok()) {
    ::close(fd);
    return loop.status();
  }
  std::unique_ptr<Control> control(new Control(fd, std::move(*loop)));
  control->ProbeFeatures();
  return control;
}

void Control::ProbeFeatures() {
  // 6.1 looks the device (-1) up before the number and answers ENODEV, or
  // EPERM without CAP_SYS_ADMIN; any error means "no GET_FEATURES".
  uint64_t flags = 0;
  CtrlCmd c = MakeCmd(UINT32_MAX);
  c.addr = reinterpret_cast<uint64_t>(&flags);
  c.len = sizeof(flags);
  if (SendEncoded(IoctlCtrl(kCmdGetFeatures), c) == 0) {
    features_.probed = true;
    features_.flags = flags;
    encoding_ = (flags & kFlagCmdIoctlEncode) != 0 ? Encoding::kIoctl : Encoding::kLegacy;
  } else {
    features_.probed = false;
    features_.flags = kBaselineFlags;
  }
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

bool Control::NeedsPath(uint32_t dev_id) {
  if (!features_.Has(kFlagUnprivilegedDev)) return false;
  auto it = unprivileged_.find(dev_id);
  if (it == unprivileged_.end()) {
    // Learn it (GET_DEV_INFO2 records the answer); a failure shows up again
    // in the command itself.
    if (!GetDevInfo(dev_id).ok()) return false;
    it = unprivileged_.find(dev_id);
    if (it == unprivileged_.end()) return false;
  }
  return it->second;
}

int Control::Send(uint32_t nr, uint32_t dev_id, void* buf, uint16_t len, uint64_t data0,
                  uint16_t queue_id) {
  CtrlCmd c = MakeCmd(dev_id);
  c.queue_id = queue_id;
  c.data[0] = data0;
  const bool with_path = nr == kCmdGetDevInfo2 || NeedsPath(dev_id);
  if (!with_path) {
    c.addr = reinterpret_cast<uint64_t>(buf);
    c.len = len;
    return SendNumbered(nr, c);
  }
  // [path, NUL][buffer]: the kernel checks the path, then moves addr past it.
  std::string path = absl::StrCat(kCharDevPrefix, dev_id);
  std::vector<char> both(path.size() + 1 + len);
  std::memcpy(both.data(), path.c_str(), path.size() + 1);
  if (len > 0) std::memcpy(both.data() + path.size() + 1, buf, len);
  c.dev_path_len = static_cast<uint16_t>(path.size() + 1);
  c.addr = reinterpret_cast<uint64_t>(both.data());
  c.len = static_cast<uint16_t>(both.size());
  int res = SendNumbered(nr, c);
  if (res >= 0 && len > 0) std::memcpy(buf, both.data() + path.size() + 1, len);
  return res;
}

int Control::SendNumbered(uint32_t nr, const CtrlCmd& cmd) {
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
          absl::StrCat(msg, features_.Has(kFlagUnprivilegedDev)
                                ? " (the device belongs to another user, or needs CAP_SYS_ADMIN)"
                                : " (ublk control commands need CAP_SYS_ADMIN on this kernel)"));
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
  unprivileged_[out.dev_id] = (out.flags & kFlagUnprivilegedDev) != 0;
  return out;
}

absl::Status Control::DelDev(uint32_t dev_id) {
  absl::Status st = Check(Send(kCmdDelDev, dev_id, nullptr, 0), "DEL_DEV", dev_id);
  if (st.ok()) unprivileged_.erase(dev_id);
  return st;
}

absl::Status Control::SetParams(uint32_t dev_id, const Params& params) {
  Params copy = params;
  return Check(Send(kCmdSetParams, dev_id, &copy, sizeof(copy)), "SET_PARAMS", dev_id);
}

absl::Status Control::StartDev(uint32_t dev_id, pid_t server_pid) {
  return Check(Send(kCmdStartDev, dev_id, nullptr, 0, static_cast<uint64_t>(server_pid)),
               "START_DEV", dev_id);
}

absl::Status Control::StopDev(uint32_t dev_id) {
  return Check(Send(kCmdStopDev, dev_id, nullptr, 0), "STOP_DEV", dev_id);
}

absl::StatusOr<CtrlDevInfo> Control::GetDevInfo(uint32_t dev_id) {
  CtrlDevInfo info{};
  int res;
  if (features_.Has(kFlagUnprivilegedDev)) {
    // GET_DEV_INFO2 works for every device; it needs the /dev/ublkcN node,
    // without which (ENOENT) only a privileged device can be asked about.
    res = Send(kCmdGetDevInfo2, dev_id, &info, sizeof(info));
    if (res == -ENOENT) {
      CtrlCmd c = MakeCmd(dev_id);
      c.addr = reinterpret_cast<uint64_t>(&info);
      c.len = sizeof(info);
      res = SendNumbered(kCmdGetDevInfo, c);
    }
    if (res >= 0) unprivileged_[dev_id] = (info.flags & kFlagUnprivilegedDev) != 0;
  } else {
    res = Send(kCmdGetDevInfo, dev_id, &info, sizeof(info));
  }
  if (res < 0) return Check(res, "GET_DEV_INFO", dev_id);
  return info;
}

absl::StatusOr<cpu_set_t> Control::GetQueueAffinity(uint32_t dev_id, uint16_t queue_id) {
  cpu_set_t set;
  CPU_ZERO(&set);
  int res = Send(kCmdGetQueueAffinity, dev_id, &set, sizeof(set), queue_id);
  if (res < 0) return Check(res, "GET_QUEUE_AFFINITY", dev_id);
  return set;
}

absl::Status Control::StartUserRecovery(uint32_t dev_id) {
  return Check(Send(kCmdStartUserRecovery, dev_id, nullptr, 0), "START_USER_RECOVERY", dev_id);
}

absl::Status Control::EndUserRecovery(uint32_t dev_id, pid_t server_pid) {
  return Check(Send(kCmdEndUserRecovery, dev_id, nullptr, 0, static_cast<uint64_t>(server_pid)),
               "END_USER_RECOVERY", dev_id);
}

}  // namespace uq::ublk
