// Fault matrix (qemu-iotests 026 style, STYLE.md "fault matrix").
//
// For several image kinds a fixed workload (allocating writes that grow L2
// tables and refcount structures, partial-cluster COW writes, discard, write
// zeroes, flushes, close) runs once on a recording FaultFile to enumerate
// every write, flush, discard, write_zeroes and truncate the engine issues on
// the image file (the "write points", classified by the region of the final
// layout they touch). Then, for each point x {EIO, ENOSPC} x {once, always},
// the workload reruns from scratch with that fault injected and
//   - nothing crashes and the engine does not mark the image corrupt,
//   - a fault that fired is reported: the request it hit, or a later request,
//     flush or close returns the injected -errno (a file discard may be
//     swallowed: the engine documents punching holes as best effort),
//   - the on-"disk" bytes (rules cleared) pass CheckImage with zero
//     corruptions (leaks allowed; a dirty lazy-refcount image is checked after
//     the engine repaired it on open),
//   - every sector reads back a value it may hold: what a successful flush
//     covered, or a value written since (a failed write may or may not have
//     landed).
// "once" fails the n-th mutating operation only; "always" fails it and every
// later operation of the same kind touching the same byte range (flushes and
// truncates: every later one), like a named blkdebug event with once=off.
// Besides the image the run leaves, each run checks the same way a crash image
// taken right after the step during which the fault fired (PowerLossFile under
// the FaultFile): "always" runs drop every unflushed write, "once" runs keep a
// seeded random subset of them (UQ_FAULT_SEED, printed). A few post-fault
// images per kind also go through the real `qemu-img check`.
//
// The matrix is sampled deterministically when a kind has more points than its
// cap: header, L1 and refcount-table points and the operation right after each
// come first, then the other metadata points, then data-cluster writes, each
// group thinned evenly (the chosen indices are printed).
//
// Environment: UQ_FAULT_FULL=1 runs every point; UQ_FAULT_CAP=<n> up to n
// points per kind; UQ_FAULT_POINT=<n> only point n (0-based) of every kind;
// UQ_FAULT_LIST=1 prints every point; UQ_FAULT_AFTER_IO=1 lets the failed
// operations land first (a lost completion); UQ_FAULT_KEEP_GOING=1 does not
// stop a kind at its first failing run.
#include <gtest/gtest.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "format/create.h"
#include "src/io/fault_file.h"
#include "src/io/op_kind.h"
#include "tests/engine/faults/fault_matrix_util.h"
#include "tests/engine/test_util.h"

