// The layers behind tools/block_status.h (not for other users).
#ifndef UQ_TOOLS_BLOCK_STATUS_INTERNAL_H_
#define UQ_TOOLS_BLOCK_STATUS_INTERNAL_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "format/header.h"
#include "tools/block_status.h"
#include "tools/util.h"

namespace uq::tools {

// A run of a file's data or hole starting at `offset`, as QEMU's file driver
// reports it (SEEK_DATA / SEEK_HOLE; the file's length counts in whole
// 512-byte sectors). `bytes` is 0 when `offset` is at or past the end.
struct HoleRun {
  uint64_t bytes = 0;
  bool hole = false;
  bool past_eof = false;  // the run reaches the end of the file
};
absl::StatusOr<HoleRun> FindHoles(const PosixFile& file, uint64_t offset, uint64_t bytes);

// What QEMU's generic block layer adds to every layer's answer.
class LayerBase : public Layer {
 public:
  uint64_t size_bytes() const override { return size_bytes_; }
  // nullopt: no backing file.
  void set_backing_size(std::optional<uint64_t> bytes) { backing_size_ = bytes; }

 protected:
  // ALLOCATED for DATA or ZERO; ZERO for an unallocated range without a
  // backing file or past the backing file's end; EOF at the image's end.
  void FinishStatus(BlockStatus& st, uint64_t offset) const;

  uint64_t size_bytes_ = 0;
  std::optional<uint64_t> backing_size_;
};

class RawLayer : public LayerBase {
 public:
  RawLayer(PosixFile file, std::string path);
  absl::StatusOr<BlockStatus> Status(uint64_t offset, uint64_t bytes) override;

 private:
  PosixFile file_;
  std::string path_;
};

class Qcow2Layer : public LayerBase {
 public:
  // `l1`: the raw entries of the L1 table in use (active or a snapshot's).
  Qcow2Layer(PosixFile file, std::string path, format::Header header, std::vector<uint64_t> l1);
  // The external data file; `name` as map prints it.
  void SetDataFile(PosixFile file, std::string name);
  absl::StatusOr<BlockStatus> Status(uint64_t offset, uint64_t bytes) override;
  const format::Header& header() const { return h_; }

 private:
  // QEMU's qcow2_get_host_offset: the run of one subcluster type from offset.
  struct HostRun {
    uint64_t bytes = 0;
    bool data = false;
    bool zero = false;
    bool has_host = false;
    uint64_t host_offset = 0;
  };
  absl::StatusOr<HostRun> HostOffset(uint64_t offset, uint64_t bytes);
  absl::StatusOr<const std::vector<std::byte>*> LoadL2(uint64_t l2_offset);
  bool DetectPreallocation();
  uint64_t file_size() const;

  PosixFile file_;
  std::string path_;
  format::Header h_;
  std::vector<uint64_t> l1_;
  uint32_t sc_bits_ = 0;  // subcluster size (the cluster size without extended L2)
  uint64_t cached_l2_offset_ = UINT64_MAX;
  std::vector<std::byte> l2_;
  std::optional<PosixFile> data_file_;
  std::string data_name_;
  std::optional<bool> preallocated_;  // decided on the first query, as QEMU does
};

}  // namespace uq::tools

#endif  // UQ_TOOLS_BLOCK_STATUS_INTERNAL_H_
