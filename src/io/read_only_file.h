// ReadOnlyFile: serves a file read-only whatever the file itself allows
// (OpenOptions.read_only on a raw image opened writable, a backing file).
//
// Reads and size pass through; WriteV, Discard, WriteZeroes and Truncate fail
// with -EROFS without reaching the base; Flush has nothing to make durable
// and returns 0; read_only() is true.
//
// Thread-safety: that of the wrapped file.
#ifndef UQ_SRC_IO_READ_ONLY_FILE_H_
#define UQ_SRC_IO_READ_ONLY_FILE_H_

#include <cerrno>
#include <memory>

#include "src/io/file_wrapper.h"

namespace uq::io {

class ReadOnlyFile final : public FileWrapper {
 public:
  using FileWrapper::FileWrapper;

  Task<int64_t> WriteV(uint64_t, std::span<const iovec>) override {
    return ReadyTask<int64_t>(-EROFS);
  }
  Task<int> Flush() override { return ReadyTask(0); }
  Task<int> Discard(uint64_t, uint64_t) override { return ReadyTask(-EROFS); }
  Task<int> WriteZeroes(uint64_t, uint64_t) override { return ReadyTask(-EROFS); }
  Task<int> Truncate(uint64_t) override { return ReadyTask(-EROFS); }
  Task<int> Reserve(uint64_t, uint64_t) override { return ReadyTask(-EROFS); }
  bool read_only() const override { return true; }
};

}  // namespace uq::io

#endif  // UQ_SRC_IO_READ_ONLY_FILE_H_
