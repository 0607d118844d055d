// Drivers for synchronous callers (tools, tests). WhenAll, the fan-out helper,
// is in join.h (included here for its callers).
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
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <type_traits>
#include <utility>

#include "src/io/event_loop.h"
#include "src/io/join.h"
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

}  // namespace uq::io

#endif  // UQ_SRC_IO_RUN_SYNC_H_
