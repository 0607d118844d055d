// FramePool: per-thread recycling of coroutine frames. Task<T>'s promise
// allocates its frame here (task.h), so a request path that creates and
// finishes the same coroutines again and again reuses their frames and, once
// warm, never reaches the heap.
//
// Shape: frames up to kMaxPooledBytes are rounded up to a multiple of
// kGranuleBytes (a size class); each thread keeps one LIFO free list per
// class. A miss allocates a block of the class's size with ::operator new; a
// free pushes the block onto the *freeing* thread's list (a frame may finish
// on another thread than the one that created it: that is safe, the block
// simply changes pools). A thread caches at most kMaxCachedBytes; frees past
// that, and larger frames, go straight back to ::operator delete. A thread's
// cached blocks are released when it exits; frames freed after that (during
// thread or static destruction) bypass the pool.
//
// Memory bound: the pool holds what the thread's peak of live frames was (a
// queue at depth 128 with a few frames per request: well under a MiB), up
// to kMaxCachedBytes. Trim() gives it back.
//
// "Warm" therefore means: for each size class, as many frames have been live
// at once as will be again. A test asserting zero allocations warms up with
// every request kind it measures at full depth (reads only, writes only, then
// the mix), not just with the mix.
//
// Thread-safety: every operation touches only the calling thread's state
// (thread_local), so there is nothing to lock and nothing for TSan to flag.
// Under ASan a cached block is poisoned until it is handed out again, so a
// use after a frame's destruction is still reported while the block is idle.
#ifndef UQ_SRC_IO_FRAME_POOL_H_
#define UQ_SRC_IO_FRAME_POOL_H_

#include <cstddef>
#include <cstdint>

#if defined(__SANITIZE_ADDRESS__)
#define UQ_FRAME_POOL_POISON 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UQ_FRAME_POOL_POISON 1
#endif
#endif
#ifndef UQ_FRAME_POOL_POISON
#define UQ_FRAME_POOL_POISON 0
#endif

namespace uq {

class FramePool {
 public:
  static constexpr size_t kGranuleBytes = 64;
  static constexpr size_t kMaxPooledBytes = 8192;
  static constexpr size_t kClasses = kMaxPooledBytes / kGranuleBytes;
  static constexpr uint64_t kMaxCachedBytes = uint64_t{8} << 20;

  // A block of at least `bytes` (> 0), aligned like ::operator new's.
  static void* Allocate(size_t bytes);
  // Returns a block from Allocate(bytes), with the same `bytes`.
  static void Deallocate(void* p, size_t bytes) noexcept;

  // The calling thread's pool.
  struct Stats {
    uint64_t hits = 0;          // allocations served from a free list
    uint64_t misses = 0;        // allocations that reached ::operator new
    uint64_t cached_bytes = 0;  // idle blocks held now
  };
  static Stats ThreadStats();
  // Releases the calling thread's idle blocks.
  static void Trim() noexcept;

 private:
  struct Block {
    Block* next;
  };
  enum class Life : uint8_t { kUnregistered, kLive, kDead };
  // Trivially destructible and constant-initialised: valid for the whole
  // life of the thread, even while other thread_locals are destroyed.
  struct ThreadState {
    Block* free[kClasses];
    uint64_t cached_bytes;
    uint64_t hits;
    uint64_t misses;
    Life life;
  };
  static constinit thread_local ThreadState tls_;

  static size_t ClassOf(size_t bytes) { return (bytes - 1) / kGranuleBytes; }
  static size_t ClassBytes(size_t cls) { return (cls + 1) * kGranuleBytes; }
  static void* AllocateSlow(size_t bytes);
  static void DeallocateSlow(void* p, size_t bytes) noexcept;
  static void Register() noexcept;
  static void ThreadExit() noexcept;
  friend struct FramePoolThreadExit;
};

// The fast paths are inline: a hit is a thread_local load and a pointer pop.
// Under ASan everything goes out of line, where blocks are (un)poisoned.

inline void* FramePool::Allocate(size_t bytes) {
#if !UQ_FRAME_POOL_POISON
  const size_t cls = ClassOf(bytes);
  if (cls < kClasses) {
    ThreadState& s = tls_;
    if (Block* b = s.free[cls]) {
      s.free[cls] = b->next;
      s.cached_bytes -= ClassBytes(cls);
      ++s.hits;
      return b;
    }
  }
#endif
  return AllocateSlow(bytes);
}

inline void FramePool::Deallocate(void* p, size_t bytes) noexcept {
#if !UQ_FRAME_POOL_POISON
  const size_t cls = ClassOf(bytes);
  ThreadState& s = tls_;
  if (cls < kClasses && s.life == Life::kLive &&
      s.cached_bytes + ClassBytes(cls) <= kMaxCachedBytes) {
    auto* b = static_cast<Block*>(p);
    b->next = s.free[cls];
    s.free[cls] = b;
    s.cached_bytes += ClassBytes(cls);
    return;
  }
#endif
  DeallocateSlow(p, bytes);
}

}  // namespace uq

#endif  // UQ_SRC_IO_FRAME_POOL_H_
