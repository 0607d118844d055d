// Join: runs the pieces of one operation concurrently and waits for all of
// them (fan-out / fan-in). The engine splits a request at cluster boundaries
// and joins the per-cluster pieces with it; WhenAll is the same thing for a
// vector of tasks.
//
//   io::Join join;
//   for (...) join.Start(ReadPiece(...));   // each runs until its first suspension
//   int r = co_await join.Wait();           // 0, or the first piece's -errno
//
// Result: pieces are Task<int> with >= 0 for success and -errno for failure;
// Wait() yields 0 if every piece succeeded, else the error of the piece that
// *finished* first with one (completion order, not start order). Pieces keep
// running after one fails: every buffer they use stays busy until Wait()
// returns.
//
// Allocation: Start() costs one coroutine frame, from the per-thread frame
// pool (task.h), and nothing else; the Join itself lives in the caller's frame.
//
// REQUIRES: Wait() is awaited, once, after the last Start() and before the
// Join is destroyed (running pieces point at it).
// Thread-safety: one thread: the pieces finish on the thread that completes
// their I/O, which must be the awaiting coroutine's (one event loop).
#ifndef UQ_SRC_IO_JOIN_H_
#define UQ_SRC_IO_JOIN_H_

#include <coroutine>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "src/io/task.h"

namespace uq::io {

class Join {
 public:
  Join() = default;
  Join(const Join&) = delete;
  Join& operator=(const Join&) = delete;

  // Starts `piece` now; its result (>= 0 or -errno) joins Wait()'s.
  void Start(Task<int> piece) {
    ++pending_;
    Spawn(RunPiece(std::move(piece), this));
  }
  // Starts `piece` now; its value is stored into *out when it finishes.
  // REQUIRES: *out outlives the Join.
  template <typename T>
  void StartInto(Task<T> piece, std::optional<T>* out) {
    ++pending_;
    Spawn(RunInto(std::move(piece), out, this));
  }
  // Starts `piece` now; it only counts towards completion.
  void Start(Task<void> piece) {
    ++pending_;
    Spawn(RunVoid(std::move(piece), this));
  }

  // co_await join.Wait(): resumes when every started piece has finished (at
  // once if they all have); yields 0 or the first error (see above).
  auto Wait() {
    struct Awaiter {
      Join* join;
      bool await_ready() const noexcept { return join->pending_ == 0; }
      void await_suspend(std::coroutine_handle<> h) noexcept { join->waiter_ = h; }
      int await_resume() const noexcept { return join->result_; }
    };
    return Awaiter{this};
  }

  // Pieces started and not finished yet.
  uint64_t pending() const { return pending_; }

 private:
  static Task<void> RunPiece(Task<int> piece, Join* join) {
    const int r = co_await std::move(piece);
    join->Finish(r);
  }
  template <typename T>
  static Task<void> RunInto(Task<T> piece, std::optional<T>* out, Join* join) {
    out->emplace(co_await std::move(piece));
    join->Finish(0);
  }
  static Task<void> RunVoid(Task<void> piece, Join* join) {
    co_await std::move(piece);
    join->Finish(0);
  }

  void Finish(int r) {
    if (r < 0 && result_ == 0) result_ = r;
    // The waiter may destroy the Join once resumed: nothing touches it after.
    if (--pending_ == 0 && waiter_) std::exchange(waiter_, {}).resume();
  }

  uint64_t pending_ = 0;
  int result_ = 0;
  std::coroutine_handle<> waiter_;
};

// Runs every task concurrently (each starts in order and runs until its first
// suspension) and completes when all have; results are in input order.
// Allocates the result vectors: for tools and tests, not the data path.
template <typename T>
Task<std::vector<T>> WhenAll(std::vector<Task<T>> tasks) {
  Join join;
  std::vector<std::optional<T>> slots(tasks.size());
  for (size_t i = 0; i < tasks.size(); ++i) join.StartInto(std::move(tasks[i]), &slots[i]);
  co_await join.Wait();
  std::vector<T> results;
  results.reserve(slots.size());
  for (std::optional<T>& s : slots) results.push_back(std::move(*s));
  co_return results;
}

inline Task<void> WhenAll(std::vector<Task<void>> tasks) {
  Join join;
  for (Task<void>& t : tasks) join.Start(std::move(t));
  co_await join.Wait();
}

}  // namespace uq::io

#endif  // UQ_SRC_IO_JOIN_H_
