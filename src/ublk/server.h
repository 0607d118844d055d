// Server: one ublk device served from this process.
//
// Start() either creates a device (ADD_DEV, SET_PARAMS, queue threads,
// START_DEV) or takes over a quiesced one whose server died (GET_DEV_INFO,
// START_USER_RECOVERY, queue threads, END_USER_RECOVERY), and returns once
// the device is live. Shutdown() writes back the block device's page cache
// (fsync of /dev/ublkbN), stops it (STOP_DEV), lets every queue thread
// finish and Close() its Device, releases /dev/ublkcN (descriptor mappings
// included: DEL_DEV waits for them) and deletes the device (DEL_DEV).
//
// The image is opened by the caller, one Device per queue, each on the
// EventLoop its queue thread will run (the engine is single-threaded per
// loop). Any failure inside Start() undoes what was done: no device is left
// behind for a new device, and a recovery that fails leaves the device for
// `detach` to remove.
//
// Thread-safety: all methods from one (control) thread, never a queue thread.
#ifndef UQ_SRC_UBLK_SERVER_H_
#define UQ_SRC_UBLK_SERVER_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "src/engine/device.h"
#include "src/io/event_loop.h"
#include "src/ublk/control.h"
#include "src/ublk/queue.h"
#include "src/ublk/ublk_uapi.h"

namespace uq::ublk {

// An optional kernel feature: used where available (kAuto), required (kOn:
// Start() fails with one line naming what is missing), or not used (kOff).
enum class Want { kAuto, kOn, kOff };

struct ServerOptions {
  // New device: UINT32_MAX lets the kernel choose. Recovery: the device.
  uint32_t dev_id = UINT32_MAX;
  uint16_t depth = 128;
  uint32_t max_io_buf_bytes = 512 * 1024;
  // Requests the dead server had fetched are re-sent to the next one
  // (UBLK_F_USER_RECOVERY_REISSUE); otherwise they fail with EIO.
  bool reissue = false;
  // See QueueConfig::writethrough: every write durable (fsynced) when it
  // completes. Without it, writes acknowledged but not yet flushed are lost on
  // power loss (like a disk's volatile cache); a killed server loses nothing
  // if the engine was opened with OpenOptions::metadata_writethrough (the
  // CLI's default for writable images).
  bool writethrough = false;
  bool recover = false;
  // New device only (a recovered one keeps what it was created with).
  // UBLK_F_USER_COPY (6.5+); never for unprivileged devices (kernel rule).
  Want user_copy = Want::kAuto;
  // UBLK_F_UNPRIVILEGED_DEV (6.3+): auto = when this process lacks
  // CAP_SYS_ADMIN (the kernel makes a capable process's devices privileged).
  Want unprivileged = Want::kAuto;
};

// The flags a new device asks ADD_DEV for, given the kernel's features and
// whether this process has CAP_SYS_ADMIN; an error (one line) when an option
// asked for something the kernel or the situation cannot give (pure).
absl::StatusOr<uint64_t> NewDeviceFlags(const ServerOptions& options, const KernelFeatures& kernel,
                                        bool privileged);

// What one queue serves: a Device opened on `loop`.
struct QueueBackend {
  std::unique_ptr<io::EventLoop> loop;
  std::unique_ptr<engine::Device> device;
};

class Server {
 public:
  // New device: backends.size() queues (fewer if the kernel clamps; extra
  // backends are closed). Every Device is Close()d whatever happens. Recovery: backends.size() must
  // equal the device's queue count.
  static absl::StatusOr<std::unique_ptr<Server>> Start(std::unique_ptr<Control> control,
                                                       const ServerOptions& options,
                                                       std::vector<QueueBackend> backends);
  ~Server();  // Shutdown() if it was not called
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  uint32_t dev_id() const { return info_.dev_id; }
  const CtrlDevInfo& info() const { return info_; }
  uint16_t queues() const { return static_cast<uint16_t>(queues_.size()); }

  // Readable (eventfd) once any queue thread has exited: the device was
  // stopped from outside, or a queue failed. The caller should Shutdown().
  int done_fd() const { return done_fd_; }

  // STOP_DEV, join, release, DEL_DEV. Returns the first error (a Device's
  // Close() failure included). Idempotent.
  absl::Status Shutdown();

 private:
  Server(std::unique_ptr<Control> control, const ServerOptions& options)
      : control_(std::move(control)), options_(options) {}

  // Take what they use out of `backends`; the rest is closed by Start().
  absl::Status StartNew(std::vector<QueueBackend>& backends);
  absl::Status StartRecovery(std::vector<QueueBackend>& backends);
  // Opens /dev/ublkcN (unless StartNew did), creates and starts the first `nr_queues` queue
  // threads.
  absl::Status StartQueues(std::vector<QueueBackend>& backends, size_t nr_queues);
  // Stops the queues (STOP_DEV), joins them, releases /dev/ublkcN; DEL_DEV if
  // `del`.
  absl::Status Teardown(bool del);

  std::unique_ptr<Control> control_;
  ServerOptions options_;
  CtrlDevInfo info_{};
  bool added_ = false;
  bool live_ = false;  // START_DEV / END_USER_RECOVERY succeeded
  bool shut_down_ = false;
  int cdev_fd_ = -1;
  int done_fd_ = -1;
  std::vector<std::unique_ptr<Queue>> queues_;
};

}  // namespace uq::ublk

#endif  // UQ_SRC_UBLK_SERVER_H_
