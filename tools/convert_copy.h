// The copy loop of qcow2-img convert: chunks read from the source Device and
// written to the destination Device by a few coroutines on one event loop,
// skipping chunks the source's block status says read as zeros, and zero
// runs inside the chunks it reads as qemu-img's -S does.
//
// Thread-safety: one CopyJob runs on one event loop thread.
#ifndef UQ_TOOLS_CONVERT_COPY_H_
#define UQ_TOOLS_CONVERT_COPY_H_

#include <algorithm>
#include <chrono>
#include <coroutine>
#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "src/engine/device.h"
#include "src/io/event_loop.h"
#include "src/io/task.h"
#include "tools/compress_pool.h"
#include "tools/zero_chunks.h"

namespace uq::tools {

// Progress on stderr in qemu-img's style: "    (12.00/100%)\r".
class Progress {
 public:
  explicit Progress(bool enabled) : enabled_(enabled) {}
  void Update(double fraction) {
    if (!enabled_) return;
    double percent = std::min(100.0, fraction * 100.0);
    if (printed_ >= 0 && percent < 100.0 && percent - printed_ < 1.0) return;
    printed_ = percent;
    std::fprintf(stderr, "    (%.2f/100%%)\r", percent);
    std::fflush(stderr);
  }
  void Finish() {
    if (!enabled_) return;
    Update(1.0);
    std::fprintf(stderr, "\n");
  }

 private:
  bool enabled_;
  double printed_ = -1;
};

// -r: paces writes to at most `bytes_per_second` on average since the
// limiter was made (0: no limit). The caller admits the bytes qemu-img
// counts: convert every write, zeros included; commit the data it copies.
class RateLimiter {
 public:
  explicit RateLimiter(uint64_t bytes_per_second = 0)
      : bytes_per_second_(bytes_per_second), start_(std::chrono::steady_clock::now()) {}
  // Suspends on `loop` until a write of `bytes` more fits under the limit.
  Task<void> Admit(io::EventLoop& loop, uint64_t bytes);

 private:
  uint64_t bytes_per_second_;
  uint64_t admitted_bytes_ = 0;  // written or waiting to be, since start_
  std::chrono::steady_clock::time_point start_;
};

// Shared state of one copy: workers take chunk indices in order.
struct CopyJob {
  io::EventLoop* loop = nullptr;
  engine::Device* src = nullptr;
  engine::Device* dst = nullptr;
  bool compress = false;  // -c
  // -c: where clusters are compressed, before the chunk's turn to write
  // (null: inline, in the write's turn).
  CompressPool* pool = nullptr;
  uint64_t size_bytes = 0;      // of the source
  uint64_t dst_size_bytes = 0;  // >= size_bytes (rounded up to a sector for qcow2)
  uint64_t chunk_bytes = 0;
  // The destination reads as zeros where nothing is written (a new image,
  // or convert -n --target-is-zero); otherwise zero ranges are zeroed.
  bool dst_reads_zero = true;
  uint64_t unit_bytes = 0;  // compression granularity (a cluster)
  // -S: zero stretches of at least this many 512-byte sectors are not
  // written (qemu-img's min_sparse; default 8, 4 KiB); 0 writes every byte,
  // zeros included. Runs end on multiples of alignment_sectors
  // (tools/sparse_runs.h).
  uint32_t min_sparse_sectors = 8;
  uint32_t alignment_sectors = 8;
  // qcow2 targets: data writes are widened to whole clusters of this size
  // (the target allocates whole clusters anyway). 0: as detected (raw).
  uint64_t widen_bytes = 0;
  // -B / -C: the source's extents as tools/zero_chunks.h SourceExtents
  // gives them: data is copied, zero extents zeroed unless the target reads
  // as zeros, what is left to a new backing file (-B) is not written.
  // Empty: chunks and zero_chunks alone decide.
  std::vector<SourceExtent> extents;
  // -C, raw to raw: data extents are copied with copy_file_range between
  // these descriptors (owned by the caller); -1: read and write.
  int offload_src_fd = -1;
  int offload_dst_fd = -1;
  // --salvage: a source range that cannot be read is read again sector by
  // sector; the sectors that fail are reported (unless quiet) and copied as
  // zeros.
  bool salvage = false;
  bool quiet = false;
  // -r: bytes per second written to the destination at most (0: no limit).
  uint64_t rate_bytes_per_second = 0;
  RateLimiter rate_limiter;  // of rate_bytes_per_second, from RunCopy's start
  // Chunks that read as zeros in the source (tools/zero_chunks.h): not read,
  // and written only as zeroes when the destination may hold data there.
  // Empty: read every chunk.
  std::vector<bool> zero_chunks;
  uint64_t next_chunk = 0;
  uint64_t chunks = 0;
  uint64_t done_bytes = 0;
  uint64_t skipped_chunks = 0;
  int error = 0;
  std::string error_what;
  Progress* progress = nullptr;
  // In-order writes (qcow2 output without -W): chunk i's writes start only
  // after chunk i-1's have finished, so clusters are allocated in guest order
  // (an unfragmented image, as qemu-img convert makes); reads still overlap.
  bool in_order = false;
  uint64_t next_write_chunk = 0;
  std::map<uint64_t, std::coroutine_handle<>> turn_waiters;
};

// Runs `workers` copy workers on the loop until all have finished.
absl::Status RunCopy(CopyJob& job, int workers);

}  // namespace uq::tools

#endif  // UQ_TOOLS_CONVERT_COPY_H_
