// Coroutine parking primitives for one event loop: WaitList (park until
// woken), AsyncMutex (FIFO, hands ownership to the next waiter) and KeyedRwLock
// (shared/exclusive lock per 64-bit key, FIFO so writers do not starve).
//
// Waking resumes the parked coroutines synchronously, on the waker's stack, in
// FIFO order. Callers finish their own state updates before waking and do not
// touch state that a resumed coroutine may destroy afterwards.
//
// Thread-safety: none; every primitive belongs to one event loop thread. (A
// multi-queue engine gives each queue its own, or replaces them with
// std::mutex-guarded versions that post the wake-up to the waiter's loop.)
#ifndef UQ_CACHE_WAIT_LIST_H_
#define UQ_CACHE_WAIT_LIST_H_

#include <coroutine>
#include <cstdint>
#include <deque>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"

namespace uq::cache {

class WaitList {
 public:
  WaitList() = default;
  WaitList(const WaitList&) = delete;
  WaitList& operator=(const WaitList&) = delete;

  // co_await list.Wait(): parks until WakeAll().
  auto Wait() {
    struct Awaiter {
      WaitList* list;
      bool await_ready() const noexcept { return false; }
      void await_suspend(std::coroutine_handle<> h) { list->waiters_.push_back(h); }
      void await_resume() const noexcept {}
    };
    return Awaiter{this};
  }

  // Resumes every coroutine parked so far. `this` may be destroyed by the
  // resumed coroutines: the list is moved out first.
  void WakeAll() {
    if (waiters_.empty()) return;
    std::vector<std::coroutine_handle<>> waiters = std::move(waiters_);
    waiters_.clear();
    for (std::coroutine_handle<> h : waiters) h.resume();
  }

  bool empty() const { return waiters_.empty(); }

 private:
  std::vector<std::coroutine_handle<>> waiters_;
};

class AsyncMutex {
 public:
  AsyncMutex() = default;
  AsyncMutex(const AsyncMutex&) = delete;
  AsyncMutex& operator=(const AsyncMutex&) = delete;

  // co_await mutex.Lock(): returns holding the lock.
  auto Lock() {
    struct Awaiter {
      AsyncMutex* m;
      bool await_ready() noexcept {
        if (m->locked_) return false;
        m->locked_ = true;
        return true;
      }
      void await_suspend(std::coroutine_handle<> h) { m->waiters_.push_back(h); }
      void await_resume() const noexcept {}
    };
    return Awaiter{this};
  }

  // Hands the lock to the oldest waiter (resumed now) or releases it.
  void Unlock() {
    if (waiters_.empty()) {
      locked_ = false;
      return;
    }
    std::coroutine_handle<> next = waiters_.front();
    waiters_.pop_front();
    next.resume();
  }

  bool locked() const { return locked_; }

 private:
  bool locked_ = false;
  std::deque<std::coroutine_handle<>> waiters_;
};

// RAII holder for an AsyncMutex already locked by the caller.
class MutexGuard {
 public:
  explicit MutexGuard(AsyncMutex* m) : m_(m) {}
  MutexGuard(const MutexGuard&) = delete;
  MutexGuard& operator=(const MutexGuard&) = delete;
  ~MutexGuard() {
    if (m_ != nullptr) m_->Unlock();
  }
  void Release() {
    if (m_ != nullptr) std::exchange(m_, nullptr)->Unlock();
  }

 private:
  AsyncMutex* m_;
};

// Shared/exclusive locks keyed by a 64-bit value (the engine keys them by guest
// cluster index). State exists only while a key is held or waited on; waiters
// are linked through nodes inside their own awaiters (coroutine frames), and
// the table is a flat hash map, so taking an uncontended lock allocates
// nothing once the table has grown to the peak number of held keys.
class KeyedRwLock {
 private:
  struct Waiter {
    std::coroutine_handle<> handle;
    bool exclusive = false;
    Waiter* next = nullptr;
  };
  struct State {
    int readers = 0;
    bool writer = false;
    Waiter* head = nullptr;
    Waiter* tail = nullptr;
  };

