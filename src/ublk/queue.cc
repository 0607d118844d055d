#include "src/ublk/queue.h"

#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <optional>

#include "absl/strings/str_cat.h"

#ifndef PR_SET_IO_FLUSHER
#define PR_SET_IO_FLUSHER 57
#endif

namespace uq::ublk {

namespace {

size_t PageRound(size_t n) {
  size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return (n + page - 1) / page * page;
}

// Log at most this many failed requests per queue (the count is kept).
constexpr uint64_t kMaxLoggedFailures = 8;

}  // namespace

absl::StatusOr<std::unique_ptr<Queue>> Queue::Create(const QueueConfig& config,
                                                     std::unique_ptr<io::EventLoop> loop,
                                                     std::unique_ptr<engine::Device> device) {
  if (config.depth == 0 || config.depth > kMaxQueueDepth || config.buf_bytes == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("queue ", config.q_id, ": bad depth ", config.depth));
  }
  if (config.user_copy && config.buf_bytes > kUserCopyMaxBytes) {
    return absl::InvalidArgumentError(absl::StrCat("queue ", config.q_id, ": buffer of ",
                                                   config.buf_bytes,
                                                   " bytes is too large for user copy"));
  }
  std::unique_ptr<Queue> q(new Queue(config, std::move(loop), std::move(device)));

  // The kernel checks the length exactly; queues are spaced for the maximum
  // depth whatever the real one.
  q->descs_len_ = PageRound(config.depth * sizeof(IoDesc));
  off_t offset = static_cast<off_t>(config.q_id) *
                 static_cast<off_t>(PageRound(kIoDescQueueStrideEntries * sizeof(IoDesc)));
  void* descs =
      ::mmap(nullptr, q->descs_len_, PROT_READ, MAP_SHARED | MAP_POPULATE, config.cdev_fd, offset);
  if (descs == MAP_FAILED) {
    return absl::InternalError(
        absl::StrCat("mmap of queue ", config.q_id, " descriptors: ", std::strerror(errno)));
  }
  q->descs_ = static_cast<const IoDesc*>(descs);

  // One buffer per tag, page aligned, reserved once; pages appear on first use.
  q->buffers_len_ = static_cast<size_t>(config.depth) * PageRound(config.buf_bytes);
  void* bufs = ::mmap(nullptr, q->buffers_len_, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (bufs == MAP_FAILED) {
    return absl::ResourceExhaustedError(
        absl::StrCat("queue ", config.q_id, " buffers: ", std::strerror(errno)));
  }
  q->buffers_ = static_cast<std::byte*>(bufs);
  return q;
}

Queue::~Queue() {
  // A queue that never ran still owes its Device a Close() (a writable image
  // must not be left marked in use).
  if (!thread_started_ && device_ != nullptr) CloseDevice(*loop_, *device_).IgnoreError();
  // The descriptor mapping holds a reference on /dev/ublkcN; DEL_DEV waits for
  // it, so it must go before DEL_DEV is sent.
  if (descs_ != nullptr) ::munmap(const_cast<IoDesc*>(descs_), descs_len_);
  if (buffers_ != nullptr) ::munmap(buffers_, buffers_len_);
}

void Queue::Start() {
  thread_started_ = true;
  thread_ = std::thread([this] { Run(); });
}

absl::Status CloseDevice(io::EventLoop& loop, engine::Device& device) {
  // The Device's I/O goes to this loop's files (io::PerLoopFile picks by the
  // current executor), also when the control thread closes a queue that
  // never ran.
  io::Executor* before = io::Executor::Current();
  io::Executor::SetCurrent(&loop);
  struct Restore {
    io::Executor* e;
    ~Restore() { io::Executor::SetCurrent(e); }
  } restore{before};
  std::optional<absl::Status> closed;
  Spawn(StoreResult(device.Close(), &closed));
  while (!closed.has_value()) {
    int r = loop.RunOnce(true);
    if (r < 0 && r != -EINTR) {
      return absl::InternalError(absl::StrCat("io_uring: ", std::strerror(-r)));
    }
  }
  return *closed;
}

void Queue::Join() {
  if (thread_.joinable()) thread_.join();
}

void Queue::Run() {
  if (config_.has_affinity && CPU_COUNT(&config_.affinity) > 0) {
    // Best effort: a restricted cpuset may refuse some CPUs.
    sched_setaffinity(0, sizeof(config_.affinity), &config_.affinity);
  }
  // Our writes may be what frees memory (swap or writeback onto the device):
  // do not throttle this thread like an ordinary writer. Needs
  // CAP_SYS_RESOURCE; without it we serve anyway.
  prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0);
  // This thread's executor: the Device's files pick this loop's descriptor,
  // and requests parked on state shared with other queues are resumed here.
  loop_->MakeCurrent();

  live_tags_ = config_.depth;
  for (uint16_t tag = 0; tag < config_.depth; ++tag) Spawn(ServeTag(tag));

  while (live_tags_ > 0) {
    int r = loop_->RunOnce(true);
    if (r < 0 && r != -EINTR) {
      std::fprintf(stderr, "ublk-qcow2: queue %u: io_uring: %s\n", config_.q_id, std::strerror(-r));
      break;
    }
  }

  // Every tag is finished: no request is in flight in the Device any more.
  close_status_ = CloseDevice(*loop_, *device_);
  if (failed_requests_ > 0) {
    std::fprintf(stderr, "ublk-qcow2: queue %u: %llu requests failed\n", config_.q_id,
                 static_cast<unsigned long long>(failed_requests_));
  }
  if (config_.done_fd >= 0) eventfd_write(config_.done_fd, 1);
}

