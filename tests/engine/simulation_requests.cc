// The random requests of a simulation run (Simulation::RandomOps): each is
// issued unless it overlaps a request in flight where either mutates
// (TryIssue), runs against the engine while the model is updated (RunOp), and
// the file operations they cause complete one at a time in random order
// (CompleteOne).
#include <gtest/gtest.h>
#include <sys/uio.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <list>
#include <span>
#include <vector>

#include "src/engine/qcow2_image.h"
#include "src/io/mem_file.h"
#include "src/io/task.h"
#include "tests/engine/simulation_util.h"
#include "tests/engine/test_util.h"

namespace uq::engine::testing {

void Simulation::FillRandom(std::span<std::byte> buf) {
  // Mix of random bytes, repeated bytes (compressible) and zeros.
  uint64_t pos = 0;
  while (pos < buf.size()) {
    uint64_t run = std::min<uint64_t>(buf.size() - pos, 512 * (1 + rng_() % 16));
    switch (rng_() % 4) {
      case 0:
        std::memset(buf.data() + pos, static_cast<int>(rng_() & 0xff), run);
        break;
      case 1:
        std::memset(buf.data() + pos, 0, run);
        break;
      default:
        for (uint64_t i = 0; i < run; i += 8) {
          uint64_t v = rng_();
          std::memcpy(buf.data() + pos + i, &v, std::min<uint64_t>(8, run - i));
        }
    }
    pos += run;
  }
}

bool Simulation::Overlaps(uint64_t b, uint64_t e, bool mutates) const {
  for (const InFlight& f : inflight_) {
    if (b < f.end && f.begin < e && (mutates || f.mutates)) return true;
  }
  return false;
}

Task<void> Simulation::RunOp(OpType type, uint64_t off, uint64_t len,
                             std::list<InFlight>::iterator it, uint64_t op_id) {
  int r = 0;
  std::vector<std::byte> buf;
  switch (type) {
    case OpType::kRead: {
      buf.resize(len);
      // Two iovecs when possible: exercises the iovec slicing.
      const uint64_t first = len >= 1024 ? len / 2 / 512 * 512 : len;
      iovec v[2] = {{buf.data(), first}, {buf.data() + first, len - first}};
      r = co_await dev_->Read(off, std::span<const iovec>(v, first == len ? 1 : 2));
      if (r == 0 && std::memcmp(buf.data(), model_.data() + off, len) != 0) {
        uint64_t i = 0;
        while (buf[i] == model_[off + i]) ++i;
        ADD_FAILURE() << "op " << op_id << ": read [" << off << ", +" << len
                      << ") differs from the model at offset " << off + i;
        ++failures_;
      }
      break;
    }
    case OpType::kWrite: {
      buf.resize(len);
      FillRandom(buf);
      std::memcpy(model_.data() + off, buf.data(), len);
      iovec v{buf.data(), len};
      r = co_await dev_->Write(off, std::span<const iovec>(&v, 1), rng_() % 20 == 0);
      break;
    }
    case OpType::kCompressed: {
      buf.resize(len);
      FillRandom(buf);
      std::memcpy(model_.data() + off, buf.data(), len);
      r = co_await static_cast<Qcow2Image*>(dev_.get())->WriteCompressed(off, buf);
      break;
    }
    case OpType::kZeroes:
    case OpType::kZeroesUnmap:
    case OpType::kDiscard:
      if (type == OpType::kDiscard) {
        const bool qcow2 = dynamic_cast<Qcow2Image*>(dev_.get()) != nullptr;
        auto [zb, ze] = testing::DiscardedZeroRange(
            off, len, qcow2 ? cluster_bytes() : 512, c_.size_bytes,
            qcow2 && c_.version < 3 && c_.backing != BackingKind::kNone);
        std::memset(model_.data() + zb, 0, ze - zb);
        r = co_await dev_->Discard(off, len);
      } else {
        std::memset(model_.data() + off, 0, len);
        r = co_await dev_->WriteZeroes(off, len, type == OpType::kZeroesUnmap);
      }
      break;
    case OpType::kFlush:
      r = co_await dev_->Flush();
      break;
  }
  if (r != 0) {
    ADD_FAILURE() << "op " << op_id << " type " << static_cast<int>(type) << " [" << off << ", +"
                  << len << ") failed: " << r;
    ++failures_;
  }
  inflight_.erase(it);
}

bool Simulation::TryIssue(uint64_t op_id) {
  const uint64_t cs = cluster_bytes();
  const bool qcow2 = dynamic_cast<Qcow2Image*>(dev_.get()) != nullptr;
  uint32_t roll = rng_() % 100;
  OpType type = roll < 36   ? OpType::kRead
                : roll < 72 ? OpType::kWrite
                : roll < 80 ? OpType::kZeroes
                : roll < 86 ? OpType::kZeroesUnmap
                : roll < 92 ? OpType::kDiscard
                : roll < 95 ? OpType::kFlush
                            : OpType::kCompressed;
  if (type == OpType::kCompressed && !qcow2) type = OpType::kWrite;
  uint64_t off = 0;
  uint64_t len = 0;
  if (type == OpType::kCompressed) {
    const uint64_t clusters = c_.hot_clusters ? c_.hot_clusters : (c_.size_bytes + cs - 1) / cs;
    off = rng_() % clusters * cs;
    len = std::min(cs, c_.size_bytes - off);
  } else if (type != OpType::kFlush && c_.hot_clusters > 0) {
    const uint64_t hot_bytes = std::min(c_.size_bytes, c_.hot_clusters * cs);
    const uint64_t sub = c_.extended_l2 ? cs / 32 : std::min<uint64_t>(cs, 4096);
    off = rng_() % (hot_bytes / 512) * 512;
    len = (1 + rng_() % std::max<uint64_t>(1, 2 * sub / 512)) * 512;
    len = std::min(len, hot_bytes - off);
  } else if (type != OpType::kFlush) {
    // A small hot set of clusters makes concurrent ops share clusters.
    if (rng_() % 3 == 0) {
      off = (rng_() % 4) * cs + (rng_() % (cs / 512)) * 512;
      off = std::min(off, c_.size_bytes - 512);
    } else {
      off = rng_() % (c_.size_bytes / 512) * 512;
    }
    const uint64_t max_len = std::min<uint64_t>(c_.max_io_bytes, 4 * cs);
    len = (1 + rng_() % (max_len / 512)) * 512;
    if (rng_() % 4 == 0) len = std::min<uint64_t>(len, 4096);
    len = std::min(len, c_.size_bytes - off);
  }
  const bool mutates = type != OpType::kRead && type != OpType::kFlush;
  if (len > 0 && Overlaps(off, off + len, mutates)) return false;
  inflight_.push_front({off, off + len, mutates});
  Spawn(RunOp(type, off, len, inflight_.begin(), op_id));
  return true;
}

bool Simulation::CompleteOne() {
  std::vector<io::MemFile*> candidates;
  if (image_->pending_count() > 0) candidates.push_back(image_.get());
  if (backing_ && backing_->pending_count() > 0) candidates.push_back(backing_.get());
  if (candidates.empty()) return false;
  candidates[rng_() % candidates.size()]->RunRandomOne(rng_);
  return true;
}

void Simulation::RandomOps() {
  image_->set_mode(io::MemFile::Mode::kDeferred);
  if (backing_) backing_->set_mode(io::MemFile::Mode::kDeferred);
  uint64_t issued = 0;
  while (issued < c_.ops || !inflight_.empty()) {
    const bool can_issue = issued < c_.ops && inflight_.size() < c_.max_inflight;
    if (can_issue && (rng_() % 2 == 0 || image_->pending_count() == 0)) {
      if (TryIssue(issued)) {
        ++issued;
        continue;
      }
    }
    if (!CompleteOne()) {
      if (can_issue) continue;
      FAIL() << inflight_.size() << " requests in flight, no file operation pending (hang)";
    }
    if (failures_ > 5) FAIL() << "too many failures";
  }
  image_->set_mode(io::MemFile::Mode::kImmediate);
  if (backing_) backing_->set_mode(io::MemFile::Mode::kImmediate);
}

}  // namespace uq::engine::testing
