// Helpers for engine tests that drive one image from several real threads:
// a run queue per thread (the thread's io::Executor, as an EventLoop is for a
// ublk queue thread) and a BlockFile wrapper that yields to it around every
// operation, so that with immediate-mode MemFiles each thread still has many
// requests in flight and their file operations complete in a random order.
#ifndef UQ_TESTS_ENGINE_THREAD_UTIL_H_
#define UQ_TESTS_ENGINE_THREAD_UTIL_H_

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <coroutine>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <random>
#include <span>
#include <vector>

#include "src/io/block_file.h"
#include "src/io/executor.h"
#include "src/io/file_wrapper.h"
#include "src/io/task.h"

namespace uq::engine::testing {

// A thread's executor: Post (from any thread) queues a coroutine; the owning
// thread resumes queued ones, in random order, from RunPosted.
// Thread-safety: Post from any thread; RunPosted and WaitForPost from the
// owning thread only. Destroy only after every thread that could Post to it
// has been joined.
class ThreadExecutor final : public io::Executor {
 public:
  explicit ThreadExecutor(uint64_t seed) : rng_(seed) {}

  void Post(std::coroutine_handle<> h) override {
    if (io::Executor::Current() != this) foreign_posts_.fetch_add(1, std::memory_order_relaxed);
    std::lock_guard<std::mutex> g(mu_);
    posted_.push_back(h);
    cv_.notify_one();  // under the lock: the executor may be gone right after
  }

  // Resumes the coroutines queued now (not those they queue), in random
  // order. Returns how many ran.
  size_t RunPosted() {
    size_t n;
    {
      std::lock_guard<std::mutex> g(mu_);
      n = posted_.size();
    }
    for (size_t i = 0; i < n; ++i) {
      std::coroutine_handle<> h;
      {
        std::lock_guard<std::mutex> g(mu_);
        if (posted_.empty()) return i;
        size_t at = rng_() % posted_.size();
        h = posted_[at];
        posted_[at] = posted_.back();
        posted_.pop_back();
      }
      h.resume();
    }
    return n;
  }

  // Waits until something is queued or `timeout` passes; true if queued.
  bool WaitForPost(std::chrono::microseconds timeout) {
    std::unique_lock<std::mutex> l(mu_);
    return cv_.wait_for(l, timeout, [this] { return !posted_.empty(); });
  }

  // Coroutines woken by another thread (parked here, woken there): the
  // cross-thread traffic a run is meant to exercise.
  uint64_t foreign_posts() const { return foreign_posts_.load(std::memory_order_relaxed); }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::coroutine_handle<>> posted_;  // guarded by mu_
  std::mt19937_64 rng_;                          // owning thread only
  std::atomic<uint64_t> foreign_posts_{0};
};

// co_await YieldToExecutor{}: requeues the coroutine on the calling thread's
// executor (a no-op on a thread without one, e.g. a test's setup thread).
struct YieldToExecutor {
  bool await_ready() const noexcept { return io::Executor::Current() == nullptr; }
  void await_suspend(std::coroutine_handle<> h) const { io::Executor::Current()->Post(h); }
  void await_resume() const noexcept {}
};

// Yields before and after every operation of the file it wraps: on an
// immediate-mode MemFile this turns "completes inline" into "completes when
// the thread's run queue gets to it", as an io_uring completion would.
// Thread-safe if the wrapped file is.
class YieldFile final : public io::FileWrapper {
 public:
  using io::FileWrapper::FileWrapper;

