// A pure layout builder for new qcow2 images: given creation options it
// produces the header and the byte ranges to write (header cluster, refcount
// table, refcount blocks, L1 table and, for preallocation=metadata, the L2
// tables). No I/O: `qcow2-img create` writes the ranges with pwrite, the
// engine's convert may write them through a BlockFile.
//
// Layout (as QEMU lays out a fresh image): cluster 0 header, then the refcount
// table, the refcount blocks, the L1 table, the L2 tables and the
// preallocated data clusters. Every cluster in [0, file_size_bytes) has
// refcount 1; nothing else is referenced.
#ifndef UQ_FORMAT_CREATE_H_
#define UQ_FORMAT_CREATE_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "format/header.h"

namespace uq::format {

enum class Preallocation { kOff, kMetadata };

struct CreateOptions {
  uint64_t size_bytes = 0;
  uint32_t version = 3;  // 2 = compat 0.10, 3 = compat 1.1
  uint32_t cluster_bits = 16;
  uint32_t refcount_order = 4;
  bool extended_l2 = false;
  CompressionType compression_type = CompressionType::kZlib;
  bool lazy_refcounts = false;
  Preallocation preallocation = Preallocation::kOff;
  std::string data_file;  // empty = none
  bool data_file_raw = false;
  std::string backing_file;  // empty = none
  std::optional<std::string> backing_format;
};

// One contiguous write. Clusters of the layout not covered by a range (data
// clusters of a metadata preallocation) must read as zeros: the writer
// extends the file to file_size_bytes (sparse).
struct WriteRange {
  uint64_t offset_bytes = 0;
  std::vector<std::byte> data;
};

struct ImageLayout {
  Header header;
  std::vector<WriteRange> writes;  // ascending, non-overlapping
  uint64_t file_size_bytes = 0;    // cluster multiple
};

// Checks the options (ranges and combinations, with QEMU's messages in
// spirit: "cluster_size 1000 is not a power of two between 512 and 2M",
// "compat=0.10 does not support lazy_refcounts", ...).
absl::Status ValidateCreateOptions(const CreateOptions& options);

// Validates and builds the layout. Fails naming the option when the image
// would exceed the format's limits (L1 table over 32 MiB, refcount table over
// 8 MiB).
absl::StatusOr<ImageLayout> BuildImageLayout(const CreateOptions& options);

}  // namespace uq::format

#endif  // UQ_FORMAT_CREATE_H_
