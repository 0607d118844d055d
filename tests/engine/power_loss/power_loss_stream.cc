// The power-loss test's request stream: random guest requests on sector
// ranges not overlapping any request in flight (PowerLossRun::Issue, Drive),
// and the model of their completions and of what the last completed flush
// made durable (Complete).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <utility>

#include "tests/engine/power_loss/power_loss_util.h"
#include "tests/engine/test_util.h"

namespace uq::engine::testing {

bool PowerLossRun::Overlaps(uint64_t first, uint64_t count) const {
  for (const Op& op : ops_) {
    if (op.done || op.kind == Op::kFlush) continue;
    if (first < op.first_sector + op.sectors && op.first_sector < first + count) return true;
  }
  return false;
}

Task<void> PowerLossRun::Drive(Op* op) {
  iovec v{op->buf.data(), op->buf.size()};
  std::span<const iovec> iov(&v, 1);
  uint64_t offset = op->first_sector * kSector;
  uint64_t length = op->sectors * kSector;
  int r = 0;
  switch (op->kind) {
    case Op::kWrite:
      r = co_await device_->Write(offset, iov, /*fua=*/false);
      break;
    case Op::kZeroes:
      r = co_await device_->WriteZeroes(offset, length, op->may_unmap);
      break;
    case Op::kDiscard:
      r = co_await device_->Discard(offset, length);
      break;
    case Op::kRead:
      r = co_await device_->Read(offset, iov);
      break;
    case Op::kFlush:
      r = co_await device_->Flush();
      break;
  }
  Complete(op, r);
}

void PowerLossRun::Issue() {
  uint64_t kind = Uniform(0, 99);
  Op op;
  if (kind < 8 && !flush_in_flight_) {
    op.kind = Op::kFlush;
  } else {
    // A sector range not overlapping any request in flight, so the model's
    // completion order is the only order that matters.
    uint64_t cluster_sectors = (uint64_t{1} << config_.create.cluster_bits) / kSector;
    uint64_t max_sectors =
        std::min<uint64_t>(sectors_, std::max<uint64_t>(4 * cluster_sectors, 64));
    uint64_t count = Uniform(1, max_sectors);
    uint64_t first = Uniform(0, sectors_ - count);
    if (Uniform(0, 2) == 0) first = first / cluster_sectors * cluster_sectors;
    count = std::min(count, sectors_ - first);
    if (Overlaps(first, count)) return;
    op.first_sector = first;
    op.sectors = count;
    if (kind < 50) {
      op.kind = Op::kWrite;
      op.value = static_cast<uint8_t>(Uniform(1, 255));
      op.buf.assign(count * kSector, std::byte{op.value});
    } else if (kind < 65) {
      op.kind = Op::kZeroes;
      op.may_unmap = Uniform(0, 1) == 1;
    } else if (kind < 78) {
      op.kind = Op::kDiscard;
    } else {
      op.kind = Op::kRead;
      op.buf.assign(count * kSector, std::byte{0xee});
    }
  }
  ops_.push_back(std::move(op));
  Op* p = &ops_.back();
  ++in_flight_;
  if (p->kind == Op::kFlush) {
    flush_in_flight_ = true;
    flush_snapshot_ = current_;
    flush_uncertain_.assign(sectors_, false);
    for (const Op& o : ops_) {
      if (o.done || o.kind == Op::kFlush || o.kind == Op::kRead) continue;
      for (uint64_t s = o.first_sector; s < o.first_sector + o.sectors; ++s) {
        flush_uncertain_[s] = true;
      }
    }
  } else if (p->kind != Op::kRead) {
    // Not covered by any flush yet: uncertain after a crash.
    for (uint64_t s = p->first_sector; s < p->first_sector + p->sectors; ++s) {
      uncertain_[s] = true;
      if (flush_in_flight_) flush_uncertain_[s] = true;
    }
  }
  p->id = ++next_id_;
  if (trace_) {
    std::printf("issue #%d kind=%d sectors %llu+%llu value=%d unmap=%d\n", p->id, p->kind,
                (unsigned long long)p->first_sector, (unsigned long long)p->sectors, p->value,
                p->may_unmap);
  }
  Spawn(Drive(p));
}

void PowerLossRun::Complete(Op* op, int result) {
  if (trace_) {
    std::printf("done  #%d result=%d\n", op->id, result);
    if (const char* probe = std::getenv("UQ_POWER_PROBE")) {
      uint64_t at = std::strtoull(probe, nullptr, 0);
      std::printf("   probe live %d durable %d unflushed %zu\n",
                  at < base_->data().size() ? int(base_->data()[at]) : -1,
                  at < power_->durable().size() ? int(power_->durable()[at]) : -1,
                  power_->unflushed_count());
    }
  }
  op->done = true;
  op->result = result;
  --in_flight_;
  if (result < 0) {
    ADD_FAILURE() << "request kind " << op->kind << " at sector " << op->first_sector << "+"
                  << op->sectors << " failed: " << std::strerror(-result);
    ++failures_;
  }
  switch (op->kind) {
    case Op::kWrite:
      std::fill_n(current_.begin() + op->first_sector, op->sectors, op->value);
      break;
    case Op::kZeroes:
      std::fill_n(current_.begin() + op->first_sector, op->sectors, 0);
      break;
    case Op::kDiscard: {
      auto [zb, ze] = testing::DiscardedZeroRange(op->first_sector * kSector, op->sectors * kSector,
                                                  uint64_t{1} << config_.create.cluster_bits,
                                                  sectors_ * kSector);
      std::fill(current_.begin() + zb / kSector, current_.begin() + ze / kSector, 0);
      break;
    }
    case Op::kRead:
      for (uint64_t s = 0; s < op->sectors && failures_ < 5; ++s) {
        uint8_t want = current_[op->first_sector + s];
        for (uint64_t b = 0; b < kSector; ++b) {
          uint8_t got = static_cast<uint8_t>(op->buf[s * kSector + b]);
          if (got != want) {
            ADD_FAILURE() << "live read: sector " << op->first_sector + s << " byte " << b << " is "
                          << int(got) << ", model says " << int(want);
            ++failures_;
            break;
          }
        }
      }
      break;
    case Op::kFlush:
      flush_in_flight_ = false;
      // A flush that completes after the power cut (while draining the live
      // engine) covers nothing in the crashed image.
      if (result == 0 && !crashed_) {
        flush_completed_ = true;
        durable_ = std::move(flush_snapshot_);
        uncertain_ = std::move(flush_uncertain_);
      }
      break;
  }
}

// Completes every queued file operation (and whatever they queue).
bool PowerLossRun::Drain() {
  for (int rounds = 0; rounds < 1000000; ++rounds) {
    if (base_->pending_count() == 0) return in_flight_ == 0;
    base_->RunAll();
  }
  return false;
}

}  // namespace uq::engine::testing
