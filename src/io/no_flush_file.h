// NoFlushFile: a file whose Flush makes nothing durable (QEMU's cache=unsafe,
// cache.no-flush=on): qemu-img convert's default for its target, whose whole
// contents are lost anyway if the copy does not finish. Everything else
// passes through; the page cache still writes the data back in its own time.
//
// Thread-safety: that of the wrapped file.
#ifndef UQ_SRC_IO_NO_FLUSH_FILE_H_
#define UQ_SRC_IO_NO_FLUSH_FILE_H_

#include "src/io/file_wrapper.h"

namespace uq::io {

class NoFlushFile final : public FileWrapper {
 public:
  using FileWrapper::FileWrapper;

  Task<int> Flush() override { return ReadyTask(0); }
};

}  // namespace uq::io

#endif  // UQ_SRC_IO_NO_FLUSH_FILE_H_
