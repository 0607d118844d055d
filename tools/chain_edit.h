// What qemu-img rebase and commit share: opening the image to change under
// the writer's lock, their cache mode options, and which ranges of it are allocated in its top
// layers (QEMU's bdrv_is_allocated_above(top, base)): what rebase leaves alone (allocated in the
// image itself) and what commit copies (allocated above the base).
//
// Thread-safety: plain functions; the Chain is used from the calling thread.
#ifndef UQ_TOOLS_CHAIN_EDIT_H_
#define UQ_TOOLS_CHAIN_EDIT_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "src/common/options.h"
#include "src/io/event_loop.h"
#include "src/io/uring_file.h"
#include "tools/block_status.h"
#include "tools/convert_options.h"
#include "tools/util.h"

namespace uq::tools {

struct LayerRun {
  uint64_t offset = 0;
  uint64_t bytes = 0;
  bool allocated = false;  // in one of the layers asked about
  bool zero = false;       // with `allocated`: the topmost such layer reads zeros
};

// The runs covering [0, chain.size_bytes()), each allocated or not in the
// chain's layers [0, layers) (REQUIRES: 1 <= layers <= chain.depth()).
// Past the end of a shorter layer below the top, the range reads as zeros
// and counts as allocated there, as in QEMU. Adjacent runs of the same kind
// are merged. Read from metadata only, before anything is written, so later
// writes cannot confuse it.
absl::StatusOr<std::vector<LayerRun>> RunsAbove(Chain& chain, size_t layers);

// An image file opened writable under the writer's lock, for the engine
// (`file`), and a descriptor that holds the lock (it keeps it after the
// engine closes its own: rebase rewrites the header through it). Without
// O_DIRECT `header` is a second descriptor of `file`'s open file; with it,
// `header` is a plain open file of its own (headers are read and written
// through it at any offset and length) and `file` a second open of the path
// that takes no lock, as `header`'s keeps everyone else out.
struct LockedImage {
  std::unique_ptr<io::UringFile> file;
  PosixFile header;
  bool qcow2 = false;
};
// Opens `path`; `format` as for -f ("" = probe); `direct`: `file` with
// O_DIRECT (-t none). Errors are one line (the caller prefixes nothing: the
// message names the file).
absl::StatusOr<LockedImage> OpenLockedImage(io::EventLoop& loop, const std::string& path,
                                            const std::string& format, bool direct = false);

// -t / -T (`option`): the last value given, read by ParseCacheMode (none,
// writeback, unsafe); `mode` stays as it is when the option is absent. The
// error names the option.
absl::Status ParseCacheOption(const common::ParsedArgs& parsed, char option, CacheMode& mode);

}  // namespace uq::tools

#endif  // UQ_TOOLS_CHAIN_EDIT_H_
