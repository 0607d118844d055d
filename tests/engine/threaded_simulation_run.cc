// The phases of a threaded simulation run (ThreadedSimulation::Run) and the
// image they work on: creating the image and its backing file with seeded
// contents, over UnlockedFiles in partitioned mode (Setup), the backing
// file's opener (Opener), opening the image again behind a YieldFile
// (Reopen), closing and checking it (CloseAndCheck), and comparing the whole
// disk with the model (CompareAll).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "format/create.h"
#include "src/engine/check.h"
#include "src/engine/image.h"
#include "src/io/block_file.h"
#include "src/io/mem_file.h"
#include "src/io/run_sync.h"
#include "tests/engine/test_util.h"
#include "tests/engine/thread_util.h"
#include "tests/engine/threaded_simulation_util.h"

namespace uq::engine::testing {

void ThreadedSimulation::Run() {
  SCOPED_TRACE(::testing::Message()
               << "seed=" << c_.seed << " threads=" << threads_ << " (UQ_SIM_SEED to replay)");
  std::printf("threaded simulation: seed %llu, %d threads, %llu ops (UQ_SIM_SEED / UQ_SIM_SCALE)\n",
              static_cast<unsigned long long>(c_.seed), threads_,
              static_cast<unsigned long long>(c_.ops));
  std::fflush(stdout);
  ASSERT_NO_FATAL_FAILURE(Setup());
  ASSERT_NO_FATAL_FAILURE(RunThreads(c_.ops, 1));
  ASSERT_NO_FATAL_FAILURE(CloseAndCheck());
  ASSERT_NO_FATAL_FAILURE(Reopen(false));
  ASSERT_NO_FATAL_FAILURE(CompareAll());
  // More ops on the reopened image (allocation state rebuilt from disk).
  ASSERT_NO_FATAL_FAILURE(RunThreads(c_.ops / 4 + 1, 2));
  ASSERT_NO_FATAL_FAILURE(CompareAll());
  ASSERT_NO_FATAL_FAILURE(CloseAndCheck());
  ASSERT_NO_FATAL_FAILURE(Reopen(true));
  ASSERT_NO_FATAL_FAILURE(CompareAll());
  ASSERT_TRUE(io::RunSync(nullptr, dev_->Close()).ok());
}

FileOpener ThreadedSimulation::Opener() {
  return [this](const std::string& path,
                bool writable) -> absl::StatusOr<std::unique_ptr<io::BlockFile>> {
    if (!backing_ || path != backing_path_) return absl::NotFoundError(path);
    io::BlockFile* f =
        unlocked_backing_ ? static_cast<io::BlockFile*>(unlocked_backing_.get()) : backing_.get();
    return std::make_unique<testing::YieldFile>(
        std::make_unique<testing::BorrowedFile>(f, !writable));
  };
}

void ThreadedSimulation::Setup() {
  std::mt19937_64 rng(c_.seed);
  const uint64_t backing_size = c_.size_bytes / 4 * 3 - 4096;  // shorter than the overlay
  model_.assign(c_.size_bytes, std::byte{0});
  format::CreateOptions o;
  o.size_bytes = c_.size_bytes;
  o.cluster_bits = c_.cluster_bits;
  o.refcount_order = c_.refcount_order;
  o.extended_l2 = c_.extended_l2;
  o.compression_type = c_.compression;
  o.lazy_refcounts = c_.lazy_refcounts;
  if (c_.backing == BackingKind::kRaw) {
    std::vector<std::byte> bytes(backing_size);
    FillRandom(rng, bytes);
    std::memcpy(model_.data(), bytes.data(), bytes.size());
    backing_ = std::make_unique<io::MemFile>(io::MemFile::Mode::kImmediate, std::move(bytes));
    o.backing_file = "base.raw";
    o.backing_format = "raw";
  } else if (c_.backing == BackingKind::kQcow2) {
    format::CreateOptions bo;
    bo.size_bytes = backing_size;
    bo.cluster_bits = 12;
    backing_ = MakeImage(bo);
    ASSERT_NE(backing_, nullptr);
    auto b = testing::OpenSync(backing_.get(), {});
    ASSERT_TRUE(b.ok()) << b.status();
    for (int i = 0; i < 40; ++i) {
      uint64_t len = (1 + rng() % 64) * 512;
      uint64_t off = rng() % (backing_size / 512) * 512;
      len = std::min(len, backing_size - off);
      std::vector<std::byte> buf(len);
      FillRandom(rng, buf);
      ASSERT_EQ(testing::WriteSync(**b, off, buf), 0);
      std::memcpy(model_.data() + off, buf.data(), len);
    }
    ASSERT_TRUE(io::RunSync(nullptr, (*b)->Close()).ok());
    o.backing_file = "base.qcow2";
    o.backing_format = "qcow2";
  }
  backing_path_ = "/images/" + o.backing_file;
  image_ = MakeImage(o);
  ASSERT_NE(image_, nullptr);
  if (c_.stripe_bytes > 0) {
    const uint64_t capacity = 2 * c_.size_bytes + (16 << 20);
    unlocked_image_ = std::make_unique<testing::UnlockedFile>(image_->data(), capacity);
    if (backing_) {
      unlocked_backing_ =
          std::make_unique<testing::UnlockedFile>(backing_->data(), backing_->data().size());
    }
  }
  ASSERT_NO_FATAL_FAILURE(Reopen(false));
}

void ThreadedSimulation::Reopen(bool read_only) {
  OpenOptions oo;
  oo.path = "/images/disk.qcow2";
  oo.opener = Opener();
  oo.read_only = read_only;
  oo.l2_cache_bytes = c_.l2_cache_bytes;
  oo.refcount_cache_bytes = c_.refcount_cache_bytes;
  auto d = io::RunSync(
      nullptr, OpenImage(std::make_unique<testing::YieldFile>(
                             std::make_unique<testing::BorrowedFile>(&image_file(), read_only)),
                         oo));
  ASSERT_TRUE(d.ok()) << d.status();
  dev_ = std::move(*d);
  ASSERT_EQ(dev_->size_bytes(), c_.size_bytes);
}

void ThreadedSimulation::CloseAndCheck() {
  absl::Status s = io::RunSync(nullptr, dev_->Close());
  ASSERT_TRUE(s.ok()) << s;
  dev_.reset();
  auto r = io::RunSync(nullptr, CheckImage(image_file()));
  ASSERT_TRUE(r.ok()) << r.status();
  std::string msgs;
  for (const std::string& m : r->messages) msgs += m + "\n";
  EXPECT_EQ(r->corruptions, 0u) << msgs;
  EXPECT_EQ(r->leaks, 0u) << msgs;
}

void ThreadedSimulation::CompareAll() {
  std::vector<std::byte> buf(c_.size_bytes);
  ASSERT_EQ(testing::ReadSync(*dev_, 0, buf), 0);
  for (uint64_t i = 0; i < c_.size_bytes; i += 512) {
    if (std::memcmp(buf.data() + i, model_.data() + i, 512) != 0) {
      FAIL() << "full read mismatch at offset " << i;
    }
  }
}

}  // namespace uq::engine::testing
