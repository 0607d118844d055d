// One power-loss seed end to end (PowerLossRun::Run): open the image, run the
// stream up to the power cut, let the live engine finish, then check the
// crashed image (CheckCrashedImage): CheckImage and `qemu-img check`, reopen,
// read back what the last completed flush covered. Also the file wrappers a
// run may put under the engine (UQ_POWER_TRACE, UQ_POWER_MUTANT).
#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "format/header.h"
#include "src/engine/check.h"
#include "src/engine/image.h"
#include "src/io/block_file.h"
#include "src/io/mem_file.h"
#include "src/io/power_loss_file.h"
#include "src/io/run_sync.h"
#include "tests/engine/power_loss/power_loss_util.h"
#include "tests/engine/test_util.h"

namespace uq::engine::testing {
namespace {

// Logs file operations (UQ_POWER_TRACE) between the engine and the file.
class TracingFile final : public io::BlockFile {
 public:
  explicit TracingFile(io::BlockFile* f) : f_(f) {}
  Task<int64_t> ReadV(uint64_t o, std::span<const iovec> v) override { return f_->ReadV(o, v); }
  Task<int64_t> WriteV(uint64_t o, std::span<const iovec> v) override {
    uint64_t n = 0;
    for (const iovec& i : v) n += i.iov_len;
    int id = ++next_;
    std::printf("  file write %d issue %#llx+%#llx\n", id, (unsigned long long)o,
                (unsigned long long)n);
    int64_t r = co_await f_->WriteV(o, v);
    std::printf("  file write %d done %lld\n", id, (long long)r);
    co_return r;
  }
  Task<int> Flush() override {
    int id = ++next_;
    std::printf("  file flush %d issue\n", id);
    int r = co_await f_->Flush();
    std::printf("  file flush %d done %d\n", id, r);
    co_return r;
  }
  Task<int> Discard(uint64_t o, uint64_t n) override {
    std::printf("  file discard %#llx+%#llx\n", (unsigned long long)o, (unsigned long long)n);
    return f_->Discard(o, n);
  }
  Task<int> WriteZeroes(uint64_t o, uint64_t n) override {
    std::printf("  file zeroes %#llx+%#llx\n", (unsigned long long)o, (unsigned long long)n);
    return f_->WriteZeroes(o, n);
  }
  Task<int> Truncate(uint64_t n) override { return f_->Truncate(n); }
  uint64_t size_bytes() const override { return f_->size_bytes(); }
  bool read_only() const override { return f_->read_only(); }

 private:
  io::BlockFile* f_;
  int next_ = 0;
};

// Harness self-check (UQ_POWER_MUTANT=drop-flush): a file whose Flush
// claims success without flushing. Runs with it must fail (lost data after
// the crash), showing the assertions can see a broken flush.
class DropFlushFile final : public io::BlockFile {
 public:
  explicit DropFlushFile(io::BlockFile* f) : f_(f) {}
  Task<int64_t> ReadV(uint64_t o, std::span<const iovec> v) override { return f_->ReadV(o, v); }
  Task<int64_t> WriteV(uint64_t o, std::span<const iovec> v) override { return f_->WriteV(o, v); }
  Task<int> Flush() override { co_return 0; }
  Task<int> Discard(uint64_t o, uint64_t n) override { return f_->Discard(o, n); }
  Task<int> WriteZeroes(uint64_t o, uint64_t n) override { return f_->WriteZeroes(o, n); }
  Task<int> Truncate(uint64_t n) override { return f_->Truncate(n); }
  uint64_t size_bytes() const override { return f_->size_bytes(); }
  bool read_only() const override { return f_->read_only(); }