  Task<int64_t> ReadV(uint64_t offset_bytes, std::span<const iovec> iov) override {
    co_await YieldToExecutor{};
    int64_t r = co_await base()->ReadV(offset_bytes, iov);
    co_await YieldToExecutor{};
    co_return r;
  }
  Task<int64_t> WriteV(uint64_t offset_bytes, std::span<const iovec> iov) override {
    co_await YieldToExecutor{};
    int64_t r = co_await base()->WriteV(offset_bytes, iov);
    co_await YieldToExecutor{};
    co_return r;
  }
  Task<int> Flush() override {
    co_await YieldToExecutor{};
    int r = co_await base()->Flush();
    co_await YieldToExecutor{};
    co_return r;
  }
  Task<int> Discard(uint64_t offset_bytes, uint64_t length_bytes) override {
    co_await YieldToExecutor{};
    int r = co_await base()->Discard(offset_bytes, length_bytes);
    co_await YieldToExecutor{};
    co_return r;
  }
  Task<int> WriteZeroes(uint64_t offset_bytes, uint64_t length_bytes) override {
    co_await YieldToExecutor{};
    int r = co_await base()->WriteZeroes(offset_bytes, length_bytes);
    co_await YieldToExecutor{};
    co_return r;
  }
  Task<int> Truncate(uint64_t size_bytes) override {
    co_await YieldToExecutor{};
    int r = co_await base()->Truncate(size_bytes);
    co_await YieldToExecutor{};
    co_return r;
  }
};

// An in-memory file with no lock at all, for ThreadSanitizer runs: MemFile's
// one mutex orders every pair of file operations from different threads,
// which would hide from TSan any engine race whose two sides are separated
// by file I/O (a real io_uring file has no such lock). Concurrent operations
// on disjoint byte ranges are fine; on overlapping ones (a write with
// anything) TSan reports them, and they would be a bug in the engine too:
// it must never write file bytes that another request reads or writes at
// the same time.
// Capacity is fixed at construction; the size grows atomically up to it.
// Thread-safe as described; contents() for a quiescent file only.
class UnlockedFile final : public io::BlockFile {
 public:
  UnlockedFile(std::span<const std::byte> contents, uint64_t capacity_bytes)
      : bytes_(std::max<uint64_t>(capacity_bytes, contents.size())), size_(contents.size()) {
    std::memcpy(bytes_.data(), contents.data(), contents.size());
  }

  Task<int64_t> ReadV(uint64_t offset_bytes, std::span<const iovec> iov) override {
    uint64_t pos = offset_bytes;
    const uint64_t size = size_.load(std::memory_order_acquire);
    for (const iovec& v : iov) {
      auto* dst = static_cast<std::byte*>(v.iov_base);
      const uint64_t avail = pos < size ? std::min<uint64_t>(v.iov_len, size - pos) : 0;
      if (avail > 0) std::memcpy(dst, bytes_.data() + pos, avail);
      if (avail < v.iov_len) std::memset(dst + avail, 0, v.iov_len - avail);
      pos += v.iov_len;
    }
    co_return static_cast<int64_t>(pos - offset_bytes);
  }
  Task<int64_t> WriteV(uint64_t offset_bytes, std::span<const iovec> iov) override {
    uint64_t length = 0;
    for (const iovec& v : iov) length += v.iov_len;
    if (offset_bytes + length > bytes_.size()) co_return -EFBIG;
    uint64_t pos = offset_bytes;
    for (const iovec& v : iov) {
      std::memcpy(bytes_.data() + pos, v.iov_base, v.iov_len);
      pos += v.iov_len;
    }
    GrowTo(pos);
    co_return static_cast<int64_t>(length);
  }
  Task<int> Flush() override { co_return 0; }
  Task<int> Discard(uint64_t offset_bytes, uint64_t length_bytes) override {
    const uint64_t size = size_.load(std::memory_order_acquire);
    if (offset_bytes < size) {
      std::memset(bytes_.data() + offset_bytes, 0,
                  std::min(offset_bytes + length_bytes, size) - offset_bytes);
    }
    co_return 0;
  }
  Task<int> WriteZeroes(uint64_t offset_bytes, uint64_t length_bytes) override {
    if (offset_bytes + length_bytes > bytes_.size()) co_return -EFBIG;
    std::memset(bytes_.data() + offset_bytes, 0, length_bytes);
    GrowTo(offset_bytes + length_bytes);
    co_return 0;
  }
  Task<int> Truncate(uint64_t size_bytes) override {
    if (size_bytes > bytes_.size()) co_return -EFBIG;
    const uint64_t old = size_.exchange(size_bytes);
    if (size_bytes < old) std::memset(bytes_.data() + size_bytes, 0, old - size_bytes);
    co_return 0;
  }
  uint64_t size_bytes() const override { return size_.load(std::memory_order_acquire); }
  bool read_only() const override { return false; }

  std::span<const std::byte> contents() const { return {bytes_.data(), size_bytes()}; }

 private:
  void GrowTo(uint64_t end) {
    uint64_t cur = size_.load(std::memory_order_relaxed);
    while (cur < end && !size_.compare_exchange_weak(cur, end, std::memory_order_acq_rel)) {
    }
  }

  std::vector<std::byte> bytes_;
  std::atomic<uint64_t> size_;
};

}  // namespace uq::engine::testing

#endif  // UQ_TESTS_ENGINE_THREAD_UTIL_H_
