#include "tests/alloc_counter.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <new>

// The libc allocator under the --wrap'ed names (see the uq_alloc_counter
// target's link options): calling these does not count.
extern "C" {
void* __real_malloc(size_t bytes);
void* __real_calloc(size_t count, size_t bytes);
void* __real_realloc(void* p, size_t bytes);
void* __real_aligned_alloc(size_t align, size_t bytes);
int __real_posix_memalign(void** out, size_t align, size_t bytes);
}

namespace uq::testing {
namespace {

// Trivially destructible and constant-initialised, so it is usable from any
// allocation at any point of a thread's life, including its teardown.
struct ThreadState {
  uint64_t count;
  uint64_t bytes;
  AllocationCounter* innermost;
};
constinit thread_local ThreadState tls_state{};

void* CountedMalloc(size_t bytes) {
  RecordAllocation(bytes);
  return __real_malloc(bytes == 0 ? 1 : bytes);
}

void* CountedAligned(size_t bytes, size_t align) {
  RecordAllocation(bytes);
  void* p = nullptr;
  // posix_memalign needs a multiple of sizeof(void*); aligned new may ask less.
  align = std::max(align, sizeof(void*));
  return __real_posix_memalign(&p, align, bytes == 0 ? 1 : bytes) == 0 ? p : nullptr;
}

// Tests do not recover from running out of memory.
void* OrDie(void* p) {
  if (p == nullptr) {
    std::fputs("alloc_counter: out of memory\n", stderr);
    std::abort();
  }
  return p;
}

}  // namespace

void RecordAllocation(size_t bytes) {
  ThreadState& s = tls_state;
  ++s.count;
  s.bytes += bytes;
  AllocationCounter* c = s.innermost;
  if (c != nullptr && c->recorded_ < AllocationCounter::kRecordedSizes) {
    c->sizes_[c->recorded_++] = bytes;
  }
}

AllocationCounter::AllocationCounter()
    : start_count_(tls_state.count), start_bytes_(tls_state.bytes), outer_(tls_state.innermost) {
  tls_state.innermost = this;
}

AllocationCounter::~AllocationCounter() { tls_state.innermost = outer_; }

uint64_t AllocationCounter::count() const { return tls_state.count - start_count_; }
uint64_t AllocationCounter::bytes() const { return tls_state.bytes - start_bytes_; }
uint64_t AllocationCounter::ThreadTotal() { return tls_state.count; }

std::string AllocationCounter::Describe() const {
  // Snapshot first: building the string allocates (and records its sizes).
  const uint64_t n = count();
  const uint64_t b = bytes();
  const int shown = static_cast<int>(std::min<uint64_t>(recorded_, n));
  std::string s = std::to_string(n) + " allocations, " + std::to_string(b) + " bytes";
  if (shown > 0) {
    s += "; sizes:";
    for (int i = 0; i < shown; ++i) s += " " + std::to_string(sizes_[i]);
    if (n > static_cast<uint64_t>(shown)) s += " ...";
  }
  return s;
}

}  // namespace uq::testing

using uq::testing::CountedAligned;
using uq::testing::CountedMalloc;
using uq::testing::OrDie;

// Replaceable global allocation functions ([new.delete]): every form.
void* operator new(size_t bytes) { return OrDie(CountedMalloc(bytes)); }
void* operator new[](size_t bytes) { return OrDie(CountedMalloc(bytes)); }
void* operator new(size_t bytes, const std::nothrow_t&) noexcept { return CountedMalloc(bytes); }
void* operator new[](size_t bytes, const std::nothrow_t&) noexcept { return CountedMalloc(bytes); }
void* operator new(size_t bytes, std::align_val_t align) {
  return OrDie(CountedAligned(bytes, static_cast<size_t>(align)));
}
void* operator new[](size_t bytes, std::align_val_t align) {
  return OrDie(CountedAligned(bytes, static_cast<size_t>(align)));
}
void* operator new(size_t bytes, std::align_val_t align, const std::nothrow_t&) noexcept {
  return CountedAligned(bytes, static_cast<size_t>(align));
}
void* operator new[](size_t bytes, std::align_val_t align, const std::nothrow_t&) noexcept {
  return CountedAligned(bytes, static_cast<size_t>(align));
}

// Every block above came from malloc or posix_memalign: free() releases all.
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }

// malloc and friends called from code linked into the executable.
extern "C" {
void* __wrap_malloc(size_t bytes) {
  uq::testing::RecordAllocation(bytes);
  return __real_malloc(bytes);
}
void* __wrap_calloc(size_t count, size_t bytes) {
  uq::testing::RecordAllocation(count * bytes);
  return __real_calloc(count, bytes);
}
void* __wrap_realloc(void* p, size_t bytes) {
  uq::testing::RecordAllocation(bytes);
  return __real_realloc(p, bytes);
}
void* __wrap_aligned_alloc(size_t align, size_t bytes) {
  uq::testing::RecordAllocation(bytes);
  return __real_aligned_alloc(align, bytes);
}
int __wrap_posix_memalign(void** out, size_t align, size_t bytes) {
  uq::testing::RecordAllocation(bytes);
  return __real_posix_memalign(out, align, bytes);
}
}
