// Executor: the thread a parked coroutine belongs to, and how to resume it
// there from another thread.
//
// Every thread that runs engine coroutines against shared state has one (its
// EventLoop, or a test's loop) and makes it current. A coroutine that parks
// on a shared wait list records the current executor; whoever wakes it calls
// ResumeOn, which resumes it inline when the waker runs on that same
// executor's thread (no syscall, as a single-threaded engine always did) and
// otherwise posts it there, so a coroutine only ever runs on its own thread
// and its I/O goes to its own ring.
//
// A thread without a current executor (a synchronous tool, most tests) wakes
// everything inline, as before.
//
// Thread-safety: Post is thread-safe; Current/SetCurrent are per thread.
#ifndef UQ_SRC_IO_EXECUTOR_H_
#define UQ_SRC_IO_EXECUTOR_H_

#include <coroutine>

namespace uq::io {

class Executor {
 public:
  // Resumes `h` on this executor's thread soon (never inline). Thread-safe.
  virtual void Post(std::coroutine_handle<> h) = 0;

  // The calling thread's executor, or null.
  static Executor* Current() { return current_; }
  // Makes `e` (or nothing) the calling thread's executor.
  static void SetCurrent(Executor* e) { current_ = e; }

 protected:
  ~Executor() = default;

 private:
  static inline thread_local Executor* current_ = nullptr;
};

// Resumes `h`, which parked on `e` (null: no executor), on its own thread:
// inline if that is the calling thread, else through e->Post.
inline void ResumeOn(Executor* e, std::coroutine_handle<> h) {
  if (e == nullptr || e == Executor::Current()) {
    h.resume();
  } else {
    e->Post(h);
  }
}

}  // namespace uq::io

#endif  // UQ_SRC_IO_EXECUTOR_H_
