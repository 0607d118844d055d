// PerLoopFile: one file served from several event loops (the queue threads
// of one ublk device), each through its own UringFile clone: its own
// descriptor and its own io_uring, so no request hops to another thread.
//
// Every operation goes to the clone of the calling thread's current executor
// (io::Executor::Current(), set by EventLoop::MakeCurrent() on each queue
// thread, and by CloseDevice while it drives a loop). A thread whose current
// executor is none of the loops (the thread that opens the image, before the
// queue threads start) uses the first clone, whose loop it must be driving.
//
// The clones share one size (UringFile::Clone), so size_bytes() is the same
// through all of them.
//
// Thread-safety: operations from any of the loops' threads at the same time;
// the object itself is immutable after Create.
#ifndef UQ_SRC_IO_PER_LOOP_FILE_H_
#define UQ_SRC_IO_PER_LOOP_FILE_H_

#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "src/io/block_file.h"
#include "src/io/event_loop.h"
#include "src/io/uring_file.h"

namespace uq::io {

class PerLoopFile final : public BlockFile {
 public:
  // `first` is open on loops[0]; clones it onto every other loop.
  // REQUIRES: !loops.empty(), first->loop() == loops[0].
  static absl::StatusOr<std::unique_ptr<PerLoopFile>> Create(std::unique_ptr<UringFile> first,
                                                             std::span<EventLoop* const> loops);

  Task<int64_t> ReadV(uint64_t offset_bytes, std::span<const iovec> iov) override {
    return Pick().ReadV(offset_bytes, iov);
  }
  Task<int64_t> WriteV(uint64_t offset_bytes, std::span<const iovec> iov) override {
    return Pick().WriteV(offset_bytes, iov);
  }
  Task<int> Flush() override { return Pick().Flush(); }
  Task<int> Discard(uint64_t offset_bytes, uint64_t length_bytes) override {
    return Pick().Discard(offset_bytes, length_bytes);
  }
  Task<int> WriteZeroes(uint64_t offset_bytes, uint64_t length_bytes) override {
    return Pick().WriteZeroes(offset_bytes, length_bytes);
  }
  Task<int> Truncate(uint64_t size_bytes) override { return Pick().Truncate(size_bytes); }
  Task<int> Reserve(uint64_t offset_bytes, uint64_t length_bytes) override {
    return Pick().Reserve(offset_bytes, length_bytes);
  }
  uint64_t size_bytes() const override { return files_[0]->size_bytes(); }
  bool read_only() const override { return files_[0]->read_only(); }

  // The clone serving loops[i].
  UringFile& clone(size_t i) { return *files_[i]; }
  size_t clones() const { return files_.size(); }

 private:
  PerLoopFile() = default;
  UringFile& Pick() const;

  std::vector<EventLoop*> loops_;
  std::vector<std::unique_ptr<UringFile>> files_;
};

}  // namespace uq::io

#endif  // UQ_SRC_IO_PER_LOOP_FILE_H_
