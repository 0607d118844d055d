// Making one differential stream (StreamMaker::Make): the image geometry, the
// backing file's and the start image's setup (compressed clusters first),
// the random operations with offsets and lengths near (sub)cluster edges,
// the model of QEMU's discard, and the final sweep of `read -P` commands.
#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>

#include "absl/strings/str_format.h"
#include "tests/interop/engine/differential_util.h"

namespace uq::interop::differential {

constexpr uint64_t kSector = 512;

Stream StreamMaker::Make() {
  const uint64_t clusters = Uniform(2, 8);
  s_.size_bytes = clusters * cluster_;
  if (Uniform(0, 3) == 0) {
    s_.size_bytes -= Uniform(1, std::min<uint64_t>(cluster_ / kSector - 1, 9)) * kSector;
  }
  model_.assign(s_.size_bytes, 0);
  if (v_.backing != Backing::kNone) {
    // Sometimes shorter than the overlay: the tail reads as zero.
    s_.backing_bytes =
        Uniform(0, 1) == 0
            ? s_.size_bytes
            : Uniform(s_.size_bytes / 2 / kSector, s_.size_bytes / kSector) * kSector;
    for (uint64_t i = Uniform(1, 4); i > 0; --i) {
      auto [off, len] = RangeIn(s_.backing_bytes);
      const uint8_t p = Pattern();
      s_.base_setup.push_back(absl::StrFormat("write -q -P 0x%02x %d %d", p, off, len));
      Fill(off, len, p);
    }
  }
  // Compressed clusters first: qemu-io compresses only whole, unallocated
  // clusters.
  const uint64_t whole_clusters = s_.size_bytes / cluster_;
  for (uint64_t c = 0; c < whole_clusters; ++c) {
    if (Uniform(0, 4) != 0) continue;
    const uint8_t p = Pattern();
    s_.setup.push_back(absl::StrFormat("write -q -c -P 0x%02x %d %d", p, c * cluster_, cluster_));
    Fill(c * cluster_, cluster_, p);
  }
  for (uint64_t i = Uniform(0, 4); i > 0; --i) Setup();
  for (uint64_t i = Uniform(4, 12); i > 0; --i) Op();
  Sweep();
  return s_;
}

uint64_t StreamMaker::Offset(uint64_t limit) {
  const uint64_t sectors = limit / kSector;
  if (Uniform(0, 1) == 0) return Uniform(0, sectors - 1) * kSector;
  const uint64_t edge = Uniform(0, limit / edge_) * edge_;
  const int64_t delta = static_cast<int64_t>(Uniform(0, 6)) - 3;
  const int64_t off = static_cast<int64_t>(edge) + delta * static_cast<int64_t>(kSector);
  return static_cast<uint64_t>(std::clamp<int64_t>(off, 0, static_cast<int64_t>(limit - kSector)));
}

std::pair<uint64_t, uint64_t> StreamMaker::RangeIn(uint64_t limit) {
  const uint64_t off = Offset(limit);
  const uint64_t room = (limit - off) / kSector;
  const uint64_t max_bytes[] = {2 * edge_, cluster_, 2 * cluster_};
  const uint64_t max_sectors = std::max<uint64_t>(1, max_bytes[Uniform(0, 2)] / kSector);
  uint64_t len = Uniform(1, std::min<uint64_t>(room, max_sectors)) * kSector;
  if (Uniform(0, 1) == 0) {
    const uint64_t edge = (off + len) / edge_ * edge_ + (Uniform(0, 1) ? edge_ : 0);
    const int64_t delta = static_cast<int64_t>(Uniform(0, 6)) - 3;
    const int64_t end = static_cast<int64_t>(edge) + delta * static_cast<int64_t>(kSector);
    len = static_cast<uint64_t>(std::clamp<int64_t>(end, static_cast<int64_t>(off + kSector),
                                                    static_cast<int64_t>(limit))) -
          off;
  }
  return {off, len};
}

void StreamMaker::Setup() {
  const uint64_t kind = Uniform(0, 9);
  auto [off, len] = RangeIn(s_.size_bytes);
  if (kind < 3) {
    s_.setup.push_back(absl::StrFormat("write -q -z %d %d", off, len));
    Fill(off, len, 0);
    return;
  }
  const uint8_t p = Pattern();
  s_.setup.push_back(absl::StrFormat("write -q -P 0x%02x %d %d", p, off, len));
  Fill(off, len, p);
}

void StreamMaker::Op() {
  const uint64_t kind = Uniform(0, 99);
  if (kind < 5) {
    s_.ops.push_back("flush");
    return;
  }
  auto [off, len] = RangeIn(s_.size_bytes);
  if (kind < 40) {
    const uint8_t p = Pattern();
    s_.ops.push_back(absl::StrFormat("write -q -P 0x%02x %d %d", p, off, len));
    Fill(off, len, p);
  } else if (kind < 65) {
    const bool unmap = Uniform(0, 1) == 1;
    s_.ops.push_back(absl::StrFormat("write -q -z%s %d %d", unmap ? " -u" : "", off, len));
    Fill(off, len, 0);
  } else if (kind < 85) {
    s_.ops.push_back(absl::StrFormat("discard -q %d %d", off, len));
    Discard(off, len);
  } else {
    // A read of a uniform run inside the range (checks mid-stream state).
    const uint8_t first = model_[off];
    uint64_t n = 0;
    while (n < len && model_[off + n] == first) n += kSector;
    s_.ops.push_back(absl::StrFormat("read -q -P 0x%02x %d %d", first, off, n));
  }
}

void StreamMaker::Discard(uint64_t off, uint64_t len) {
  if (v_.version < 3 && v_.backing != Backing::kNone) return;
  const uint64_t begin = (off + cluster_ - 1) / cluster_ * cluster_;
  uint64_t end = (off + len) / cluster_ * cluster_;
  if (off + len == s_.size_bytes && off <= s_.size_bytes / cluster_ * cluster_) {
    end = s_.size_bytes;
  }
  if (begin < end) Fill(begin, end - begin, 0);
}

void StreamMaker::Sweep() {
  uint64_t pos = 0;
  while (pos < model_.size()) {
    uint64_t end = pos;
    while (end < model_.size() && model_[end] == model_[pos]) end += kSector;
    s_.sweep.push_back(absl::StrFormat("read -q -P 0x%02x %d %d", model_[pos], pos, end - pos));
    pos = end;
  }
}

}  // namespace uq::interop::differential