Task<void> Queue::ServeTag(uint16_t tag) {
  const uint32_t fetch_op = config_.ioctl_encoded ? IoctlIo(kIoFetchReq) : kIoFetchReq;
  const uint32_t commit_op =
      config_.ioctl_encoded ? IoctlIo(kIoCommitAndFetchReq) : kIoCommitAndFetchReq;
  std::byte* buf = buffers_ + static_cast<size_t>(tag) * PageRound(config_.buf_bytes);
  const int fd = config_.cdev_fd;
  const uint16_t q_id = config_.q_id;
  const bool user_copy = config_.user_copy;
  // With user copy the kernel wants no buffer address in FETCH / COMMIT.
  const uint64_t buf_addr = user_copy ? 0 : reinterpret_cast<uint64_t>(buf);

  uint32_t op = fetch_op;
  int32_t result = 0;
  while (true) {
    int32_t res = co_await loop_->Op([&](io_uring_sqe* sqe) {
      sqe->opcode = IORING_OP_URING_CMD;
      sqe->fd = fd;
      sqe->cmd_op = op;
      IoCmd cmd{};
      cmd.q_id = q_id;
      cmd.tag = tag;
      cmd.result = result;
      cmd.addr = buf_addr;
      std::memcpy(sqe->cmd, &cmd, sizeof(cmd));
    });
    if (res != kIoResOk) {
      // kIoResAbort: the device is stopping (or the server is being
      // replaced). Anything else means the command itself was refused.
      if (res != kIoResAbort) {
        std::fprintf(stderr, "ublk-qcow2: queue %u tag %u: io command: %s\n", q_id, tag,
                     std::strerror(-res));
      }
      break;
    }

    // The kernel wrote the descriptor before posting the completion.
    const IoDesc desc = descs_[tag];
    const uint8_t ublk_op = desc.op_flags & 0xff;
    const uint32_t flags = desc.op_flags;
    const uint64_t offset = desc.start_sector << 9;
    const uint64_t length = static_cast<uint64_t>(desc.nr_sectors) << 9;
    iovec iov{buf, static_cast<size_t>(length)};
    int r = 0;
    if ((ublk_op == kOpRead || ublk_op == kOpWrite) && length > config_.buf_bytes) {
      r = -EINVAL;
    }
    // User copy, WRITE: the request's data into the tag's buffer first.
    if (r == 0 && user_copy && ublk_op == kOpWrite) {
      uint64_t done = 0;
      while (done < length) {
        int32_t n = co_await loop_->Op([&](io_uring_sqe* sqe) {
          io_uring_prep_read(sqe, fd, buf + done, static_cast<unsigned>(length - done),
                             UserCopyOffset(q_id, tag, static_cast<uint32_t>(done)));
        });
        if (n <= 0) {
          r = n < 0 ? n : -EIO;
          break;
        }
        done += static_cast<uint64_t>(n);
      }
    }
    if (r == 0) {
      switch (ublk_op) {
        // No co_await inside conditions or ?: here (GCC 12 miscompiles them,
        // see src/io/task.h): plain statements only.
        case kOpRead:
          r = co_await device_->Read(offset, std::span<const iovec>(&iov, 1));
          break;
        case kOpWrite: {
          const bool fua = (flags & kIoFlagFua) != 0 || config_.writethrough;
          r = co_await device_->Write(offset, std::span<const iovec>(&iov, 1), fua);
          break;
        }
        case kOpFlush:  // start_sector = ~0, nr_sectors = 0: no range
          r = co_await device_->Flush();
          break;
        case kOpDiscard:
          r = co_await device_->Discard(offset, length);
          break;
        case kOpWriteZeroes:
          r = co_await device_->WriteZeroes(offset, length, (flags & kIoFlagNoUnmap) == 0);
          break;
        default:
          r = -EOPNOTSUPP;
          break;
      }
    }
    if (r >= 0 && config_.writethrough && (ublk_op == kOpDiscard || ublk_op == kOpWriteZeroes)) {
      r = co_await device_->Flush();
    }
    // User copy, READ: the data into the request's pages.
    if (r >= 0 && user_copy && ublk_op == kOpRead) {
      uint64_t done = 0;
      while (done < length) {
        int32_t n = co_await loop_->Op([&](io_uring_sqe* sqe) {
          io_uring_prep_write(sqe, fd, buf + done, static_cast<unsigned>(length - done),
                              UserCopyOffset(q_id, tag, static_cast<uint32_t>(done)));
        });
        if (n <= 0) {
          r = n < 0 ? n : -EIO;
          break;
        }
        done += static_cast<uint64_t>(n);
      }
    }
    if (r < 0) {
      if (failed_requests_++ < kMaxLoggedFailures) {
        std::fprintf(stderr, "ublk-qcow2: queue %u: op %u at %llu+%llu failed: %s\n", q_id, ublk_op,
                     static_cast<unsigned long long>(offset),
                     static_cast<unsigned long long>(length), std::strerror(-r));
      }
      result = r;
    } else if (ublk_op == kOpRead || ublk_op == kOpWrite) {
      // A READ/WRITE commits its byte count (0 would be an I/O error).
      result = static_cast<int32_t>(length);
    } else {
      result = 0;
    }
    op = commit_op;
  }
  --live_tags_;
}

}  // namespace uq::ublk
