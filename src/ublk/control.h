// Control: the ublk control plane over /dev/ublk-control.
//
// Every command is an IORING_OP_URING_CMD on a private SQE128 ring, sent and
// waited for synchronously (the kernel runs it in an io-wq worker). The
// command numbering is probed on first use: ioctl-encoded (UBLK_U_CMD_*,
// newer kernels) first, then the legacy numbers 6.1 knows, on EOPNOTSUPP or
// EINVAL; the answer is remembered for the Control's lifetime.
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
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "src/io/event_loop.h"
#include "src/ublk/ublk_uapi.h"

namespace uq::ublk {

class Control {
 public:
  // Opens /dev/ublk-control. NotFound when the driver is not loaded,
  // PermissionDenied without the rights to open it.
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

  // Whether the kernel took ioctl-encoded numbers (valid after one command).
  bool ioctl_encoded() const { return encoding_ == Encoding::kIoctl; }

 private:
  enum class Encoding { kUnknown, kIoctl, kLegacy };
  Control(int fd, std::unique_ptr<io::EventLoop> loop) : fd_(fd), loop_(std::move(loop)) {}

  // Sends command `nr` (legacy number) and returns the CQE's res.
  int Send(uint32_t nr, const CtrlCmd& cmd);
  int SendEncoded(uint32_t op, const CtrlCmd& cmd);
  absl::Status Check(int res, const char* what, uint32_t dev_id);

  int fd_;
  std::unique_ptr<io::EventLoop> loop_;
  Encoding encoding_ = Encoding::kUnknown;
};

// "STATE" names for dev_info.state (DEAD, LIVE, QUIESCED, FAIL_IO).
const char* StateName(uint16_t state);

}  // namespace uq::ublk

#endif  // UQ_SRC_UBLK_CONTROL_H_
