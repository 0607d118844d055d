// Task<T>: a lazy, single-awaiter C++20 coroutine with symmetric transfer.
//
// A Task does nothing until it is awaited (co_await task) or started with
// Spawn(). The awaiting coroutine is resumed, by symmetric transfer, on the
// thread and at the moment the task finishes; there is no scheduler here:
// whoever completes the I/O the task waits on (the event loop, the in-memory
// file) drives it forward.
//
// Errors are values (int -errno on the data path, absl::Status elsewhere).
// Exceptions are not used for control flow: unhandled_exception terminates.
//
// Compiler bug (GCC 12.2): never put co_await inside an if condition, e.g.
//   if (co_await f() >= 0) co_return 9;            // never completes
//   if (co_await f() >= 0) { co_await g(); }       // hits __builtin_unreachable
// GCC 12 miscompiles both (clang is fine; it is not this Task's doing: a
// minimal promise type shows it too). Await into a local first:
//   int r = co_await f();
//   if (r >= 0) ...
//
// Frames: every Task's coroutine frame comes from the calling thread's
// FramePool (frame_pool.h) and goes back to the pool of the thread that
// destroys it, so a warm request path allocates nothing for its coroutines.
//
// Thread-safety: a Task and its frame belong to one thread at a time; handing
// one to another thread needs the usual synchronisation (a queue, a ring
// message), after which it may run, finish and be freed there. The frame
// pools are thread-local and need none.
#ifndef UQ_SRC_IO_TASK_H_
#define UQ_SRC_IO_TASK_H_

#include <coroutine>
#include <cstddef>
#include <cstdlib>
#include <exception>
#include <optional>
#include <type_traits>
#include <utility>

#include "src/io/frame_pool.h"

namespace uq {

template <typename T>
class Task;

namespace internal {

struct PromiseBase {
  // The frame allocation functions (found in the promise's scope). The
  // compiler passes the frame size to both.
  static void* operator new(size_t frame_bytes) { return FramePool::Allocate(frame_bytes); }
  static void operator delete(void* frame, size_t frame_bytes) noexcept {
    FramePool::Deallocate(frame, frame_bytes);
  }

  std::coroutine_handle<> continuation = std::noop_coroutine();
  // Set by Spawn(): the frame destroys itself when it finishes.
  bool detached = false;
  // True while the awaiter is still inside its await_suspend, running this
  // task's first steps; if the task finishes then, the awaiter just carries
  // on (see Task::operator co_await) instead of being resumed from here.
  bool starting = false;
  bool finished = false;

  std::suspend_always initial_suspend() noexcept { return {}; }

  struct FinalAwaiter {
    bool await_ready() noexcept { return false; }
    template <typename P>
    std::coroutine_handle<> await_suspend(std::coroutine_handle<P> h) noexcept {
      PromiseBase& p = h.promise();
      p.finished = true;
      std::coroutine_handle<> next = p.continuation;
      if (p.detached) {
        h.destroy();
        return next;
      }
      if (p.starting) return std::noop_coroutine();
      return next;
    }
    void await_resume() noexcept {}
  };
  FinalAwaiter final_suspend() noexcept { return {}; }
  [[noreturn]] void unhandled_exception() noexcept { std::terminate(); }
};

template <typename T>
struct Promise : PromiseBase {
  std::optional<T> value;
  Task<T> get_return_object() noexcept;
  template <typename U>
  void return_value(U&& v) {
    value.emplace(std::forward<U>(v));
  }
};

template <>
struct Promise<void> : PromiseBase {
  Task<void> get_return_object() noexcept;
  void return_void() noexcept {}
};

}  // namespace internal

template <typename T = void>
class [[nodiscard]] Task {
 public:
  using promise_type = internal::Promise<T>;
  using Handle = std::coroutine_handle<promise_type>;

  Task() = default;
  explicit Task(Handle h) : h_(h) {}
  Task(Task&& o) noexcept : h_(std::exchange(o.h_, {})) {}
  Task& operator=(Task&& o) noexcept {
    if (this != &o) {
      if (h_) h_.destroy();
      h_ = std::exchange(o.h_, {});
    }
    return *this;
  }
  Task(const Task&) = delete;
  Task& operator=(const Task&) = delete;
  ~Task() {
    if (h_) h_.destroy();
  }

  bool valid() const { return static_cast<bool>(h_); }

  // Awaiting starts the task and resumes the awaiter when it finishes.
  //
  // A task that finishes without suspending (an immediate MemFile, a cache
  // hit) returns straight into the awaiter: no resumption, so a loop of a
  // million such awaits keeps the stack flat even where the compiler does not
  // turn symmetric transfer into a tail call (GCC at -O0 / with ASan). A task
  // that suspends resumes its awaiter by symmetric transfer when it finishes.
  auto operator co_await() && noexcept {
    struct Awaiter {
      Handle h;
      bool await_ready() noexcept { return false; }
      bool await_suspend(std::coroutine_handle<> awaiter) noexcept {
        promise_type& p = h.promise();
        p.continuation = awaiter;
        p.starting = true;
        h.resume();
        // The frame is still alive (this Task owns it) even if it finished.
        p.starting = false;
        return !p.finished;
      }
      T await_resume() {
        if constexpr (!std::is_void_v<T>) return std::move(*h.promise().value);
      }
    };
    return Awaiter{h_};
  }

  // Releases the frame to Spawn().
  Handle Release() { return std::exchange(h_, {}); }

 private:
  Handle h_{};
};

namespace internal {
template <typename T>
Task<T> Promise<T>::get_return_object() noexcept {
  return Task<T>(std::coroutine_handle<Promise<T>>::from_promise(*this));
}
inline Task<void> Promise<void>::get_return_object() noexcept {
  return Task<void>(std::coroutine_handle<Promise<void>>::from_promise(*this));
}
}  // namespace internal

// Starts a Task<void> now and lets it run to completion on its own; its frame
// is freed when it finishes. Runs synchronously until the first suspension.
inline void Spawn(Task<void> task) {
  auto h = task.Release();
  if (!h) return;
  h.promise().detached = true;
  h.resume();
}

// A task that completes with `value` as soon as it is awaited: for functions
// that return another task as is on their main path and a value on an early
// exit (an argument check that fails before any I/O).
template <typename T>
Task<T> ReadyTask(T value) {
  co_return value;
}

// Runs `task` and stores its result into *out when it finishes (used by
// drivers that pump an event loop until `out` has a value).
template <typename T>
Task<void> StoreResult(Task<T> task, std::optional<T>* out) {
  out->emplace(co_await std::move(task));
}

}  // namespace uq

#endif  // UQ_SRC_IO_TASK_H_
