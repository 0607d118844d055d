// The allocation counter must see every allocation it claims to, or a
// zero-allocation test built on it proves nothing.
#include "tests/alloc_counter.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <new>
#include <thread>
#include <vector>

namespace uq::testing {
namespace {

// Keeps the compiler from eliding a new/delete pair (it may, since C++14).
void Escape(void* p) { asm volatile("" : : "g"(p) : "memory"); }

struct alignas(64) Wide {
  char bytes[64];
};

TEST(AllocationCounterTest, CountsEveryFormOfNew) {
  AllocationCounter c;
  int* a = new int(1);
  Escape(a);
  delete a;
  int* b = new int[4];
  Escape(b);
  delete[] b;
  int* d = new (std::nothrow) int(2);
  Escape(d);
  delete d;
  Wide* w = new Wide;
  Escape(w);
  delete w;
  Wide* wa = new Wide[3];
  Escape(wa);
  delete[] wa;
  Wide* wn = new (std::nothrow) Wide;
  Escape(wn);
  delete wn;
  EXPECT_EQ(c.count(), 6u) << c.Describe();
  EXPECT_GE(c.bytes(), sizeof(int) * 6 + sizeof(Wide) * 5);
}

TEST(AllocationCounterTest, CountsMallocFamilyCalledFromOurCode) {
  AllocationCounter c;
  void* p = std::malloc(10);
  Escape(p);
  p = std::realloc(p, 100);
  Escape(p);
  std::free(p);
  p = std::calloc(3, 5);
  Escape(p);
  std::free(p);
  p = std::aligned_alloc(4096, 4096);
  Escape(p);
  std::free(p);
  ASSERT_EQ(posix_memalign(&p, 64, 128), 0);
  std::free(p);
  EXPECT_EQ(c.count(), 5u) << c.Describe();
}

TEST(AllocationCounterTest, ContainersAndNothing) {
  AllocationCounter c;
  EXPECT_EQ(CountAllocations([] {}), 0u);
  EXPECT_EQ(CountAllocations([] {
              std::vector<int> v(100);
              Escape(v.data());
            }),
            1u);
  EXPECT_EQ(c.count(), 1u);
}

TEST(AllocationCounterTest, NestedCountersAndDescribe) {
  AllocationCounter outer;
  void* first = std::malloc(8);
  Escape(first);
  std::free(first);
  uint64_t inner_count;
  std::string inner_text;
  {
    AllocationCounter inner;
    void* x = std::malloc(24);
    void* y = std::malloc(40);
    Escape(x);
    Escape(y);
    std::free(x);
    std::free(y);
    inner_count = inner.count();
    inner_text = inner.Describe();
  }
  EXPECT_EQ(inner_count, 2u);
  EXPECT_EQ(inner_text, "2 allocations, 64 bytes; sizes: 24 40");
  EXPECT_GE(outer.count(), 3u);  // its own, the inner two, then Describe's strings
}

TEST(AllocationCounterTest, OtherThreadsDoNotCount) {
  std::atomic<int> stage{0};
  std::thread t([&] {
    while (stage.load() != 1) {
    }
    for (int i = 0; i < 100; ++i) {
      int* p = new int(i);
      Escape(p);
      delete p;
    }
    stage.store(2);
  });
  uint64_t seen;
  {
    AllocationCounter c;
    stage.store(1);
    while (stage.load() != 2) {
    }
    seen = c.count();
  }
  t.join();
  EXPECT_EQ(seen, 0u);
}

}  // namespace
}  // namespace uq::testing