namespace uq::engine::testing {

void FaultMatrix::Run(Totals* totals) {
  ASSERT_NO_FATAL_FAILURE(Setup());
  base_seed_ = testing::EnvU64("UQ_FAULT_SEED", 0x5eed);
  std::printf("[%s] crash subset base seed %llu (UQ_FAULT_SEED)\n", kind_.name,
              (unsigned long long)base_seed_);
  const auto start = std::chrono::steady_clock::now();

  // The fault-free run: every step succeeds, and its operations are the points.
  Outcome clean = RunWorkload(std::nullopt, std::nullopt);
  ASSERT_TRUE(clean.opened);
  for (size_t i = 0; i < steps_.size(); ++i) {
    ASSERT_EQ(clean.results[i], 0)
        << kind_.name << ": fault-free step " << i << " (" << StepName(steps_[i].kind) << ")";
  }
  ASSERT_TRUE(clean.closed_ok) << clean.close_message;
  ASSERT_NO_FATAL_FAILURE(CheckImageBytes(clean.bytes, clean.model,
                                          std::string(kind_.name) + " fault-free", false, totals));
  for (const auto& [sector, sec] : clean.model) {
    ASSERT_EQ(sec.on_disk.count(), 1u) << "a fault-free run leaves one value per sector";
  }

  std::vector<Point> points = Classify(clean);
  std::map<Region, size_t> by_region;
  for (const Point& p : points) ++by_region[p.region];
  std::string hist;
  for (const auto& [region, n] : by_region) absl::StrAppend(&hist, " ", RegionName(region), "=", n);
  if (testing::EnvU64("UQ_FAULT_LIST", 0) != 0) {
    for (const Point& p : points) {
      std::printf("[%s] point %zu: %s %s at %llu+%llu\n", kind_.name, p.index,
                  std::string(io::OpKindName(p.op.kind)).c_str(), RegionName(p.region),
                  (unsigned long long)p.op.offset_bytes, (unsigned long long)p.op.length_bytes);
    }
  }
  std::vector<size_t> chosen = Sample(points);
  std::string chosen_list;
  for (size_t i : chosen) absl::StrAppend(&chosen_list, chosen_list.empty() ? "" : ",", i);
  std::printf(
      "[%s] %zu write points:%s\n[%s] running %zu points x {EIO,ENOSPC} x {once,always}: %s\n",
      kind_.name, points.size(), hist.c_str(), kind_.name, chosen.size(),
      chosen.size() == points.size() ? "all" : chosen_list.c_str());
  totals->points += chosen.size();

  int qemu_left = kind_.qemu_checks;
  for (size_t ci = 0; ci < chosen.size(); ++ci) {
    const Point& p = points[chosen[ci]];
    for (int error : {EIO, ENOSPC}) {
      for (bool always : {false, true}) {
        const std::string what = absl::StrCat(
            kind_.name, " point ", p.index, " (", std::string(io::OpKindName(p.op.kind)), " ",
            RegionName(p.region), " at ", p.op.offset_bytes, "+", p.op.length_bytes, ") ",
            std::strerror(error), always ? " always" : " once");
        FaultRule rule = always ? AlwaysRule(p, clean.log, error) : OnceRule(p, error);
        if (testing::EnvU64("UQ_FAULT_AFTER_IO", 0) != 0) {
          rule.effect = io::FaultEffect::kFailAfterIo;
        }
        // "once" runs crash keeping a random subset of the unflushed writes
        // (a disk that persisted part of its cache), "always" runs keep none.
        std::optional<uint64_t> seed;
        if (!always) seed = base_seed_ ^ (p.index * 0x9e3779b97f4a7c15ull) ^ uint64_t(error);
        Outcome out = RunWorkload(rule, seed);
        ++totals->runs;
        // Until the fault, the engine must have done exactly what it did in
        // the fault-free run, or the point is not the one named.
        size_t mutating = 0;
        for (size_t k = 0; k < out.log.size() && k < clean.log.size(); ++k) {
          const auto& a = out.log[k];
          const auto& b = clean.log[k];
          ASSERT_TRUE(a.kind == b.kind && a.offset_bytes == b.offset_bytes &&
                      a.length_bytes == b.length_bytes)
              << what << ": operation " << k << " differs from the fault-free run";
          if (a.faulted) break;
          if ((OpKindBit(a.kind) & kMutatingKinds) && ++mutating > p.index) break;
        }
        ASSERT_NE(out.fault_step, -2) << what << ": the fault never fired";
        ++totals->fired;
        // Reported: the step it hit or a later one (or open/close) fails.
        int first_error = 0;
        int error_step = -2;
        if (!out.opened) {
          first_error = out.open_error;
          error_step = -1;
        }
        for (size_t i = 0; i < out.results.size() && first_error == 0; ++i) {
          if (out.results[i] < 0 && static_cast<int>(i) >= out.fault_step) {
            first_error = out.results[i];
            error_step = static_cast<int>(i);
          }
        }
        if (first_error == 0 && !out.closed_ok && out.opened) {
          error_step = static_cast<int>(steps_.size());
          first_error =
              out.close_message.find(std::strerror(error)) != std::string::npos ? -error : -EIO;
        }
        if (first_error != 0) ++totals->reported;
        if (p.op.kind != OpKind::kDiscard) {
          EXPECT_NE(first_error, 0)
              << what << ": the fault fired during "
              << (out.fault_step < 0 ? std::string("open")
                  : out.fault_step >= static_cast<int>(steps_.size())
                      ? std::string("close")
                      : absl::StrCat("step ", out.fault_step, " (",
                                     StepName(steps_[out.fault_step].kind), ")"))
              << " but every request, flush and close reported success";
          if (first_error != 0 && error_step >= 0 && error_step < static_cast<int>(steps_.size())) {
            EXPECT_EQ(first_error, -error)
                << what << ": step " << error_step << " reported " << std::strerror(-first_error);
          }
        }
        const bool qemu =
            qemu_left > 0 && ci % std::max<size_t>(1, chosen.size() / 3) == 0 && error == EIO;
        if (qemu) --qemu_left;
        ASSERT_NO_FATAL_FAILURE(CheckImageBytes(out.bytes, out.model, what, qemu, totals));
        // A power cut right after the failing request: only flushed writes
        // remain, and they must form a consistent image holding every
        // flushed request.
        ++totals->crash_images;
        ASSERT_NO_FATAL_FAILURE(CheckImageBytes(
            out.crash_bytes, out.crash_model,
            absl::StrCat(
                what, " crash after the fault (",
                seed ? absl::StrCat("subset seed ", *seed) : std::string("unflushed dropped"), ")"),
            false, totals));
        if (::testing::Test::HasFailure() && testing::EnvU64("UQ_FAULT_KEEP_GOING", 0) == 0) {
          GTEST_FAIL() << what << ": stopping at the first failing run (UQ_FAULT_KEEP_GOING=1 "
                       << "runs the rest; UQ_FAULT_POINT=" << p.index << " reruns this point)";
        }
      }
    }
  }
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("[%s] %zu points, %zu runs in %.2f s\n", kind_.name, chosen.size(), chosen.size() * 4,
              secs);
}

namespace {

format::CreateOptions Opts(uint32_t cluster_bits, uint32_t refcount_order = 4, bool ext = false,
                           bool lazy = false) {
  format::CreateOptions o;
  o.cluster_bits = cluster_bits;
  o.refcount_order = refcount_order;
  o.extended_l2 = ext;
  o.lazy_refcounts = lazy;
  return o;
}

Totals totals;

void RunKind(const ImageKind& kind) {
  if (kSanitized && kind.heavy && testing::EnvU64("UQ_FAULT_CAP", 0) == 0) {
    GTEST_SKIP() << kind.name << " is too slow under ASan (UQ_FAULT_CAP=<n> runs it)";
  }
  FaultMatrix m(kind);
  m.Run(&totals);
  std::printf(
      "totals so far: %llu points, %llu runs (%llu fired, %llu reported an error), "
      "%llu dirty images repaired, %llu sectors verified, %llu qemu-img checks, "
      "%llu crash images\n",
      (unsigned long long)totals.points, (unsigned long long)totals.runs,
      (unsigned long long)totals.fired, (unsigned long long)totals.reported,
      (unsigned long long)totals.dirty_repaired, (unsigned long long)totals.sectors_verified,
      (unsigned long long)totals.qemu_checks, (unsigned long long)totals.crash_images);
}

TEST(FaultMatrix, c64k) { RunKind({.name = "c64k", .create = Opts(16), .bulk_clusters = 8}); }

TEST(FaultMatrix, c4k_refbits1) {
  RunKind({.name = "c4k_refbits1", .create = Opts(12, 0), .bulk_clusters = 40});
}

// 4 KiB refcount blocks of 64-bit counts cover 512 clusters: the bulk write
// needs new refcount blocks.
TEST(FaultMatrix, c4k_refbits64) {
  RunKind({.name = "c4k_refbits64", .create = Opts(12, 6), .bulk_clusters = 530, .heavy = true});
}

// 512-byte clusters, 64-bit counts: a one-cluster refcount table covers 4096
// clusters, so the bulk write grows (moves) the table.
TEST(FaultMatrix, c512_refbits64) {
  RunKind({.name = "c512_refbits64", .create = Opts(9, 6), .bulk_clusters = 4200, .heavy = true});
}

TEST(FaultMatrix, c64k_extl2) {
  RunKind({.name = "c64k_extl2", .create = Opts(16, 4, true), .bulk_clusters = 8});
}

TEST(FaultMatrix, c4k_lazy) {
  RunKind({.name = "c4k_lazy", .create = Opts(12, 4, false, true), .bulk_clusters = 40});
}

TEST(FaultMatrix, c64k_backing) {
  RunKind({.name = "c64k_backing", .create = Opts(16), .backing = true, .bulk_clusters = 8});
}

TEST(FaultMatrix, c64k_extl2_backing) {
  RunKind({.name = "c64k_extl2_backing",
           .create = Opts(16, 4, true),
           .backing = true,
           .bulk_clusters = 8});
}

}  // namespace
}  // namespace uq::engine::testing
