// Control: the ublk control plane over /dev/ublk-control.
//
// Every command is an IORING_OP_URING_CMD on a private SQE128 ring, sent and
// waited for synchronously (the kernel runs it in an io-wq worker).
//
// Open() asks the kernel for its features (UBLK_U_CMD_GET_FEATURES, 6.5+).
// A kernel that answers and has CMD_IOCTL_ENCODE gets only ioctl-encoded
// numbers (UBLK_U_CMD_*): it may have been built without the legacy ones. A
// kernel that does not answer (6.1) has its numbering probed on first use:
// ioctl-encoded first, then the legacy numbers, on EOPNOTSUPP or EINVAL; the
// answer is remembered for the Control's lifetime.
//
// Unprivileged devices (UBLK_F_UNPRIVILEGED_DEV): every command about one
// carries the /dev/ublkcN path, which the kernel checks against the caller's
// file permissions. GetDevInfo() uses GET_DEV_INFO2 where the kernel has it
// and remembers which devices are unprivileged; AddDev() does too. Commands
// about a device not seen yet look it up first.
//
// START_DEV and END_USER_RECOVERY sleep in the kernel until every tag of
// every queue has been fetched: call them from a thread that is not a queue
// thread (the queue threads must already be serving).
//
// Thread-safety: one thread at a time (no internal locking).
#ifndef UQ_SRC_UBLK_CONTROL_H_
#define UQ_SRC_UBLK_CONTROL_H_

#include <sched.h>
#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "src/io/event_loop.h"
#include "src/ublk/features.h"
#include "src/ublk/ublk_uapi.h"

namespace uq::ublk {

class Control {
 public:
  // Opens /dev/ublk-control and probes the kernel's features. NotFound when
  // the driver is not loaded, PermissionDenied without the rights to open it.
  static absl::StatusOr<std::unique_ptr<Control>> Open();
  ~Control();
  Control(const Control&) = delete;
  Control& operator=(const Control&) = delete;

  // ADD_DEV. `info.dev_id` = UINT32_MAX asks the kernel for an id. Returns the
  // kernel's version of dev_info (real id, clamped queues, rounded buffer
  // size, unsupported flags dropped). kFlagCmdIoctlEncode is added or removed
  // to match the numbering in use.
  absl::StatusOr<CtrlDevInfo> AddDev(const CtrlDevInfo& info);
  absl::Status DelDev(uint32_t dev_id);
  absl::Status SetParams(uint32_t dev_id, const Params& params);
  absl::Status StartDev(uint32_t dev_id, pid_t server_pid);
  absl::Status StopDev(uint32_t dev_id);
  absl::StatusOr<CtrlDevInfo> GetDevInfo(uint32_t dev_id);
  absl::StatusOr<cpu_set_t> GetQueueAffinity(uint32_t dev_id, uint16_t queue_id);
  absl::Status StartUserRecovery(uint32_t dev_id);
  absl::Status EndUserRecovery(uint32_t dev_id, pid_t server_pid);

  // Whether the kernel took ioctl-encoded numbers (valid after one command,
  // or at once when GET_FEATURES answered).
  bool ioctl_encoded() const { return encoding_ == Encoding::kIoctl; }

  // What Open() learnt; ioctl_encoded as far as known now.
  KernelFeatures features() const {
    KernelFeatures k = features_;
    k.ioctl_encoded = ioctl_encoded();
    return k;
  }

 private:
  enum class Encoding { kUnknown, kIoctl, kLegacy };
  Control(int fd, std::unique_ptr<io::EventLoop> loop) : fd_(fd), loop_(std::move(loop)) {}

  void ProbeFeatures();
  // Sends command `nr` (legacy number) about `dev_id` with `buf`/`len` as its
  // buffer (the /dev/ublkcN path goes in front where the device needs it)
  // and returns the CQE's res.
  int Send(uint32_t nr, uint32_t dev_id, void* buf, uint16_t len, uint64_t data0 = 0,
           uint16_t queue_id = 0xffff);
  int SendNumbered(uint32_t nr, const CtrlCmd& cmd);
  int SendEncoded(uint32_t op, const CtrlCmd& cmd);
  // Whether commands about `dev_id` carry its path (looked up if unknown).
  bool NeedsPath(uint32_t dev_id);
  absl::Status Check(int res, const char* what, uint32_t dev_id);

  int fd_;
  std::unique_ptr<io::EventLoop> loop_;
  Encoding encoding_ = Encoding::kUnknown;
  KernelFeatures features_;
  std::map<uint32_t, bool> unprivileged_;  // dev_id -> UBLK_F_UNPRIVILEGED_DEV
};

// Whether this process has CAP_SYS_ADMIN (the kernel then creates privileged
// devices, whatever the flags ask for).
bool HasCapSysAdmin();

// "STATE" names for dev_info.state (DEAD, LIVE, QUIESCED, FAIL_IO).
const char* StateName(uint16_t state);

}  // namespace uq::ublk

#endif  // UQ_SRC_UBLK_CONTROL_H_
