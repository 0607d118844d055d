// Queue: one ublk hardware queue served by one thread.
//
// The thread owns an EventLoop that carries both the FETCH / COMMIT_AND_FETCH
// commands on /dev/ublkcN and the Device's image I/O. Each tag has one
// long-lived coroutine: fetch, translate the descriptor into one Device call,
// commit the result (bytes or -errno) together with the next fetch, until the
// kernel answers UBLK_IO_RES_ABORT. Nothing is allocated per request here
// (the tag's buffer and coroutine are set up once); the Device's own
// coroutine frames are the engine's business.
//
// Data moves through the tag's buffer either way: the kernel copies it there
// (FETCH's buffer address) or, with user copy, the queue copies it with
// io_uring reads and writes on /dev/ublkcN. The Device reads and writes that
// buffer; it never sees the request's pages (see README "Kernel features":
// a zero-bounce path needs 6.15's zero copy and an engine that does its file
// I/O on registered buffers).
//
// When every tag has been aborted (STOP_DEV) the thread Close()s the Device on
// its loop (flush, dirty bit cleared) and exits, then signals `done_fd`.
//
// Thread-safety: Create and the destructor run on the owning (main) thread;
// between Start() and Join() everything but close_status() belongs to the
// queue thread.
#ifndef UQ_SRC_UBLK_QUEUE_H_
#define UQ_SRC_UBLK_QUEUE_H_

#include <sched.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "src/engine/device.h"
#include "src/io/event_loop.h"
#include "src/io/task.h"
#include "src/ublk/ublk_uapi.h"

namespace uq::ublk {

struct QueueConfig {
  uint16_t q_id = 0;
  uint16_t depth = 0;
  uint32_t buf_bytes = 0;      // per-tag buffer (dev_info.max_io_buf_bytes)
  int cdev_fd = -1;            // /dev/ublkcN, owned by the caller
  bool ioctl_encoded = false;  // UBLK_U_IO_* numbers instead of legacy ones
  // UBLK_F_USER_COPY: FETCH/COMMIT carry no buffer address; a WRITE's data is
  // read from /dev/ublkcN into the tag's buffer before the Device call, a
  // READ's written there after it (io_uring READ/WRITE at UserCopyOffset).
  bool user_copy = false;
  bool has_affinity = false;
  cpu_set_t affinity{};  // CPUs GET_QUEUE_AFFINITY reported
  int done_fd = -1;      // eventfd written once when the thread exits
  // Complete WRITE / DISCARD / WRITE_ZEROES only once durable (Write with FUA,
  // Flush after the others): acknowledged data then survives a server crash.
  bool writethrough = false;
};

// Runs device.Close() to completion on `loop` (the loop's owning thread).
// The loop being broken mid-Close is reported as an error, not awaited.
absl::Status CloseDevice(io::EventLoop& loop, engine::Device& device);

class Queue {
 public:
  // Maps the queue's descriptor area and allocates the tag buffers.
  // `loop` and `device` move to the queue thread at Start().
  static absl::StatusOr<std::unique_ptr<Queue>> Create(const QueueConfig& config,
                                                       std::unique_ptr<io::EventLoop> loop,
                                                       std::unique_ptr<engine::Device> device);
  // REQUIRES: the thread has been joined (or never started).
  ~Queue();
  Queue(const Queue&) = delete;
  Queue& operator=(const Queue&) = delete;

  // Starts the thread, which fetches every tag and serves until aborted.
  void Start();
  void Join();

  // The Device's Close() result, valid after Join().
  const absl::Status& close_status() const { return close_status_; }
  // Requests that failed with an error (for the log), valid after Join().
  uint64_t failed_requests() const { return failed_requests_; }

 private:
  Queue(const QueueConfig& config, std::unique_ptr<io::EventLoop> loop,
        std::unique_ptr<engine::Device> device)
      : config_(config), loop_(std::move(loop)), device_(std::move(device)) {}

  void Run();
  // The tag's coroutine; the request handling is inlined so a request costs
  // no frame of its own.
  Task<void> ServeTag(uint16_t tag);

  QueueConfig config_;
  std::unique_ptr<io::EventLoop> loop_;
  std::unique_ptr<engine::Device> device_;
  const IoDesc* descs_ = nullptr;
  size_t descs_len_ = 0;
  std::byte* buffers_ = nullptr;
  size_t buffers_len_ = 0;
  std::thread thread_;
  bool thread_started_ = false;
  uint32_t live_tags_ = 0;
  uint64_t failed_requests_ = 0;
  absl::Status close_status_;
};

}  // namespace uq::ublk

#endif  // UQ_SRC_UBLK_QUEUE_H_
