// EventLoop: one io_uring and the completions that come out of it.
//
// One loop per thread. Everything submitted on the ring — file I/O from
// UringFile, ublk FETCH/COMMIT commands from src/ublk — names its completion
// target in sqe->user_data as a Completion*. user_data == 0 means "nobody
// waits" (the CQE is dropped).
//
// Thread-safety: a loop is used only from the thread that runs it, except
// Post(), which any thread may call (see executor.h). Posted coroutines are
// resumed by RunOnce once the loop's thread has called MakeCurrent().
#ifndef UQ_SRC_IO_EVENT_LOOP_H_
#define UQ_SRC_IO_EVENT_LOOP_H_

#include <liburing.h>

#include <coroutine>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/statusor.h"
#include "src/io/executor.h"

namespace uq::io {

// Receives one CQE. Implementations must stay alive until their CQE arrives.
class Completion {
 public:
  virtual void OnComplete(int32_t res, uint32_t cqe_flags) = 0;

 protected:
  ~Completion() = default;
};

class EventLoop final : public Executor {
 public:
  // `entries` SQ entries; `setup_flags` e.g. IORING_SETUP_SQE128 for the ublk
  // control ring.
  static absl::StatusOr<std::unique_ptr<EventLoop>> Create(unsigned entries,
                                                           unsigned setup_flags = 0);
  ~EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  io_uring* ring() { return &ring_; }

  // Returns a zeroed SQE, submitting queued ones first when the SQ is full.
  // Never returns null. The caller sets user_data (a Completion* or 0).
  io_uring_sqe* GetSqe();

  // Submits queued SQEs, waits for at least one CQE if `wait` (and nothing
  // became ready meanwhile), then dispatches every available CQE. Returns the
  // number of CQEs dispatched or -errno (-EINTR is returned, not retried).
  int RunOnce(bool wait);

  // Submits queued SQEs without waiting. Returns submitted count or -errno.
  int Submit();

  // Number of SQEs submitted whose CQE has not been dispatched yet (the wake
  // read of a current loop included: it may deliver a posted coroutine).
  uint64_t in_flight() const { return in_flight_; }

  // Makes this the calling thread's executor (executor.h) and arms the read
  // of its eventfd through which Post() wakes it. Call from the loop's thread
  // before its coroutines park on anything shared with other threads.
  void MakeCurrent();
  // Thread-safe: queues `h` and wakes the loop's thread, whose next RunOnce
  // resumes it.
  void Post(std::coroutine_handle<> h) override;

  // Awaitable for one SQE prepared by `prep(sqe)`: co_await yields the CQE's res.
  //   int32_t res = co_await loop.Op([&](io_uring_sqe* s) { io_uring_prep_fsync(s, fd, 0); });
  template <typename Prep>
  auto Op(Prep prep) {
    struct Awaiter final : Completion {
      EventLoop* loop;
      Prep prep;
      std::coroutine_handle<> h;
      int32_t res = 0;
      Awaiter(EventLoop* l, Prep p) : loop(l), prep(std::move(p)) {}
      bool await_ready() noexcept { return false; }
      void await_suspend(std::coroutine_handle<> handle) {
        h = handle;
        io_uring_sqe* sqe = loop->GetSqe();
        prep(sqe);
        io_uring_sqe_set_data(sqe, static_cast<Completion*>(this));
      }
      int32_t await_resume() noexcept { return res; }
      void OnComplete(int32_t r, uint32_t) override {
        res = r;
        h.resume();
      }
    };
    return Awaiter(this, std::move(prep));
  }

 private:
  struct WakeCompletion final : Completion {
    EventLoop* loop = nullptr;
    void OnComplete(int32_t res, uint32_t cqe_flags) override;
  };

  EventLoop() = default;
  void ArmWake();
  // Resumes every coroutine posted so far.
  void RunPosted();

  io_uring ring_{};
  bool ring_ok_ = false;
  uint64_t in_flight_ = 0;
  int wake_fd_ = -1;
  bool wake_armed_ = false;
  uint64_t wake_buf_ = 0;
  WakeCompletion wake_completion_;
  std::mutex post_mu_;
  std::vector<std::coroutine_handle<>> posted_;   // guarded by post_mu_
  std::vector<std::coroutine_handle<>> running_;  // loop thread only
  friend class EventLoopTestPeer;
};

}  // namespace uq::io

#endif  // UQ_SRC_IO_EVENT_LOOP_H_
