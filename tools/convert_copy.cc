#include "tools/convert_copy.h"

#include <liburing.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <memory>
#include <span>
#include <utility>

#include "absl/strings/str_cat.h"
#include "format/status_macros.h"
#include "src/io/join.h"
#include "src/io/task.h"
#include "tools/engine_util.h"
#include "tools/sparse_runs.h"

namespace uq::tools {

Task<void> RateLimiter::Admit(io::EventLoop& loop, uint64_t bytes) {
  if (bytes_per_second_ == 0) co_return;
  admitted_bytes_ += bytes;
  const auto due = start_ + std::chrono::nanoseconds(
                                static_cast<int64_t>(static_cast<double>(admitted_bytes_) * 1e9 /
                                                     static_cast<double>(bytes_per_second_)));
  const auto wait = due - std::chrono::steady_clock::now();
  if (wait <= std::chrono::nanoseconds(0)) co_return;
  const int64_t ns = std::chrono::duration_cast<std::chrono::nanoseconds>(wait).count();
  __kernel_timespec ts{.tv_sec = ns / 1000000000, .tv_nsec = ns % 1000000000};
  co_await loop.Op([&](io_uring_sqe* sqe) { io_uring_prep_timeout(sqe, &ts, 0, 0); });
}

namespace {

// Suspends until it is chunk `index`'s turn to write (or the copy failed).
struct WriteTurn {
  CopyJob& job;
  uint64_t index;
  bool await_ready() const noexcept { return job.error != 0 || job.next_write_chunk == index; }
  void await_suspend(std::coroutine_handle<> h) { job.turn_waiters[index] = h; }
  void await_resume() const noexcept {}
};

// Ends chunk `index`'s turn and wakes the next writer (every writer, on
// error). Once per turn: a turn passed early (InOrderWrites) is not passed
// again.
void PassTurn(CopyJob& job, uint64_t index) {
  if (!job.in_order) return;
  if (job.error != 0) {
    auto waiters = std::move(job.turn_waiters);
    job.turn_waiters.clear();
    for (auto& [i, h] : waiters) h.resume();
    return;
  }
  if (job.next_write_chunk != index) return;
  job.next_write_chunk = index + 1;
  auto it = job.turn_waiters.find(index + 1);
  if (it == job.turn_waiters.end()) return;
  std::coroutine_handle<> h = it->second;
  job.turn_waiters.erase(it);
  h.resume();
}

// Zeroes [offset, offset + length) of the destination, within the rate limit.
Task<int> ZeroRange(CopyJob& job, uint64_t offset, uint64_t length, std::string& what) {
  co_await job.rate_limiter.Admit(*job.loop, length);
  const int r = co_await job.dst->WriteZeroes(offset, length, /*may_unmap=*/true);
  if (r < 0) what = absl::StrCat("zeroing destination at offset ", offset);
  co_return r;
}

// -B: the source extent holding `offset` (the last one past the source's
// end: a qcow2 target's size is rounded up to a sector).
const SourceExtent& ExtentAt(const CopyJob& job, uint64_t offset) {
  auto it = std::upper_bound(job.extents.begin(), job.extents.end(), offset,
                             [](uint64_t o, const SourceExtent& e) { return o < e.offset_bytes; });
  return *std::prev(it);
}

// Where extent `e`, which holds byte `pos` of the chunk at `offset`, ends in
// the chunk of `length` bytes.
uint64_t ExtentEnd(const SourceExtent& e, uint64_t offset, uint64_t pos, uint64_t length) {
  const uint64_t end = e.offset_bytes + e.length_bytes;
  return end > offset + pos ? std::min(length, end - offset) : length;
}

// -B with -c: what a whole cluster of the target is (qemu-img: a cluster
// that is not all one kind is data).
ExtentKind UnitKind(const CopyJob& job, uint64_t offset, uint64_t length) {
  const SourceExtent& e = ExtentAt(job, offset);
  if (e.kind != ExtentKind::kData && e.offset_bytes + e.length_bytes >= offset + length) {
    return e.kind;
  }
  return ExtentKind::kData;
}

// Per worker: room for one chunk's compressed clusters and their fate.
struct CompressScratch {
  explicit CompressScratch(uint64_t chunk_bytes, uint64_t unit_bytes)
      : out(chunk_bytes), sizes(chunk_bytes / unit_bytes), zero(chunk_bytes / unit_bytes) {}
  AlignedBuffer out;           // unit i's compressed bytes at i * unit_bytes
  std::vector<int64_t> sizes;  // CompressForWrite's result per unit
  std::vector<char> zero;      // the unit is all zeros
};

// convert -c: the chunk's clusters are compressed (on a worker thread of the
// pool, if any, while other chunks are read and written), then written in
// the chunk's turn. The bytes written do not depend on the thread count.
Task<int> WriteCompressedChunk(CopyJob& job, AlignedBuffer& buf, CompressScratch& scratch,
                               uint64_t index, uint64_t offset, uint64_t length,
                               std::string& what) {
  const uint64_t unit = job.unit_bytes;
  const uint64_t units = (length + unit - 1) / unit;
  // The last unit is compressed as a whole cluster, zero padded.
  std::memset(buf.data() + length, 0, units * unit - length);
  auto compress = [&] {
    for (uint64_t i = 0; i < units; ++i) {
      std::span<const std::byte> in = buf.span().subspan(i * unit, unit);
      // -S 0 writes zero clusters too (compressed), as qemu-img does.
      scratch.zero[i] = job.min_sparse_sectors != 0 && IsAllZero(in);
      if (!scratch.zero[i]) {
        scratch.sizes[i] =
            job.dst->CompressForWrite(in, scratch.out.span().subspan(i * unit, unit));
      }
    }
  };
  if (job.pool != nullptr) {
    co_await job.pool->Run(job.loop, compress);
  } else {
    compress();
  }
  if (job.in_order) {
    co_await WriteTurn{job, index};
    if (job.error != 0) co_return 0;
  }
  for (uint64_t i = 0; i < units; ++i) {
    const uint64_t pos = i * unit;
    const uint64_t n = std::min(unit, length - pos);
    int r = 0;
    const ExtentKind kind =
        job.extents.empty() ? ExtentKind::kData : UnitKind(job, offset + pos, n);
    if (kind == ExtentKind::kBacking) continue;
    if (kind == ExtentKind::kZero || scratch.zero[i]) {
      if (!job.dst_reads_zero) {
        co_await job.rate_limiter.Admit(*job.loop, n);
        r = co_await job.dst->WriteZeroes(offset + pos, n, /*may_unmap=*/true);
      }
    } else if (scratch.sizes[i] < 0) {
      r = static_cast<int>(scratch.sizes[i]);
    } else {
      co_await job.rate_limiter.Admit(*job.loop, n);
      std::span<const std::byte> compressed =
          scratch.out.span().subspan(pos, static_cast<size_t>(scratch.sizes[i]));
      r = co_await job.dst->WriteCompressedBytes(offset + pos, buf.span().subspan(pos, n),
                                                 compressed);
    }
    if (r < 0) {
      what = absl::StrCat("writing compressed cluster at offset ", offset + pos);
      co_return r;
    }
  }
  co_return 0;
}

// An in-order chunk's data writes: each is started, and the next one
// issued, once the target has chosen its host clusters; the chunk passes
// its turn when the last one has, and then waits for their data.
struct InOrderWrites {
  io::Join writes;
  std::deque<engine::AllocationNotice> notices;  // one per write, alive until it finishes
};

// One data write of an in-order chunk (started on its Join).
Task<int> StartedWrite(CopyJob& job, uint64_t offset, iovec w, engine::AllocationNotice& allocated,
                       std::string& what) {
  const int r = co_await job.dst->WriteTelling(offset, std::span<const iovec>(&w, 1),
                                               /*fua=*/false, allocated);
  if (r < 0 && what.empty()) what = absl::StrCat("writing destination at offset ", offset);
  co_return r;
}

// Writes [from, to) of the chunk at `offset`, as qemu-img's sparse detection
// (-S) decides: data runs are written (widened to whole target clusters),
// zero runs left out when `skip_zeros`, else zeroed. [0, written_end) of the
// chunk is done already; advances it. With `in_order`, data writes are
// started there and awaited only until they are allocated.
Task<int> WriteRuns(CopyJob& job, AlignedBuffer& buf, uint64_t offset, uint64_t from, uint64_t to,
                    uint64_t length, bool skip_zeros, uint64_t& written_end, std::string& what,
                    InOrderWrites* in_order = nullptr) {
  uint64_t pos = from;
  while (pos < to) {
    const std::span<const std::byte> rest = buf.span().subspan(pos, to - pos);
    SparseRun run{to - pos, true};  // -S 0: every byte is written
    if (job.min_sparse_sectors != 0) {
      run = NextSparseRun(rest, offset + pos, job.min_sparse_sectors, job.alignment_sectors);
    }
    uint64_t begin = std::max(pos, written_end);
    uint64_t end = pos + run.length_bytes;
    if (run.data && job.widen_bytes != 0) {
      // The target allocates whole clusters anyway: write them whole.
      begin = std::max(written_end, pos / job.widen_bytes * job.widen_bytes);
      end = std::min(length, (end + job.widen_bytes - 1) / job.widen_bytes * job.widen_bytes);
    }
    pos += run.length_bytes;
    if (end <= begin || (!run.data && skip_zeros)) continue;
    written_end = end;
    int r = 0;
    if (run.data) {
      co_await job.rate_limiter.Admit(*job.loop, end - begin);
      iovec w = buf.Iov(begin, end - begin);
      if (in_order != nullptr) {
        engine::AllocationNotice& allocated = in_order->notices.emplace_back();
        in_order->writes.Start(StartedWrite(job, offset + begin, w, allocated, what));
        co_await allocated.Wait();
        continue;
      }
      r = co_await job.dst->Write(offset + begin, std::span<const iovec>(&w, 1), /*fua=*/false);
      if (r < 0) what = absl::StrCat("writing destination at offset ", offset + begin);
    } else {
      r = co_await ZeroRange(job, offset + begin, end - begin, what);
    }
    if (r < 0) co_return r;
  }
  co_return 0;
}

// -B / -C: writes the chunk extent by extent: data as WriteRuns (with -B
// zero runs zeroed: the backing file may hold data there), zero extents
// zeroed unless the target reads as zeros, extents left to the backing file
// not written.
Task<int> WriteByExtent(CopyJob& job, AlignedBuffer& buf, uint64_t offset, uint64_t length,
                        std::string& what) {
  uint64_t written_end = 0;
  for (uint64_t pos = 0; pos < length;) {
    const SourceExtent& e = ExtentAt(job, offset + pos);
    const uint64_t end = ExtentEnd(e, offset, pos, length);
    int r = 0;
    if (e.kind == ExtentKind::kData) {
      r = co_await WriteRuns(job, buf, offset, pos, end, length, job.dst_reads_zero, written_end,
                             what);
    } else if (e.kind == ExtentKind::kZero && !job.dst_reads_zero &&
               end > std::max(pos, written_end)) {
      const uint64_t begin = std::max(pos, written_end);
      written_end = end;
      r = co_await ZeroRange(job, offset + begin, end - begin, what);
    }
    if (r < 0) co_return r;
    pos = end;
  }
  co_return 0;
}

// -B / -C: whether any of the chunk is data (else it need not be read).
bool ChunkHasData(const CopyJob& job, uint64_t offset, uint64_t length) {
  for (uint64_t pos = 0; pos < length;) {
    const SourceExtent& e = ExtentAt(job, offset + pos);
    if (e.kind == ExtentKind::kData) return true;
    pos = ExtentEnd(e, offset, pos, length);
  }
  return false;
}

// --salvage: reads the chunk sector by sector after a failed read; a sector
// that cannot be read is reported and reads as zeros (qemu-img's salvage).
Task<int> SalvageRead(CopyJob& job, AlignedBuffer& buf, uint64_t offset, uint64_t length) {
  constexpr uint64_t kSector = 512;
  for (uint64_t pos = 0; pos < length; pos += kSector) {
    iovec v = buf.Iov(pos, std::min(kSector, length - pos));
    const int r = co_await job.src->Read(offset + pos, std::span<const iovec>(&v, 1));
    if (r >= 0) continue;
    if (!job.quiet) {
      std::fprintf(stderr, "qcow2-img: warning: error while reading offset %llu: %s\n",
                   static_cast<unsigned long long>(offset + pos), std::strerror(-r));
    }
    std::memset(v.iov_base, 0, v.iov_len);
  }
  co_return 0;
}

// -C, raw to raw: copies the chunk's data extents with copy_file_range
// (the kernel copies, or shares the blocks, without a round trip through
// this process). Returns 0 when done, 1 when the kernel cannot copy between
// these files (the chunk, and every later one, is then read and written), or
// -errno.
Task<int> OffloadChunk(CopyJob& job, uint64_t offset, uint64_t length, std::string& what) {
  for (uint64_t pos = 0; pos < length;) {
    const SourceExtent& e = ExtentAt(job, offset + pos);
    const uint64_t end = ExtentEnd(e, offset, pos, length);
    if (e.kind == ExtentKind::kData) {
      co_await job.rate_limiter.Admit(*job.loop, end - pos);
      loff_t in = static_cast<loff_t>(offset + pos);
      loff_t out = in;
      while (in < static_cast<loff_t>(offset + end)) {
        const ssize_t n = copy_file_range(job.offload_src_fd, &in, job.offload_dst_fd, &out,
                                          offset + end - static_cast<uint64_t>(in), 0);
        if (n < 0 && (errno == EXDEV || errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL ||
                      errno == EBADF)) {
          job.offload_src_fd = -1;
          co_return 1;
        }
        if (n < 0) {
          what = absl::StrCat("copying to destination at offset ", in);
          co_return -errno;
        }
        if (n == 0) break;  // the source ended early: the rest reads as zeros
      }
    } else if (e.kind == ExtentKind::kZero && !job.dst_reads_zero) {
      const int r = co_await ZeroRange(job, offset + pos, end - pos, what);
      if (r < 0) co_return r;
    }
    pos = end;
  }
  co_return 0;
}

Task<int> CopyChunk(CopyJob& job, AlignedBuffer& buf, CompressScratch* scratch, uint64_t index,
                    uint64_t offset, uint64_t src_length, std::string& what) {
  if (job.offload_src_fd >= 0) {
    const int r = co_await OffloadChunk(job, offset, src_length, what);
    if (r <= 0) co_return r;
  }
  if (job.extents.empty() || ChunkHasData(job, offset, src_length)) {
    iovec v = buf.Iov(0, src_length);
    int r = co_await job.src->Read(offset, std::span<const iovec>(&v, 1));
    if (r < 0 && job.salvage) r = co_await SalvageRead(job, buf, offset, src_length);
    if (r < 0) {
      what = absl::StrCat("reading source at offset ", offset);
      co_return r;
    }
  }
  // A raw source need not end on a sector; the qcow2 destination does (its
  // size is rounded up, as qemu-img does): the tail reads as zeros.
  uint64_t length = std::min(job.chunk_bytes, job.dst_size_bytes - offset);
  std::memset(buf.data() + src_length, 0, length - src_length);
  if (job.compress) {
    co_return co_await WriteCompressedChunk(job, buf, *scratch, index, offset, length, what);
  }
  if (job.in_order) {
    co_await WriteTurn{job, index};
    if (job.error != 0) co_return 0;  // another chunk failed; stop quietly
  }
  if (!job.extents.empty()) co_return co_await WriteByExtent(job, buf, offset, length, what);
  uint64_t written_end = 0;
  if (!job.in_order) {
    co_return co_await WriteRuns(job, buf, offset, 0, length, length, job.dst_reads_zero,
                                 written_end, what);
  }
  // In order: the next chunk's writes may start once this chunk's clusters
  // are allocated; its data need not be on the way yet.
  InOrderWrites in_order;
  int r = co_await WriteRuns(job, buf, offset, 0, length, length, job.dst_reads_zero, written_end,
                             what, &in_order);
  if (r >= 0) PassTurn(job, index);
  const int w = co_await in_order.writes.Wait();
  co_return r < 0 ? r : w;
}

Task<void> CopyWorker(CopyJob& job) {
  AlignedBuffer buf(job.chunk_bytes);
  std::unique_ptr<CompressScratch> scratch;
  if (job.compress) {
    scratch = std::make_unique<CompressScratch>(job.chunk_bytes, job.unit_bytes);
  }
  while (job.error == 0 && job.next_chunk < job.chunks) {
    uint64_t index = job.next_chunk++;
    uint64_t offset = index * job.chunk_bytes;
    uint64_t length = std::min(job.chunk_bytes, job.size_bytes - offset);
    std::string what;
    int r = 0;
    if (!job.zero_chunks.empty() && job.zero_chunks[index]) {
      // Nothing to write, but the turn still passes in order.
      if (job.in_order) co_await WriteTurn{job, index};
      ++job.skipped_chunks;
      if (!job.dst_reads_zero && job.error == 0) {
        r = co_await ZeroRange(job, offset, std::min(job.chunk_bytes, job.dst_size_bytes - offset),
                               what);
      }
    } else {
      r = co_await CopyChunk(job, buf, scratch.get(), index, offset, length, what);
    }
    if (r < 0 && job.error == 0) {
      job.error = r;
      job.error_what = what;
    }
    PassTurn(job, index);
    if (r < 0) break;
    job.done_bytes += length;
    job.progress->Update(static_cast<double>(job.done_bytes) / job.size_bytes);
  }
}

}  // namespace

absl::Status RunCopy(CopyJob& job, int workers) {
  job.rate_limiter = RateLimiter(job.rate_bytes_per_second);
  job.chunks = (job.size_bytes + job.chunk_bytes - 1) / job.chunk_bytes;
  std::vector<Task<void>> tasks;
  for (int i = 0; i < workers; ++i) tasks.push_back(CopyWorker(job));
  RunOnLoop(*job.loop, io::WhenAll(std::move(tasks)));
  if (job.error < 0) {
    return absl::InternalError(absl::StrCat(job.error_what, ": ", std::strerror(-job.error)));
  }
  return absl::OkStatus();
}

}  // namespace uq::tools
