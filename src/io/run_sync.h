// Drivers for synchronous callers (tools, tests) and a fan-out helper.
//
//   int64_t r = RunSync(loop.get(), file->Read(0, buf));    // UringFile
//   int r = RunSync(nullptr, mem.Flush());                  // MemFile, immediate
//   auto r = RunSyncPumping([&] { return mem.RunAll() > 0; }, mem.Flush());  // deferred
//
// Thread-safety: call from the thread that owns the loop; not reentrant from
// inside a coroutine running on that loop (it would block the loop).
#ifndef UQ_SRC_IO_RUN_SYNC_H_
#define UQ_SRC_IO_RUN_SYNC_H_

#include <cerrno>
#include <coroutine>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "src/io/event_loop.h"
#include "src/io/task.h"

namespace uq::io {

namespace internal {

// Holds a task's result (or just completion for void).
template <typename T>
struct SyncSlot {
  std::optional<T> value;
  bool done() const { return value.has_value(); }
  T Take() { return std::move(*value); }
};
template <>
struct SyncSlot<void> {
  bool finished = false;
  bool done() const { return finished; }
  void Take() {}
};

template <typename T>
Task<void> FillSlot(Task<T> task, SyncSlot<T>* slot) {
  if constexpr (std::is_void_v<T>) {
    co_await std::move(task);
    slot->finished = true;
  } else {
    slot->value.emplace(co_await std::move(task));
  }
}

[[noreturn]] inline void SyncStuck(const char* why) {
  std::fprintf(stderr, "uq::io::RunSync: task cannot complete: %s\n", why);
  std::abort();
}

}  // namespace internal

// Starts `task` and, until it completes, calls `pump()`; pump returns whether
// it made progress. Aborts (a test bug, not an I/O error) if the task is not
// done and pump made no progress.
template <typename T, typename Pump>
T RunSyncPumping(Pump&& pump, Task<T> task) {
  internal::SyncSlot<T> slot;
  Spawn(internal::FillSlot(std::move(task), &slot));
  while (!slot.done()) {
    if (!pump()) internal::SyncStuck("pump made no progress");
  }
  return slot.Take();
}

// Starts `task` and runs `loop` until the task completes. With loop == nullptr
// the task must complete synchronously (e.g. MemFile in immediate mode);
// otherwise this aborts. Also aborts if the task waits with nothing in flight
// on the loop (it could never be woken) or the ring fails.
template <typename T>
T RunSync(EventLoop* loop, Task<T> task) {
  return RunSyncPumping(
      [loop]() -> bool {
        if (loop == nullptr) internal::SyncStuck("suspended with no event loop");
        if (loop->in_flight() == 0) internal::SyncStuck("suspended with nothing in flight");
        int r = loop->RunOnce(/*wait=*/true);
        if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY) {
          internal::SyncStuck("io_uring_submit_and_wait failed");
        }
        return true;
      },
      std::move(task));
}

namespace internal {

struct JoinState {
  size_t remaining = 0;
  std::coroutine_handle<> waiter;
};

template <typename T>
Task<void> JoinOne(Task<T> task, JoinState* state, std::optional<T>* out) {
  out->emplace(co_await std::move(task));
  if (--state->remaining == 0 && state->waiter) state->waiter.resume();
}

inline Task<void> JoinOneVoid(Task<void> task, JoinState* state) {
  co_await std::move(task);
  if (--state->remaining == 0 && state->waiter) state->waiter.resume();
}

struct JoinAwaiter {
  JoinState* state;
  bool await_ready() const noexcept { return state->remaining == 0; }
  void await_suspend(std::coroutine_handle<> h) noexcept { state->waiter = h; }
  void await_resume() const noexcept {}
};

}  // namespace internal

// Runs every task concurrently (each starts in order and runs until its first
// suspension) and completes when all have; results are in input order.
template <typename T>
Task<std::vector<T>> WhenAll(std::vector<Task<T>> tasks) {
  internal::JoinState state{tasks.size(), {}};
  std::vector<std::optional<T>> slots(tasks.size());
  for (size_t i = 0; i < tasks.size(); ++i) {
    Spawn(internal::JoinOne(std::move(tasks[i]), &state, &slots[i]));
  }
  co_await internal::JoinAwaiter{&state};
  std::vector<T> results;
  results.reserve(slots.size());
  for (std::optional<T>& s : slots) results.push_back(std::move(*s));
  co_return results;
}

inline Task<void> WhenAll(std::vector<Task<void>> tasks) {
  internal::JoinState state{tasks.size(), {}};
  for (Task<void>& t : tasks) Spawn(internal::JoinOneVoid(std::move(t), &state));
  co_await internal::JoinAwaiter{&state};
}

}  // namespace uq::io

#endif  // UQ_SRC_IO_RUN_SYNC_H_