 private:
  io::BlockFile* f_;
};

}  // namespace

void PowerLossRun::Run(bool qemu_check) {
  sectors_ = config_.create.size_bytes / kSector;
  current_.assign(sectors_, 0);
  uncertain_.assign(sectors_, false);
  if (config_.start == Start::kFresh) {
    base_ = testing::MakeImage(config_.create);
  } else {
    const QemuStart* start = nullptr;
    std::string err = GetQemuStart(config_.start, &start);
    ASSERT_TRUE(err.empty()) << StartName(config_.start) << ": " << err;
    ASSERT_EQ(start->sectors.size(), sectors_);
    current_ = start->sectors;
    base_ = std::make_unique<io::MemFile>(io::MemFile::Mode::kImmediate, start->image);
  }
  ASSERT_NE(base_, nullptr);
  durable_ = current_;
  power_ = std::make_unique<io::PowerLossFile>(base_.get(), base_->data());

  OpenOptions options;
  options.l2_cache_bytes = config_.l2_cache_bytes;
  options.opener = [](const std::string& path,
                      bool) -> absl::StatusOr<std::unique_ptr<io::BlockFile>> {
    return absl::NotFoundError(path);
  };
  std::unique_ptr<io::BlockFile> engine_file;
  const char* mutant = std::getenv("UQ_POWER_MUTANT");
  if (mutant != nullptr && std::string(mutant) == "drop-flush") {
    engine_file = std::make_unique<DropFlushFile>(power_.get());
  } else if (trace_) {
    engine_file = std::make_unique<TracingFile>(power_.get());
  } else {
    engine_file = std::make_unique<testing::BorrowedFile>(power_.get());
  }
  auto opened = io::RunSync(nullptr, OpenImage(std::move(engine_file), options));
  ASSERT_TRUE(opened.ok()) << opened.status();
  device_ = std::move(*opened);
  base_->set_mode(io::MemFile::Mode::kDeferred);

  // The stream up to the power cut.
  for (int step = 0; step < config_.steps_before_crash && failures_ == 0; ++step) {
    bool can_issue = in_flight_ < config_.max_in_flight;
    if (can_issue && (base_->pending_count() == 0 || Uniform(0, 2) != 0)) {
      Issue();
    } else if (base_->pending_count() > 0) {
      base_->RunRandomOne(rng_);
    }
    // Finished requests leave the list.
    ops_.remove_if([](const Op& o) { return o.done; });
  }
  std::vector<std::byte> crashed =
      config_.random_subset ? power_->CrashRandomSubset(rng_) : power_->Crash();
  crashed_ = true;
  if (const char* probe = std::getenv("UQ_POWER_PROBE")) {
    uint64_t at = std::strtoull(probe, nullptr, 0);
    std::printf("probe %#llx: live %d durable %d crashed %d unflushed=%zu\n",
                (unsigned long long)at, at < base_->data().size() ? int(base_->data()[at]) : -1,
                at < power_->durable().size() ? int(power_->durable()[at]) : -1,
                at < crashed.size() ? int(crashed[at]) : -1, power_->unflushed_count());
  }

  // Let the live engine finish and close so nothing dangles.
  base_->set_mode(io::MemFile::Mode::kImmediate);
  EXPECT_TRUE(Drain()) << "requests still in flight after draining the file";
  ops_.clear();
  absl::Status closed = io::RunSync(nullptr, device_->Close());
  EXPECT_TRUE(closed.ok()) << closed;
  device_.reset();
  power_.reset();
  base_.reset();

  CheckCrashedImage(std::move(crashed), qemu_check);
}

void PowerLossRun::CheckCrashedImage(std::vector<std::byte> crashed, bool qemu_check) {
  auto header = format::DecodeHeader(crashed, format::DecodeLimits{crashed.size()});
  ASSERT_TRUE(header.ok()) << "crashed image header: " << header.status();
  bool dirty = (header->incompatible_features & format::kIncompatDirty) != 0;
  ++coverage.seeds;
  if (config_.start != Start::kFresh) ++coverage.qemu_starts;
  if (dirty) ++coverage.dirty_at_crash;
  if (flush_completed_) ++coverage.with_completed_flush;
  coverage.requests += static_cast<uint64_t>(next_id_);
  // A dirty lazy-refcount image has stale refcounts by design; it is checked
  // after the engine repaired it on open.
  bool check_as_is = !dirty;

  if (const char* dump = std::getenv("UQ_POWER_DUMP")) {
    FILE* f = std::fopen(dump, "wb");
    if (f != nullptr) {
      std::fwrite(crashed.data(), 1, crashed.size(), f);
      std::fclose(f);
    }
  }
  io::MemFile file(io::MemFile::Mode::kImmediate, std::move(crashed));
  if (check_as_is) {
    auto result = io::RunSync(nullptr, CheckImage(file));
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->corruptions, 0u)
        << "crashed image: " << (result->messages.empty() ? "" : result->messages[0]);
    if (qemu_check && QemuImgAvailable()) {
      std::string out;
      int code = QemuImgCheck(file.data(), &out);
      ++coverage.qemu_checks;
      EXPECT_TRUE(code == 0 || code == 3)
          << "qemu-img check on the crashed image exit " << code << "\n"
          << out;
    }
  }

  // Reboot: reopen writable (repairs a dirty image), read everything back.
  OpenOptions options;
  options.opener = [](const std::string& path,
                      bool) -> absl::StatusOr<std::unique_ptr<io::BlockFile>> {
    return absl::NotFoundError(path);
  };
  auto reopened =
      io::RunSync(nullptr, OpenImage(std::make_unique<testing::BorrowedFile>(&file), options));
  ASSERT_TRUE(reopened.ok()) << "reopen after crash: " << reopened.status();
  Device& device = **reopened;
  std::vector<std::byte> contents(sectors_ * kSector);
  ASSERT_EQ(testing::ReadSync(device, 0, contents), 0);
  int mismatches = 0;
  for (uint64_t s = 0; s < sectors_ && mismatches < 3; ++s) {
    if (uncertain_[s]) continue;
    ++coverage.sectors_verified;
    for (uint64_t b = 0; b < kSector; ++b) {
      uint8_t got = static_cast<uint8_t>(contents[s * kSector + b]);
      if (got != durable_[s]) {
        ADD_FAILURE() << "after crash: sector " << s << " byte " << b << " is " << int(got)
                      << ", flushed data says " << int(durable_[s]);
        ++mismatches;
        break;
      }
    }
  }
  absl::Status closed = io::RunSync(nullptr, device.Close());
  EXPECT_TRUE(closed.ok()) << closed;
  reopened->reset();

  auto after = io::RunSync(nullptr, CheckImage(file));
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->corruptions, 0u)
      << "after reopen and close: " << (after->messages.empty() ? "" : after->messages[0]);
  if (qemu_check && QemuImgAvailable()) {
    std::string out;
    int code = QemuImgCheck(file.data(), &out);
    ++coverage.qemu_checks;
    EXPECT_TRUE(code == 0 || code == 3) << "qemu-img check after reopen exit " << code << "\n"
                                        << out;
  }
}

}  // namespace uq::engine::testing
