#include "src/io/event_loop.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

namespace uq::io {

absl::StatusOr<std::unique_ptr<EventLoop>> EventLoop::Create(unsigned entries,
                                                             unsigned setup_flags) {
  std::unique_ptr<EventLoop> loop(new EventLoop());
  io_uring_params p{};
  p.flags = setup_flags;
  int r = io_uring_queue_init_params(entries, &loop->ring_, &p);
  if (r < 0) {
    return absl::UnavailableError(
        absl::StrCat("io_uring_queue_init(", entries, "): ", std::strerror(-r)));
  }
  loop->ring_ok_ = true;
  loop->wake_completion_.loop = loop.get();
  // Blocking: io_uring then waits (polls) for the counter instead of
  // answering -EAGAIN; a write to it never blocks.
  loop->wake_fd_ = eventfd(0, EFD_CLOEXEC);
  if (loop->wake_fd_ < 0) {
    return absl::UnavailableError(absl::StrCat("eventfd: ", std::strerror(errno)));
  }
  return loop;
}

EventLoop::~EventLoop() {
  if (Executor::Current() == this) Executor::SetCurrent(nullptr);
  if (ring_ok_) io_uring_queue_exit(&ring_);
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

void EventLoop::MakeCurrent() {
  Executor::SetCurrent(this);
  if (!wake_armed_) ArmWake();
}

void EventLoop::ArmWake() {
  io_uring_sqe* sqe = GetSqe();
  io_uring_prep_read(sqe, wake_fd_, &wake_buf_, sizeof(wake_buf_), 0);
  io_uring_sqe_set_data(sqe, static_cast<Completion*>(&wake_completion_));
  wake_armed_ = true;
}

void EventLoop::WakeCompletion::OnComplete(int32_t res, uint32_t) {
  loop->wake_armed_ = false;
  loop->RunPosted();
  // Re-armed after the posted coroutines ran: a Post from now on either
  // finds the read armed or leaves the eventfd counter set for the next one.
  // (Cancelled: the ring is going away.)
  if (res != -ECANCELED) loop->ArmWake();
}

void EventLoop::Post(std::coroutine_handle<> h) {
  bool first;
  {
    std::lock_guard<std::mutex> lock(post_mu_);
    first = posted_.empty();
    posted_.push_back(h);
  }
  // One wake per batch: the loop drains everything posted when it wakes.
  if (first) eventfd_write(wake_fd_, 1);
}

void EventLoop::RunPosted() {
  {
    std::lock_guard<std::mutex> lock(post_mu_);
    running_.swap(posted_);
  }
  for (std::coroutine_handle<> h : running_) h.resume();
  running_.clear();
}

io_uring_sqe* EventLoop::GetSqe() {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  while (sqe == nullptr) {
    // SQ full: push what is queued to the kernel and try again.
    io_uring_submit(&ring_);
    sqe = io_uring_get_sqe(&ring_);
  }
  // Zero the whole entry (128 bytes on SQE128 rings) so stale command bytes
  // never leak into a passthrough command.
  size_t sqe_size = (ring_.flags & IORING_SETUP_SQE128) ? 128 : 64;
  std::memset(static_cast<void*>(sqe), 0, sqe_size);
  ++in_flight_;
  return sqe;
}

int EventLoop::Submit() { return io_uring_submit(&ring_); }

int EventLoop::RunOnce(bool wait) {
  int r;
  if (wait && io_uring_cq_ready(&ring_) == 0) {
    r = io_uring_submit_and_wait(&ring_, 1);
  } else {
    r = io_uring_submit(&ring_);
  }
  if (r < 0 && r != -EBUSY && r != -EAGAIN) return r;

  int n = 0;
  io_uring_cqe* cqe;
  // Dispatch one CQE at a time: a completion may submit new SQEs and even run
  // a nested coroutine chain, so the CQ head is advanced before the callback.
  while (io_uring_peek_cqe(&ring_, &cqe) == 0) {
    auto* target = reinterpret_cast<Completion*>(io_uring_cqe_get_data(cqe));
    int32_t res = cqe->res;
    uint32_t flags = cqe->flags;
    io_uring_cqe_seen(&ring_, cqe);
    --in_flight_;
    ++n;
    if (target != nullptr) target->OnComplete(res, flags);
  }
  return n;
}

}  // namespace uq::io
