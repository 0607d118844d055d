#include "src/io/aligned_file.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "src/io/iovec.h"

namespace uq::io {
namespace {

struct FreeDeleter {
  void operator()(std::byte* p) const { std::free(p); }
};
using AlignedBuffer = std::unique_ptr<std::byte[], FreeDeleter>;

AlignedBuffer AllocAligned(uint64_t align, uint64_t bytes) {
  return AlignedBuffer(static_cast<std::byte*>(std::aligned_alloc(align, bytes)));
}

}  // namespace

AlignedFile::AlignedFile(std::unique_ptr<BlockFile> inner, uint32_t alignment_bytes)
    : FileWrapper(std::move(inner)), align_(alignment_bytes) {}

AlignedFile::~AlignedFile() = default;

bool AlignedFile::Aligned(uint64_t offset_bytes, std::span<const iovec> iov) const {
  const uint64_t mask = align_ - 1;
  if (offset_bytes & mask) return false;
  for (const iovec& v : iov) {
    if ((reinterpret_cast<uintptr_t>(v.iov_base) | v.iov_len) & mask) return false;
  }
  return true;
}

Task<void> AlignedFile::Enter(InFlight* w) {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    InFlight* conflict = nullptr;
    for (InFlight* o = head_; o != nullptr; o = o->next) {
      if (o->begin < w->end && w->begin < o->end && (o->rmw || w->rmw)) {
        conflict = o;
        break;
      }
    }
    if (conflict == nullptr) break;
    // Parks with the lock held until the node is linked, then drops it: the
    // waker takes the node under the same lock, so no wake-up is lost.
    struct Park {
      InFlight* on;
      std::unique_lock<std::mutex>* lock;
      Waiter node;
      bool await_ready() const noexcept { return false; }
      void await_suspend(std::coroutine_handle<> h) noexcept {
        node.handle = h;
        node.executor = Executor::Current();
        node.next = on->waiters;
        on->waiters = &node;
        lock->unlock();
      }
      void await_resume() const noexcept {}
    };
    co_await Park{conflict, &lock, {}};
    lock.lock();
  }
  w->next = head_;
  if (head_ != nullptr) head_->prev = w;
  head_ = w;
}

void AlignedFile::Leave(InFlight* w) {
  Waiter* waiters = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (w->prev != nullptr) {
      w->prev->next = w->next;
    } else {
      head_ = w->next;
    }
    if (w->next != nullptr) w->next->prev = w->prev;
    waiters = std::exchange(w->waiters, nullptr);
  }
  // Waiters were pushed to the front: reverse to wake them oldest first. Each
  // rechecks for conflicts (Enter loops). Read `next` and the executor before
  // resuming: the node dies with its coroutine's frame.
  Waiter* waiter = nullptr;
  for (Waiter* p = waiters; p != nullptr;) {
    Waiter* next = p->next;
    p->next = waiter;
    waiter = p;
    p = next;
  }
  while (waiter != nullptr) {
    Waiter* next = waiter->next;
    ResumeOn(waiter->executor, waiter->handle);
    waiter = next;
  }
}

Task<int64_t> AlignedFile::ReadV(uint64_t offset_bytes, std::span<const iovec> iov) {
  if (Aligned(offset_bytes, iov)) co_return co_await base()->ReadV(offset_bytes, iov);
  bounced_ops_.fetch_add(1, std::memory_order_relaxed);
  const uint64_t len = IovLength(iov);
  if (len == 0) co_return 0;
  const uint64_t begin = offset_bytes & ~uint64_t{align_ - 1};
  const uint64_t end = (offset_bytes + len + align_ - 1) & ~uint64_t{align_ - 1};
  AlignedBuffer buf = AllocAligned(align_, end - begin);
  if (!buf) co_return -ENOMEM;
  int64_t r = co_await base()->Read(begin, std::span<std::byte>(buf.get(), end - begin));
  if (r < 0) co_return r;
  CopyToIov(iov, buf.get() + (offset_bytes - begin));
  co_return static_cast<int64_t>(len);
}

