#include "src/io/power_loss_file.h"

#include <algorithm>
#include <cstring>

#include "src/io/iovec.h"

namespace uq::io {

PowerLossFile::PowerLossFile(std::unique_ptr<BlockFile> base, std::vector<std::byte> durable_image)
    : FileWrapper(std::move(base)), durable_(std::move(durable_image)) {}
PowerLossFile::PowerLossFile(BlockFile* base, std::vector<std::byte> durable_image)
    : FileWrapper(base), durable_(std::move(durable_image)) {}
PowerLossFile::~PowerLossFile() = default;

void PowerLossFile::Apply(const Mutation& m, std::vector<std::byte>& image) {
  switch (m.kind) {
    case OpKind::kWrite:
      if (m.data.empty()) return;
      if (image.size() < m.offset_bytes + m.data.size())
        image.resize(m.offset_bytes + m.data.size());
      std::memcpy(image.data() + m.offset_bytes, m.data.data(), m.data.size());
      return;
    case OpKind::kDiscard:
    case OpKind::kWriteZeroes: {
      uint64_t end = m.offset_bytes + m.length_bytes;
      if (m.offset_bytes < image.size()) {
        uint64_t clip = std::min<uint64_t>(end, image.size());
        std::memset(image.data() + m.offset_bytes, 0, clip - m.offset_bytes);
      }
      // WriteZeroes extends the file; Discard never does.
      if (m.kind == OpKind::kWriteZeroes && m.length_bytes > 0 && end > image.size()) {
        image.resize(end);
      }
      return;
    }
    case OpKind::kTruncate:
      image.resize(m.offset_bytes);
      return;
    case OpKind::kRead:
    case OpKind::kFlush:
      return;
  }
}

void PowerLossFile::Journal(Mutation m) {
  std::lock_guard<std::mutex> g(mu_);
  m.seq = next_seq_++;
  journal_bytes_ += m.data.size();
  journal_.push_back(std::move(m));
}

void PowerLossFile::MakeDurable(uint64_t end_seq) {
  // Completion order makes the covered set a prefix of the journal.
  while (!journal_.empty() && journal_.front().seq < end_seq) {
    Apply(journal_.front(), durable_);
    journal_bytes_ -= journal_.front().data.size();
    journal_.pop_front();
  }
}

void PowerLossFile::MarkAllDurable() {
  std::lock_guard<std::mutex> g(mu_);
  MakeDurable(next_seq_);
}

Task<int64_t> PowerLossFile::WriteV(uint64_t offset_bytes, std::span<const iovec> iov) {
  uint64_t id;
  {
    std::lock_guard<std::mutex> g(mu_);
    id = next_in_flight_id_++;
    in_flight_.emplace(id, InFlightWrite{offset_bytes, iov});
  }
  int64_t r = co_await base()->WriteV(offset_bytes, iov);
  uint64_t length = IovLength(iov);
  // Success means the whole iovec was written (BlockFile contract). The
  // caller's buffers are still valid: its Task has not completed.
  Mutation m{0, OpKind::kWrite, offset_bytes, length, {}};
  if (r >= 0 && length > 0) {
    m.data.resize(length);
    CopyFromIov(iov, m.data.data());
  }
  {
    // Leaves the in-flight table and enters the journal in one step, so a
    // crash taken meanwhile on another thread sees the write once.
    std::lock_guard<std::mutex> g(mu_);
    in_flight_.erase(id);
    if (r >= 0 && length > 0) {
      m.seq = next_seq_++;
      journal_bytes_ += m.data.size();
      journal_.push_back(std::move(m));
    }
  }
  co_return r;
}

Task<int> PowerLossFile::Flush() {
  // Only mutations that completed before the flush was issued are covered.
  uint64_t covers_seq;
  {
    std::lock_guard<std::mutex> g(mu_);
    covers_seq = next_seq_;
  }
  int r = co_await base()->Flush();
  if (r >= 0) {
    std::lock_guard<std::mutex> g(mu_);
    MakeDurable(covers_seq);
  }
  co_return r;
}

Task<int> PowerLossFile::Discard(uint64_t offset_bytes, uint64_t length_bytes) {
  int r = co_await base()->Discard(offset_bytes, length_bytes);
  if (r >= 0) Journal({0, OpKind::kDiscard, offset_bytes, length_bytes, {}});
  co_return r;
}

Task<int> PowerLossFile::WriteZeroes(uint64_t offset_bytes, uint64_t length_bytes) {
  int r = co_await base()->WriteZeroes(offset_bytes, length_bytes);
  if (r >= 0) Journal({0, OpKind::kWriteZeroes, offset_bytes, length_bytes, {}});
  co_return r;
}

Task<int> PowerLossFile::Truncate(uint64_t size_bytes) {
  int r = co_await base()->Truncate(size_bytes);
  if (r >= 0) Journal({0, OpKind::kTruncate, size_bytes, 0, {}});
  co_return r;
}

std::vector<std::byte> PowerLossFile::Crash() const {
  std::lock_guard<std::mutex> g(mu_);
  return durable_;
}

std::vector<std::byte> PowerLossFile::CrashRandomSubset(std::mt19937_64& rng) const {
  std::lock_guard<std::mutex> g(mu_);
  std::vector<std::byte> image = durable_;
  std::bernoulli_distribution keep(0.5);
  for (const Mutation& m : journal_) {
    if (keep(rng)) Apply(m, image);
  }
  for (const auto& [id, w] : in_flight_) {
    if (!keep(rng)) continue;
    uint64_t length = IovLength(w.iov);
    if (length == 0) continue;
    if (image.size() < w.offset_bytes + length) image.resize(w.offset_bytes + length);
    CopyFromIov(w.iov, image.data() + w.offset_bytes);
  }
  return image;
}

}  // namespace uq::io
