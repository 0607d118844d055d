// AllocationCounter: counts the heap allocations a piece of code makes, for
// tests that assert a path allocates nothing once warm.
//
//   RunWarmUp();
//   testing::AllocationCounter allocs;
//   RunMeasured();
//   EXPECT_EQ(allocs.count(), 0u) << allocs.Describe();
//
// Link the `uq_alloc_counter` CMake target into the test executable. It
// replaces the global operator new / new[] (every form: sized, aligned,
// nothrow) with counting versions, and wraps (ld --wrap) malloc, calloc,
// realloc, aligned_alloc and posix_memalign for the code linked statically
// into the executable (our libraries, the test), so a hand-rolled malloc on a
// data path is caught too. Not counted: malloc calls made inside shared
// libraries (libc, libstdc++, zlib, zstd, absl) other than through operator
// new; frees.
//
// What is counted is per thread: a counter sees the allocations of the thread
// that created it, from its construction on (nested counters each see theirs).
// Other threads (gtest's, a helper's) never disturb a measurement.
//
// Works under ASan/UBSan/TSan: the replacements call the (intercepted) libc
// allocator, so the sanitizers still see every block.
//
// Thread-safety: an AllocationCounter is used and destroyed on the thread
// that constructed it.
#ifndef UQ_TESTS_ALLOC_COUNTER_H_
#define UQ_TESTS_ALLOC_COUNTER_H_

#include <cstddef>
#include <cstdint>
#include <string>

namespace uq::testing {

class AllocationCounter {
 public:
  // Sizes of this many allocations are kept for Describe().
  static constexpr int kRecordedSizes = 16;

  AllocationCounter();
  ~AllocationCounter();
  AllocationCounter(const AllocationCounter&) = delete;
  AllocationCounter& operator=(const AllocationCounter&) = delete;

  // Allocations (and their requested bytes) by this thread since construction.
  uint64_t count() const;
  uint64_t bytes() const;

  // "N allocations, B bytes; sizes: s1 s2 ..." (the first kRecordedSizes
  // while this was the innermost counter). Allocates: call it after the
  // measured code, e.g. in a failure message.
  std::string Describe() const;

  // Allocations by the calling thread since it started.
  static uint64_t ThreadTotal();

 private:
  friend void RecordAllocation(size_t bytes);

  uint64_t start_count_;
  uint64_t start_bytes_;
  AllocationCounter* outer_;
  size_t sizes_[kRecordedSizes] = {};
  int recorded_ = 0;
};

// Counts one allocation of `bytes` on the calling thread (the replaced
// allocators call this; tests do not need to).
void RecordAllocation(size_t bytes);

// Runs f() and returns how many allocations it made on this thread.
template <typename F>
uint64_t CountAllocations(F&& f) {
  AllocationCounter counter;
  f();
  return counter.count();
}

}  // namespace uq::testing

#endif  // UQ_TESTS_ALLOC_COUNTER_H_
