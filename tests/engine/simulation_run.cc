// The phases of a simulation run (Simulation::Run) and the image they work
// on: creating the image and its backing file with seeded contents (Setup),
// opening it again, read-only or strictly aligned (Reopen), closing and
// checking it (CloseAndCheck), and comparing the whole disk with the model
// (CompareAll).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "format/create.h"
#include "src/engine/check.h"
#include "src/engine/device.h"
#include "src/engine/image.h"
#include "src/io/mem_file.h"
#include "src/io/run_sync.h"
#include "tests/engine/simulation_util.h"
#include "tests/engine/test_util.h"

namespace uq::engine::testing {

void Simulation::Run() {
  SCOPED_TRACE(::testing::Message() << "seed=" << c_.seed << " (UQ_SIM_SEED to replay)");
  std::printf("simulation: seed %llu, %llu ops (UQ_SIM_SEED / UQ_SIM_SCALE)\n",
              static_cast<unsigned long long>(c_.seed), static_cast<unsigned long long>(c_.ops));
  ASSERT_NO_FATAL_FAILURE(Setup());
  ASSERT_NO_FATAL_FAILURE(RandomOps());
  ASSERT_NO_FATAL_FAILURE(CloseAndCheck());
  ASSERT_NO_FATAL_FAILURE(Reopen(false));
  ASSERT_NO_FATAL_FAILURE(CompareAll());
  // A few more ops after the reopen (allocation state rebuilt from disk).
  c_.ops = c_.ops / 4 + 1;
  ASSERT_NO_FATAL_FAILURE(RandomOps());
  ASSERT_NO_FATAL_FAILURE(CompareAll());
  if (c_.lazy_refcounts) {
    // Crash with the dirty bit set: drop the device without Close.
    ASSERT_EQ(io::RunSync(nullptr, dev_->Flush()), 0);
    dev_.reset();
    ASSERT_NO_FATAL_FAILURE(Reopen(false));  // repairs the refcounts
    ASSERT_NO_FATAL_FAILURE(CompareAll());
  }
  ASSERT_NO_FATAL_FAILURE(CloseAndCheck());
  ASSERT_NO_FATAL_FAILURE(Reopen(true));
  ASSERT_NO_FATAL_FAILURE(CompareAll());
  ASSERT_TRUE(io::RunSync(nullptr, dev_->Close()).ok());
}

void Simulation::Setup() {
  const uint64_t backing_size = c_.size_bytes / 4 * 3 - 4096;  // shorter than the overlay
  model_.assign(c_.size_bytes, std::byte{0});
  format::CreateOptions o;
  o.size_bytes = c_.size_bytes;
  o.version = c_.version;
  o.cluster_bits = c_.cluster_bits;
  o.refcount_order = c_.refcount_order;
  o.extended_l2 = c_.extended_l2;
  o.compression_type = c_.compression;
  o.lazy_refcounts = c_.lazy_refcounts;
  if (c_.backing == BackingKind::kRaw) {
    std::vector<std::byte> bytes(backing_size);
    FillRandom(bytes);
    std::memcpy(model_.data(), bytes.data(), bytes.size());
    backing_ = std::make_unique<io::MemFile>(io::MemFile::Mode::kImmediate, std::move(bytes));
    o.backing_file = "base.raw";
    if (c_.backing_format_named) o.backing_format = "raw";
  } else if (c_.backing == BackingKind::kQcow2) {
    format::CreateOptions bo;
    bo.size_bytes = backing_size;
    bo.cluster_bits = 12;
    backing_ = MakeImage(bo);
    ASSERT_NE(backing_, nullptr);
    auto b = OpenSync(backing_.get(), {});
    ASSERT_TRUE(b.ok()) << b.status();
    for (int i = 0; i < 40; ++i) {
      uint64_t len = (1 + rng_() % 64) * 512;
      uint64_t off = rng_() % (backing_size / 512) * 512;
      len = std::min(len, backing_size - off);
      std::vector<std::byte> buf(len);
      FillRandom(buf);
      ASSERT_EQ(testing::WriteSync(**b, off, buf), 0);
      std::memcpy(model_.data() + off, buf.data(), len);
    }
    ASSERT_TRUE(io::RunSync(nullptr, (*b)->Close()).ok());
    o.backing_file = "base.qcow2";
    if (c_.backing_format_named) o.backing_format = "qcow2";
  }
  if (backing_) files_.files["/images/" + o.backing_file] = backing_.get();
  image_ = MakeImage(o);
  ASSERT_NE(image_, nullptr);
  ASSERT_NO_FATAL_FAILURE(Reopen(false));
}

void Simulation::Reopen(bool read_only) {
  OpenOptions oo;
  oo.path = "/images/disk.qcow2";
  oo.opener = files_.Opener();
  oo.read_only = read_only;
  oo.l2_cache_bytes = c_.l2_cache_bytes;
  oo.refcount_cache_bytes = c_.refcount_cache_bytes;
  image_->set_mode(io::MemFile::Mode::kImmediate);
  if (backing_) backing_->set_mode(io::MemFile::Mode::kImmediate);
  absl::StatusOr<std::unique_ptr<Device>> d;
  if (c_.strict_alignment) {
    oo.file_alignment_bytes = static_cast<uint32_t>(c_.strict_alignment);
    files_.strict_alignment = c_.strict_alignment;
    d = io::RunSync(nullptr, OpenImage(std::make_unique<testing::StrictAlignFile>(
                                           std::make_unique<testing::BorrowedFile>(image_.get()),
                                           c_.strict_alignment),
                                       oo));
  } else {
    d = OpenSync(image_.get(), oo);
  }
  ASSERT_TRUE(d.ok()) << d.status();
  dev_ = std::move(*d);
  ASSERT_EQ(dev_->size_bytes(), c_.size_bytes);
}

void Simulation::CloseAndCheck() {
  image_->set_mode(io::MemFile::Mode::kImmediate);
  if (backing_) backing_->set_mode(io::MemFile::Mode::kImmediate);
  absl::Status s = io::RunSync(nullptr, dev_->Close());
  ASSERT_TRUE(s.ok()) << s;
  dev_.reset();
  auto r = io::RunSync(nullptr, CheckImage(*image_));
  ASSERT_TRUE(r.ok()) << r.status();
  std::string msgs;
  for (const std::string& m : r->messages) msgs += m + "\n";
  EXPECT_EQ(r->corruptions, 0u) << msgs;
  EXPECT_EQ(r->leaks, 0u) << msgs;
}

void Simulation::CompareAll() {
  image_->set_mode(io::MemFile::Mode::kImmediate);
  if (backing_) backing_->set_mode(io::MemFile::Mode::kImmediate);
  std::vector<std::byte> buf(c_.size_bytes);
  ASSERT_EQ(testing::ReadSync(*dev_, 0, buf), 0);
  for (uint64_t i = 0; i < c_.size_bytes; i += 512) {
    if (std::memcmp(buf.data() + i, model_.data() + i, 512) != 0) {
      FAIL() << "full read mismatch at offset " << i;
    }
  }
}

}  // namespace uq::engine::testing