Task<int64_t> AlignedFile::WriteBounced(uint64_t offset_bytes, std::span<const iovec> iov,
                                        uint64_t len) {
  bounced_ops_.fetch_add(1, std::memory_order_relaxed);
  const uint64_t begin = offset_bytes & ~uint64_t{align_ - 1};
  const uint64_t end = (offset_bytes + len + align_ - 1) & ~uint64_t{align_ - 1};
  InFlight w{begin, end, true};
  co_await Enter(&w);
  int64_t result = static_cast<int64_t>(len);
  AlignedBuffer buf = AllocAligned(align_, end - begin);
  if (!buf) {
    result = -ENOMEM;
  } else {
    // Only the partial edge blocks need their old contents.
    const bool head_partial = offset_bytes != begin;
    const bool tail_partial = offset_bytes + len != end;
    int64_t r = 0;
    if (head_partial) {
      r = co_await base()->Read(begin, std::span<std::byte>(buf.get(), align_));
    }
    if (r >= 0 && tail_partial && (end - align_ != begin || !head_partial)) {
      r = co_await base()->Read(end - align_,
                                std::span<std::byte>(buf.get() + (end - begin - align_), align_));
    }
    if (r < 0) {
      result = r;
    } else {
      std::byte* dst = buf.get() + (offset_bytes - begin);
      if (iov.empty()) {
        std::memset(dst, 0, len);
      } else {
        CopyFromIov(iov, dst);
      }
      r = co_await base()->Write(begin, std::span<const std::byte>(buf.get(), end - begin));
      if (r < 0) result = r;
    }
  }
  Leave(&w);
  co_return result;
}

Task<int64_t> AlignedFile::WriteV(uint64_t offset_bytes, std::span<const iovec> iov) {
  const uint64_t len = IovLength(iov);
  if (len == 0) co_return 0;
  if (!Aligned(offset_bytes, iov)) co_return co_await WriteBounced(offset_bytes, iov, len);
  InFlight w{offset_bytes, offset_bytes + len, false};
  co_await Enter(&w);
  int64_t r = co_await base()->WriteV(offset_bytes, iov);
  Leave(&w);
  co_return r;
}

Task<int> AlignedFile::WriteZeroes(uint64_t offset_bytes, uint64_t length_bytes) {
  const uint64_t mask = align_ - 1;
  const uint64_t end = offset_bytes + length_bytes;
  const uint64_t mid_begin = (offset_bytes + mask) & ~mask;
  const uint64_t mid_end = end & ~mask;
  if (mid_begin >= mid_end) {
    int64_t r = co_await WriteBounced(offset_bytes, {}, length_bytes);
    co_return r < 0 ? static_cast<int>(r) : 0;
  }
  if (offset_bytes < mid_begin) {
    int64_t r = co_await WriteBounced(offset_bytes, {}, mid_begin - offset_bytes);
    if (r < 0) co_return static_cast<int>(r);
  }
  if (mid_end < end) {
    int64_t r = co_await WriteBounced(mid_end, {}, end - mid_end);
    if (r < 0) co_return static_cast<int>(r);
  }
  InFlight w{mid_begin, mid_end, false};
  co_await Enter(&w);
  int r = co_await base()->WriteZeroes(mid_begin, mid_end - mid_begin);
  Leave(&w);
  co_return r;
}

Task<int> AlignedFile::Discard(uint64_t offset_bytes, uint64_t length_bytes) {
  const uint64_t mask = align_ - 1;
  const uint64_t end = offset_bytes + length_bytes;
  const uint64_t mid_begin = (offset_bytes + mask) & ~mask;
  const uint64_t mid_end = end & ~mask;
  if (mid_begin >= mid_end) co_return co_await WriteZeroes(offset_bytes, length_bytes);
  // Partial edge blocks cannot be punched; zero them so they read as zero.
  if (offset_bytes < mid_begin) {
    int64_t r = co_await WriteBounced(offset_bytes, {}, mid_begin - offset_bytes);
    if (r < 0) co_return static_cast<int>(r);
  }
  if (mid_end < end) {
    int64_t r = co_await WriteBounced(mid_end, {}, end - mid_end);
    if (r < 0) co_return static_cast<int>(r);
  }
  InFlight w{mid_begin, mid_end, false};
  co_await Enter(&w);
  int r = co_await base()->Discard(mid_begin, mid_end - mid_begin);
  Leave(&w);
  co_return r;
}

}  // namespace uq::io
