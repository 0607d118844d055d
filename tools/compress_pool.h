// CompressPool: worker threads for CPU-only work of a coroutine on an event
// loop (convert -c compresses clusters there, as qemu-img hands compression
// to its thread pool). `co_await pool.Run(loop, fn)` runs fn on a worker and
// resumes the coroutine on `loop`'s thread (io::Executor::Post).
//
// Thread-safety: Run may be called from any thread; fn must not touch state
// the loop's thread uses until the co_await returns. The destructor waits for
// queued work. REQUIRES: `loop` is current on its thread (EventLoop::
// MakeCurrent) while work is queued, so that Post can wake it.
#ifndef UQ_TOOLS_COMPRESS_POOL_H_
#define UQ_TOOLS_COMPRESS_POOL_H_

#include <condition_variable>
#include <coroutine>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "src/io/executor.h"

namespace uq::tools {

class CompressPool {
 public:
  // REQUIRES: threads >= 1.
  explicit CompressPool(int threads);
  CompressPool(const CompressPool&) = delete;
  CompressPool& operator=(const CompressPool&) = delete;
  ~CompressPool();

  struct Awaiter {
    CompressPool* pool;
    io::Executor* home;
    std::function<void()> fn;
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) { pool->Push(Job{std::move(fn), h, home}); }
    void await_resume() const noexcept {}
  };
  Awaiter Run(io::Executor* home, std::function<void()> fn) {
    return Awaiter{this, home, std::move(fn)};
  }

 private:
  struct Job {
    std::function<void()> fn;
    std::coroutine_handle<> h;
    io::Executor* home;
  };
  void Push(Job job);
  void Work();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> jobs_;  // guarded by mu_
  bool stop_ = false;     // guarded by mu_
  std::vector<std::thread> threads_;
};

}  // namespace uq::tools

#endif  // UQ_TOOLS_COMPRESS_POOL_H_
