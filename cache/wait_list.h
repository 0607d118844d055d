// Coroutine parking primitives, safe to share between the queue threads of
// one image: WaitList (park until woken, under the owner's mutex), AsyncMutex
// (FIFO, hands ownership to the next waiter) and KeyedRwLock (shared /
// exclusive locks per 64-bit key, FIFO so writers do not starve, sharded so
// unrelated keys never contend).
//
// A parked coroutine records its thread's executor (src/io/executor.h).
// Waking resumes it inline when the waker runs on that same thread (as a
// single-threaded engine always did) and otherwise posts it to its own
// thread's loop: a coroutine never runs on another queue's thread. Wakers
// finish their own state updates and release their mutexes before waking,
// and do not touch state a resumed coroutine may destroy.
//
// Waiters are linked through nodes inside their awaiters (in the coroutine
// frames): parking allocates nothing, and neither does taking an uncontended
// lock once a KeyedRwLock shard's table has grown to its peak.
//
// Thread-safety: AsyncMutex and KeyedRwLock are thread-safe; their internal
// std::mutex sections are short and never span a suspension. WaitList is
// guarded by its owner's mutex (see Wait).
#ifndef UQ_CACHE_WAIT_LIST_H_
#define UQ_CACHE_WAIT_LIST_H_

#include <array>
#include <coroutine>
#include <cstdint>
#include <mutex>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "src/io/executor.h"

namespace uq::cache {

// A parked coroutine: where it is and where to resume it.
struct WaitNode {
  std::coroutine_handle<> handle;
  io::Executor* executor = nullptr;
  WaitNode* next = nullptr;
};

// Resumes every node of a detached list (each on its own thread).
inline void WakeNodes(WaitNode* head) {
  while (head != nullptr) {
    WaitNode* n = head;
    head = n->next;  // read before resuming: the node dies with its frame
    io::ResumeOn(n->executor, n->handle);
  }
}

// A FIFO list of parked coroutines, guarded by its owner's mutex.
class WaitList {
 public:
  WaitList() = default;
  WaitList(const WaitList&) = delete;
  WaitList& operator=(const WaitList&) = delete;

  // co_await list.Wait(lock): parks and releases `lock` (which guards this
  // list and the condition the caller checked); the caller re-locks after
  // waking. REQUIRES: `lock` owns the owner's mutex.
  auto Wait(std::unique_lock<std::mutex>& lock) {
    struct Awaiter {
      WaitList* list;
      std::unique_lock<std::mutex>* lock;
      WaitNode node;
      bool await_ready() const noexcept { return false; }
      void await_suspend(std::coroutine_handle<> h) {
        node.handle = h;
        node.executor = io::Executor::Current();
        list->Append(&node);
        lock->unlock();
      }
      void await_resume() const noexcept {}
    };
    return Awaiter{this, &lock, {}};
  }

  // Detaches every parked coroutine, for WakeNodes once the owner's mutex is
  // released. REQUIRES: the owner's mutex.
  WaitNode* TakeAll() {
    WaitNode* head = head_;
    head_ = tail_ = nullptr;
    return head;
  }

  bool empty() const { return head_ == nullptr; }

 private:
  void Append(WaitNode* n) {
    n->next = nullptr;
    if (tail_ != nullptr) {
      tail_->next = n;
    } else {
      head_ = n;
    }
    tail_ = n;
  }

  WaitNode* head_ = nullptr;
  WaitNode* tail_ = nullptr;
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
      WaitNode node;
      bool await_ready() noexcept {
        std::lock_guard<std::mutex> g(m->mu_);
        if (m->locked_) return false;
        m->locked_ = true;
        return true;
      }
      bool await_suspend(std::coroutine_handle<> h) {
        std::lock_guard<std::mutex> g(m->mu_);
        if (!m->locked_) {  // unlocked since await_ready
          m->locked_ = true;
          return false;
        }
        node.handle = h;
        node.executor = io::Executor::Current();
        node.next = nullptr;
        if (m->tail_ != nullptr) {
          m->tail_->next = &node;
        } else {
          m->head_ = &node;
        }
        m->tail_ = &node;
        return true;
      }
      void await_resume() const noexcept {}
    };
    return Awaiter{this, {}};
  }

  // Hands the lock to the oldest waiter (resumed on its thread) or releases
  // it.
  void Unlock() {
    WaitNode* next;
    {
      std::lock_guard<std::mutex> g(mu_);
      next = head_;
      if (next == nullptr) {
        locked_ = false;
        return;
      }
      head_ = next->next;
      if (head_ == nullptr) tail_ = nullptr;
    }
    io::ResumeOn(next->executor, next->handle);
  }

  bool locked() const {
    std::lock_guard<std::mutex> g(mu_);
    return locked_;
  }

 private:
  mutable std::mutex mu_;
  bool locked_ = false;
  WaitNode* head_ = nullptr;
  WaitNode* tail_ = nullptr;
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
// cluster index). State exists only while a key is held or waited on.
class KeyedRwLock {
 private:
  struct Waiter {
    WaitNode node;
    bool exclusive = false;
    Waiter* next = nullptr;
  };
  struct State {
    int readers = 0;
    bool writer = false;
    Waiter* head = nullptr;
    Waiter* tail = nullptr;
  };
  struct Shard {
    std::mutex mu;
    absl::flat_hash_map<uint64_t, State> states;
  };
  static constexpr size_t kShards = 64;
  Shard& ShardOf(uint64_t key) { return shards_[(key * 0x9e3779b97f4a7c15ull) >> 58]; }

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
      Waiter w;
      bool TryTake(State& s) {
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
      bool await_ready() {
        Shard& sh = l->ShardOf(key);
        std::lock_guard<std::mutex> g(sh.mu);
        return TryTake(sh.states[key]);
      }
      bool await_suspend(std::coroutine_handle<> h) {
        Shard& sh = l->ShardOf(key);
        std::lock_guard<std::mutex> g(sh.mu);
        State& s = sh.states[key];
        if (TryTake(s)) return false;  // released since await_ready
        w.node.handle = h;
        w.node.executor = io::Executor::Current();
        w.exclusive = exclusive;
        w.next = nullptr;
        if (s.tail != nullptr) {
          s.tail->next = &w;
        } else {
          s.head = &w;
        }
        s.tail = &w;
        return true;
      }
      void await_resume() const noexcept {}
    };
    return Awaiter{this, key, exclusive, {}};
  }

  void Unlock(uint64_t key, bool exclusive) {
    WaitNode* granted = nullptr;
    WaitNode** granted_tail = &granted;
    {
      Shard& sh = ShardOf(key);
      std::lock_guard<std::mutex> g(sh.mu);
      auto it = sh.states.find(key);
      State& s = it->second;
      if (exclusive) {
        s.writer = false;
      } else {
        --s.readers;
      }
      // Grant to the front of the queue: one writer, or every leading reader.
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
        w->node.next = nullptr;
        *granted_tail = &w->node;
        granted_tail = &w->node.next;
      }
      if (!s.writer && s.readers == 0 && s.head == nullptr) sh.states.erase(it);
    }
    WakeNodes(granted);
  }

  size_t held_keys() {
    size_t n = 0;
    for (Shard& sh : shards_) {
      std::lock_guard<std::mutex> g(sh.mu);
      n += sh.states.size();
    }
    return n;
  }

 private:
  std::array<Shard, kShards> shards_;
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