 public:
  KeyedRwLock() = default;
  KeyedRwLock(const KeyedRwLock&) = delete;
  KeyedRwLock& operator=(const KeyedRwLock&) = delete;

  // co_await locks.Lock(key, exclusive): returns holding the lock.
  auto Lock(uint64_t key, bool exclusive) {
    struct Awaiter {
      KeyedRwLock* l;
      uint64_t key;
      bool exclusive;
      Waiter node;
      bool await_ready() {
        State& s = l->states_[key];
        if (s.head == nullptr && !s.writer && (!exclusive || s.readers == 0)) {
          if (exclusive) {
            s.writer = true;
          } else {
            ++s.readers;
          }
          return true;
        }
        return false;
      }
      void await_suspend(std::coroutine_handle<> h) {
        node.handle = h;
        node.exclusive = exclusive;
        node.next = nullptr;
        State& s = l->states_[key];
        if (s.tail != nullptr) {
          s.tail->next = &node;
        } else {
          s.head = &node;
        }
        s.tail = &node;
      }
      void await_resume() const noexcept {}
    };
    return Awaiter{this, key, exclusive, {}};
  }

  void Unlock(uint64_t key, bool exclusive) {
    auto it = states_.find(key);
    State& s = it->second;
    if (exclusive) {
      s.writer = false;
    } else {
      --s.readers;
    }
    // Grant to the front of the queue: one writer, or every leading reader.
    Waiter* granted = nullptr;
    Waiter** granted_tail = &granted;
    while (s.head != nullptr && !s.writer) {
      Waiter* w = s.head;
      if (w->exclusive) {
        if (s.readers != 0) break;
        s.writer = true;
      } else {
        ++s.readers;
      }
      s.head = w->next;
      if (s.head == nullptr) s.tail = nullptr;
      w->next = nullptr;
      *granted_tail = w;
      granted_tail = &w->next;
    }
    if (!s.writer && s.readers == 0 && s.head == nullptr) states_.erase(it);
    while (granted != nullptr) {
      Waiter* w = granted;
      granted = w->next;  // read before resuming: the node dies with its frame
      w->handle.resume();
    }
  }

  size_t held_keys() const { return states_.size(); }

 private:
  absl::flat_hash_map<uint64_t, State> states_;
};

// RAII holder for a KeyedRwLock key already locked by the caller.
class KeyedLockGuard {
 public:
  KeyedLockGuard() = default;
  KeyedLockGuard(KeyedRwLock* locks, uint64_t key, bool exclusive)
      : locks_(locks), key_(key), exclusive_(exclusive) {}
  KeyedLockGuard(const KeyedLockGuard&) = delete;
  KeyedLockGuard& operator=(const KeyedLockGuard&) = delete;
  KeyedLockGuard(KeyedLockGuard&& o) noexcept
      : locks_(std::exchange(o.locks_, nullptr)), key_(o.key_), exclusive_(o.exclusive_) {}
  KeyedLockGuard& operator=(KeyedLockGuard&& o) noexcept {
    if (this != &o) {
      Release();
      locks_ = std::exchange(o.locks_, nullptr);
      key_ = o.key_;
      exclusive_ = o.exclusive_;
    }
    return *this;
  }
  ~KeyedLockGuard() { Release(); }
  // Takes over a key the caller has just locked (releasing any held one).
  void Adopt(KeyedRwLock* locks, uint64_t key, bool exclusive) {
    Release();
    locks_ = locks;
    key_ = key;
    exclusive_ = exclusive;
  }
  void Release() {
    if (locks_ != nullptr) std::exchange(locks_, nullptr)->Unlock(key_, exclusive_);
  }

 private:
  KeyedRwLock* locks_ = nullptr;
  uint64_t key_ = 0;
  bool exclusive_ = false;
};

}  // namespace uq::cache

#endif  // UQ_CACHE_WAIT_LIST_H_
