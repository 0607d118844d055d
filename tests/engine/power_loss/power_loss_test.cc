// Power loss: the engine on a PowerLossFile over a deferred MemFile runs a
// seeded random stream of overlapping-in-time requests (file operations
// complete in random order); at a random moment the power goes (every file
// write not covered by a completed flush is dropped, or a random subset of
// them survives), and the crashed image must
//   - reopen (a dirty lazy-refcount image is repaired on open),
//   - have zero corruptions by CheckImage (leaks are allowed), before the
//     reopen when the image is not dirty and after the reopen and close,
//   - read back every sector written before the last completed flush (the
//     model: what had completed when that flush was issued) unless a request
//     touching it was still in flight then or issued since.
// For a sample of seeds the crashed image also goes through the real
// `qemu-img check`: exit 0 or 3 (leaks), never 2 (corruption).
// Images: fresh ones from the layout builder over the option space (cluster
// size, refcount width, extended L2, lazy refcounts, compat), and for about a
// third of the seeds QEMU-made ones (internal snapshots, zstd-compressed
// clusters, a dirty lazy-refcount image left by `qemu-io -c abort`).
//
// Environment: UQ_POWER_SEEDS (default 1000; 10,000 with UQ_LONG=1, the long
// mode), UQ_POWER_BASE_SEED (default
// random, printed), UQ_POWER_SEED=<n> runs only seed n, UQ_POWER_TRACE=1
// logs guest and file operations, UQ_POWER_DUMP=<path> writes the crashed
// image, UQ_POWER_MUTANT=drop-flush checks that the harness catches a flush
// that does nothing (the run must fail).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "format/create.h"
#include "src/engine/image.h"
#include "src/io/mem_file.h"
#include "src/io/power_loss_file.h"
#include "src/io/run_sync.h"
#include "tests/engine/power_loss/power_loss_util.h"
#include "tests/engine/test_util.h"

namespace uq::engine::testing {
namespace {

TEST(PowerLoss, RandomStreamsSurviveCrash) {
  const uint64_t seeds =
      testing::EnvU64("UQ_POWER_SEEDS", testing::EnvU64("UQ_LONG", 0) != 0 ? 10000 : 1000);
  uint64_t base = testing::EnvU64("UQ_POWER_BASE_SEED", std::random_device{}());
  std::optional<uint64_t> only;
  if (std::getenv("UQ_POWER_SEED") != nullptr) only = testing::EnvU64("UQ_POWER_SEED", 0);
  std::printf("power loss: base seed %llu, %llu seeds (rerun one: UQ_POWER_SEED=<seed>)\n",
              static_cast<unsigned long long>(base), static_cast<unsigned long long>(seeds));
  const uint64_t qemu_every = std::max<uint64_t>(1, seeds / 20);
  int failed_seeds = 0;
  for (uint64_t i = 0; i < (only ? 1 : seeds); ++i) {
    const uint64_t seed = only ? *only : base + i;
    std::mt19937_64 config_rng(seed);
    Config config = RandomConfig(config_rng);
    if (!QemuImgAvailable()) config.start = Start::kFresh;
    SCOPED_TRACE(absl::StrCat("UQ_POWER_SEED=", seed, " ", Describe(config)));
    const ::testing::TestResult* result =
        ::testing::UnitTest::GetInstance()->current_test_info()->result();
    const int parts_before = result->total_part_count();
    PowerLossRun run(seed, config);
    run.Run(/*qemu_check=*/only.has_value() || i % qemu_every == 0);
    if (result->total_part_count() != parts_before) {
      std::printf("power loss: seed %llu FAILED (%s)\n", static_cast<unsigned long long>(seed),
                  Describe(config).c_str());
      if (++failed_seeds >= 3) break;  // enough to debug; keep the log short
    }
  }
  std::printf(
      "power loss: %llu seeds, %llu requests, %llu crashed dirty (lazy refcounts), %llu with a "
      "completed flush, %llu sectors verified, %llu qemu-img checks, %llu QEMU-made start images\n",
      (unsigned long long)coverage.seeds, (unsigned long long)coverage.requests,
      (unsigned long long)coverage.dirty_at_crash,
      (unsigned long long)coverage.with_completed_flush,
      (unsigned long long)coverage.sectors_verified, (unsigned long long)coverage.qemu_checks,
      (unsigned long long)coverage.qemu_starts);
}

// The simplest durability promise: an in-place overwrite of an allocated
// cluster, then a completed flush, survives a power cut.
TEST(PowerLoss, OverwriteThenFlushSurvives) {
  for (uint32_t version : {2u, 3u}) {
    SCOPED_TRACE(absl::StrCat("version ", version));
    format::CreateOptions create;
    create.size_bytes = 1 << 20;
    create.version = version;
    auto base = testing::MakeImage(create);
    ASSERT_NE(base, nullptr);
    io::PowerLossFile power(base.get(), base->data());
    OpenOptions options;
    auto opened =
        io::RunSync(nullptr, OpenImage(std::make_unique<testing::BorrowedFile>(&power), options));
    ASSERT_TRUE(opened.ok()) << opened.status();
    Device& device = **opened;
    std::vector<std::byte> first(65536, std::byte{1}), second(4096, std::byte{2});
    ASSERT_EQ(testing::WriteSync(device, 0, first), 0);
    ASSERT_EQ(io::RunSync(nullptr, device.Flush()), 0);
    ASSERT_EQ(testing::WriteSync(device, 4096, second), 0);
    ASSERT_EQ(io::RunSync(nullptr, device.Flush()), 0);
    std::vector<std::byte> crashed = power.Crash();
    ASSERT_TRUE(io::RunSync(nullptr, device.Close()).ok());
    opened->reset();

    io::MemFile file(io::MemFile::Mode::kImmediate, std::move(crashed));
    auto again =
        io::RunSync(nullptr, OpenImage(std::make_unique<testing::BorrowedFile>(&file), options));
    ASSERT_TRUE(again.ok()) << again.status();
    std::vector<std::byte> got(8192);
    ASSERT_EQ(testing::ReadSync(**again, 0, got), 0);
    EXPECT_EQ(got[0], std::byte{1});
    EXPECT_EQ(got[4096], std::byte{2}) << "the flushed overwrite was lost";
    ASSERT_TRUE(io::RunSync(nullptr, (*again)->Close()).ok());
  }
}

}  // namespace
}  // namespace uq::engine::testing
