// Block status of an image chain as QEMU 7.2 computes it (bdrv_co_block_status
// and bdrv_block_status_above with want_zero), read straight from the files'
// metadata: what `map` prints, what `compare` skips and checks in strict mode,
// and what `measure` counts. Nothing here reads guest data.
//
// Per layer (one image file):
//   qcow2: the L2 entry's type decides DATA / ZERO / OFFSET_VALID (host
//          offset in the image or its external data file) for a run of
//          subclusters of one type (contiguous on the host where there is a
//          host offset), never past the end of one L2 table; compressed
//          clusters are DATA without an offset. Images with metadata
//          preallocation (QEMU's detection: more clusters in use than
//          blocks allocated) ask the file for holes (SEEK_DATA/SEEK_HOLE):
//          a hole reads as ZERO.
//   raw:   the file's data and holes, always ALLOCATED, offset = guest offset.
// and, as QEMU's generic layer adds: ALLOCATED when DATA or ZERO; ZERO for an
// unallocated range with no backing file or past the backing file's end; EOF
// when the range reaches the image's end.
//
// Untrusted input: headers are validated by format::DecodeHeader, every table
// offset is checked against the file, L2 tables are read one at a time and
// memory stays at the L1 table plus one L2 table a layer.
//
// Thread-safety: a Chain is used from one thread.
#ifndef UQ_TOOLS_BLOCK_STATUS_H_
#define UQ_TOOLS_BLOCK_STATUS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "tools/image_lock.h"

namespace uq::tools {

struct BlockStatus {
  uint64_t bytes = 0;  // length of the run from the queried offset
  bool data = false;
  bool zero = false;
  bool offset_valid = false;
  bool allocated = false;
  bool eof = false;
  bool recurse = false;      // QEMU's BDRV_BLOCK_RECURSE (preallocated qcow2)
  uint64_t host_offset = 0;  // with offset_valid
  std::string file;          // the file host_offset refers to (with offset_valid)

  // The flags callers of QEMU's block status see, as one value (strict
  // comparisons).
  unsigned Flags() const;
};

class Layer {
 public:
  virtual ~Layer() = default;
  virtual uint64_t size_bytes() const = 0;
  // One block-status query of this layer for [offset, offset + bytes),
  // offset < size_bytes(), as QEMU's format driver and generic layer answer
  // it (without looking at backing files beyond their size).
  virtual absl::StatusOr<BlockStatus> Status(uint64_t offset, uint64_t bytes) = 0;
};

// An image and its backing chain, top first.
class Chain {
 public:
  // Opens `path` ("qcow2", "raw" or "" to probe) and its backing files,
  // taking `lock` on each (and on an external data file). Backing names
  // resolve against their image's directory, as do data file names (QEMU 7.2
  // resolves those against the working directory; map prints them as
  // written either way). With `snapshot` (a name or id), the top image is
  // read through that internal snapshot's L1 table (measure -l).
  // The files an image names are opened under the engine's rules
  // (engine/named_file.h, as engine::OpenPath): read-only, regular files (or
  // block devices with `allow_devices`), no loops by file identity, and a
  // backing file whose format is not named is probed but, if qcow2, its own
  // backing and data files are not followed.
  static absl::StatusOr<Chain> Open(const std::string& path, const std::string& format,
                                    LockMode lock, const std::string& snapshot = "",
                                    bool allow_devices = false);

  size_t depth() const { return layers_.size(); }
  Layer& layer(size_t i) { return *layers_[i]; }
  uint64_t size_bytes() const { return layers_[0]->size_bytes(); }
  // Whether the top image is qcow2 version 3 (it can hold persistent bitmaps).
  bool top_is_qcow2_v3() const { return top_qcow2_v3_; }

  // qemu-img map's view of [offset, offset + bytes): the first layer whose
  // status has DATA or ZERO, and its depth (0 = top).
  absl::StatusOr<BlockStatus> MapStatus(uint64_t offset, uint64_t bytes, size_t* depth);
  // bdrv_block_status_above(top, NULL): the status through the whole chain.
  absl::StatusOr<BlockStatus> StatusAbove(uint64_t offset, uint64_t bytes);

 private:
  std::vector<std::unique_ptr<Layer>> layers_;
  bool top_qcow2_v3_ = false;
};

}  // namespace uq::tools

#endif  // UQ_TOOLS_BLOCK_STATUS_H_
