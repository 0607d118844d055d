// OverlapMap (src/engine/overlap_map.h): the regions it reports against a
// brute-force scan, the ignore mask, duplicates, and readers racing writers
// (the map is read lock-free by every queue thread; the tsan label runs this
// under ThreadSanitizer).
#include "src/engine/overlap_map.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <optional>
#include <random>
#include <thread>
#include <vector>

namespace uq::engine {
namespace {

constexpr uint32_t kBits = 12;  // 4 KiB clusters
constexpr uint64_t kCluster = uint64_t{1} << kBits;

using Region = OverlapMap::Region;

std::optional<Metadata> Scan(const std::vector<Region>& regions, uint64_t offset, uint64_t length,
                             uint32_t ignore = 0) {
  const uint64_t first = offset >> kBits;
  const uint64_t end = ((offset + length - 1) >> kBits) + 1;
  for (const Region& r : regions) {
    if (r.first_cluster < end && r.end_cluster > first && !(ignore & Ignore(r.kind))) return r.kind;
  }
  return std::nullopt;
}

TEST(OverlapMapTest, RegionsAreWholeClusters) {
  OverlapMap m(kBits);
  EXPECT_EQ(m.RegionOf(Metadata::kActiveL1, 3 * kCluster, 16), (Region{Metadata::kActiveL1, 3, 4}));
  EXPECT_EQ(m.RegionOf(Metadata::kActiveL1, 3 * kCluster + 4088, 16),
            (Region{Metadata::kActiveL1, 3, 5}));
  EXPECT_EQ(m.RegionOf(Metadata::kRefcountTable, 5 * kCluster, 2 * kCluster),
            (Region{Metadata::kRefcountTable, 5, 7}));
  m.Add(m.RegionOf(Metadata::kActiveL1, 3 * kCluster, 16));
  // Any byte of cluster 3 overlaps; its neighbours do not.
  EXPECT_EQ(m.Find(3 * kCluster + 4000, 8), Metadata::kActiveL1);
  EXPECT_EQ(m.Find(2 * kCluster, kCluster), std::nullopt);
  EXPECT_EQ(m.Find(4 * kCluster, 512), std::nullopt);
  EXPECT_EQ(m.Find(2 * kCluster + 512, kCluster), Metadata::kActiveL1);
  EXPECT_EQ(m.Find(3 * kCluster, 0), std::nullopt);
}

TEST(OverlapMapTest, IgnoreSkipsOnlyTheGivenKind) {
  OverlapMap m(kBits);
  m.Reset({{Metadata::kActiveL2, 10, 11}, {Metadata::kRefcountTable, 10, 12}});
  EXPECT_TRUE(m.Find(10 * kCluster, 512).has_value());
  EXPECT_EQ(m.Find(10 * kCluster, 512, Ignore(Metadata::kActiveL2)), Metadata::kRefcountTable);
  EXPECT_EQ(m.Find(11 * kCluster, 512, Ignore(Metadata::kRefcountTable)), std::nullopt);
  EXPECT_EQ(
      m.Find(10 * kCluster, 512, Ignore(Metadata::kActiveL2) | Ignore(Metadata::kRefcountTable)),
      std::nullopt);
}

TEST(OverlapMapTest, DuplicatesAreRemovedOneAtATime) {
  OverlapMap m(kBits);
  const Region l2{Metadata::kActiveL2, 7, 8};
  m.Add(l2);
  m.Add(l2);  // two L1 entries naming one table
  m.Remove(l2);
  EXPECT_EQ(m.Find(7 * kCluster, 512), Metadata::kActiveL2);
  m.Remove(l2);
  EXPECT_EQ(m.Find(7 * kCluster, 512), std::nullopt);
  m.Remove(l2);  // nothing left: no-op
  EXPECT_EQ(m.size(), 0u);
  m.Replace({Metadata::kActiveL2, 0, 0}, l2);  // an empty `from` only adds
  EXPECT_EQ(m.Find(7 * kCluster, 512), Metadata::kActiveL2);
}

// Random adds, removes and lookups (growing past the initial capacity, with
// long regions that overlap many short ones) against a brute-force scan.
TEST(OverlapMapTest, MatchesBruteForce) {
  std::mt19937_64 rng(12);
  OverlapMap m(kBits);
  std::vector<Region> model;
  for (int step = 0; step < 20000; ++step) {
    const int op = static_cast<int>(rng() % 10);
    if (op < 4) {
      const uint64_t first = rng() % 2000;
      const uint64_t len = rng() % 8 == 0 ? 1 + rng() % 300 : 1;
      const Region r{static_cast<Metadata>(rng() % 7), first, first + len};
      m.Add(r);
      model.push_back(r);
    } else if (op < 6 && !model.empty()) {
      const size_t i = rng() % model.size();
      m.Remove(model[i]);
      model.erase(model.begin() + static_cast<ptrdiff_t>(i));
    } else {
      const uint64_t offset = rng() % (2400 * kCluster);
      const uint64_t length = 1 + rng() % (4 * kCluster);
      const uint32_t ignore = rng() % 3 == 0 ? Ignore(static_cast<Metadata>(rng() % 7)) : 0;
      const bool want = Scan(model, offset, length, ignore).has_value();
      const std::optional<Metadata> got = m.Find(offset, length, ignore);
      ASSERT_EQ(got.has_value(), want) << "step " << step << " offset " << offset;
      if (got) {
        // Whatever it names overlaps and is not ignored.
        std::vector<Region> same;
        std::copy_if(model.begin(), model.end(), std::back_inserter(same),
                     [&](const Region& r) { return r.kind == *got; });
        ASSERT_TRUE(Scan(same, offset, length, ignore).has_value());
      }
    }
    ASSERT_EQ(m.size(), model.size());
  }
}

// Readers look up clusters that are always metadata and clusters that never
// are while a writer adds and removes other regions (growing the array):
// neither answer may ever flip.
TEST(OverlapMapTest, ReadersRacingWritersSeeStableRegions) {
  OverlapMap m(kBits);
  m.Reset({{Metadata::kHeader, 0, 1}, {Metadata::kActiveL1, 1000, 1001}});
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> wrong{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 2; ++t) {
    readers.emplace_back([&, t] {
      uint64_t i = static_cast<uint64_t>(t);
      while (!stop.load(std::memory_order_relaxed)) {
        if (m.Find(1000 * kCluster + (i % 8) * 512, 512) != Metadata::kActiveL1) ++wrong;
        if (m.Find(0, 512) != Metadata::kHeader) ++wrong;
        // Odd clusters are never metadata (the writer uses even ones).
        if (m.Find((2 * (i % 900) + 1) * kCluster, 512).has_value()) ++wrong;
        ++i;
      }
    });
  }
  std::mt19937_64 rng(7);
  std::vector<Region> added;
  for (int step = 0; step < 20000; ++step) {
    if (added.size() < 200 && rng() % 3 != 0) {
      const uint64_t c = 2 * (1 + rng() % 899);
      if (c == 1000) continue;
      added.push_back({Metadata::kActiveL2, c, c + 1});
      m.Add(added.back());
    } else if (!added.empty()) {
      const size_t k = rng() % added.size();
      m.Remove(added[k]);
      added.erase(added.begin() + static_cast<ptrdiff_t>(k));
    }
  }
  stop = true;
  for (std::thread& t : readers) t.join();
  EXPECT_EQ(wrong.load(), 0u);
}

}  // namespace
}  // namespace uq::engine
