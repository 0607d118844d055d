#include "src/io/frame_pool.h"

#include <new>

#if UQ_FRAME_POOL_POISON
#include <sanitizer/asan_interface.h>
#endif

namespace uq {

constinit thread_local FramePool::ThreadState FramePool::tls_{};

// Its destructor, registered per thread on first use of the pool, releases
// the thread's idle blocks when the thread exits.
struct FramePoolThreadExit {
  ~FramePoolThreadExit() { FramePool::ThreadExit(); }
};

void FramePool::Register() noexcept {
  // Constructed (and its destructor queued) the first time a thread gets here.
  thread_local FramePoolThreadExit on_exit;
  tls_.life = Life::kLive;
}

void* FramePool::AllocateSlow(size_t bytes) {
  ThreadState& s = tls_;
  if (s.life == Life::kUnregistered) Register();
  const size_t cls = ClassOf(bytes);
  if (cls >= kClasses) return ::operator new(bytes);
  if (Block* b = s.free[cls]) {
#if UQ_FRAME_POOL_POISON
    ASAN_UNPOISON_MEMORY_REGION(b, ClassBytes(cls));
#endif
    s.free[cls] = b->next;
    s.cached_bytes -= ClassBytes(cls);
    ++s.hits;
    return b;
  }
  ++s.misses;
  return ::operator new(ClassBytes(cls));
}

void FramePool::DeallocateSlow(void* p, size_t bytes) noexcept {
  ThreadState& s = tls_;
  if (s.life == Life::kUnregistered) Register();
  const size_t cls = ClassOf(bytes);
  if (cls >= kClasses || s.life == Life::kDead ||
      s.cached_bytes + ClassBytes(cls) > kMaxCachedBytes) {
    ::operator delete(p);
    return;
  }
  auto* b = static_cast<Block*>(p);
  b->next = s.free[cls];
  s.free[cls] = b;
  s.cached_bytes += ClassBytes(cls);
#if UQ_FRAME_POOL_POISON
  ASAN_POISON_MEMORY_REGION(b, ClassBytes(cls));
#endif
}

FramePool::Stats FramePool::ThreadStats() {
  const ThreadState& s = tls_;
  return Stats{s.hits, s.misses, s.cached_bytes};
}

void FramePool::Trim() noexcept {
  ThreadState& s = tls_;
  for (size_t cls = 0; cls < kClasses; ++cls) {
    while (Block* b = s.free[cls]) {
#if UQ_FRAME_POOL_POISON
      ASAN_UNPOISON_MEMORY_REGION(b, ClassBytes(cls));
#endif
      s.free[cls] = b->next;
      ::operator delete(b);
    }
  }
  s.cached_bytes = 0;
}

void FramePool::ThreadExit() noexcept {
  Trim();
  tls_.life = Life::kDead;
}

}  // namespace uq
