#include "tools/block_status.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "format/endian.h"
#include "format/snapshot.h"
#include "format/status_macros.h"
#include "src/engine/named_file.h"
#include "tools/block_status_internal.h"

namespace uq::tools {
namespace {

constexpr uint64_t kSectorBytes = 512;
constexpr size_t kMaxChainDepth = 64;  // as the engine (loops are found by identity)

uint64_t RoundUpToSector(uint64_t v) {
  return (v + kSectorBytes - 1) / kSectorBytes * kSectorBytes;
}

}  // namespace

unsigned BlockStatus::Flags() const {
  // RECURSE is QEMU's internal hint between layers: callers never see it.
  return (data ? 1u : 0u) | (zero ? 2u : 0u) | (offset_valid ? 4u : 0u) | (allocated ? 8u : 0u) |
         (eof ? 16u : 0u);
}

absl::StatusOr<HoleRun> FindHoles(const PosixFile& file, uint64_t offset, uint64_t bytes) {
  UQ_ASSIGN_OR_RETURN(const uint64_t st_size, file.Size());
  const uint64_t length = RoundUpToSector(st_size);
  HoleRun run;
  if (offset >= length) {
    run.past_eof = true;
    return run;
  }
  bytes = std::min(bytes, length - offset);
  const off_t data = lseek(file.fd(), static_cast<off_t>(offset), SEEK_DATA);
  if (data < 0 && errno == ENXIO) {
    run.hole = true;  // a trailing hole
    run.bytes = bytes;
  } else if (data < 0) {
    run.bytes = bytes;  // no information: data, as QEMU assumes
  } else if (static_cast<uint64_t>(data) == offset) {
    const off_t hole = lseek(file.fd(), static_cast<off_t>(offset), SEEK_HOLE);
    const uint64_t end = hole < 0 ? length : RoundUpToSector(static_cast<uint64_t>(hole));
    run.bytes = std::min(bytes, end - offset);
  } else {
    run.hole = true;
    run.bytes = std::min(bytes, static_cast<uint64_t>(data) - offset);
  }
  run.past_eof = offset + run.bytes == length;
  return run;
}

void LayerBase::FinishStatus(BlockStatus& st, uint64_t offset) const {
  if (st.data || st.zero) {
    st.allocated = true;
  } else if (!backing_size_.has_value() || offset >= *backing_size_) {
    st.zero = true;
  }
  st.eof = offset + st.bytes == size_bytes_;
}

RawLayer::RawLayer(PosixFile file, std::string path)
    : file_(std::move(file)), path_(std::move(path)) {
  absl::StatusOr<uint64_t> size = file_.Size();
  size_bytes_ = size.ok() ? RoundUpToSector(*size) : 0;
}

absl::StatusOr<BlockStatus> RawLayer::Status(uint64_t offset, uint64_t bytes) {
  UQ_ASSIGN_OR_RETURN(HoleRun run, FindHoles(file_, offset, std::min(bytes, size_bytes_ - offset)));
  BlockStatus st;
  st.bytes = run.bytes;
  st.data = !run.hole;
  st.zero = run.hole;
  st.offset_valid = true;
  st.host_offset = offset;
  st.file = path_;
  FinishStatus(st, offset);
  return st;
}

namespace {

// The L1 table to map through: the active one, or the named snapshot's.
absl::StatusOr<std::vector<uint64_t>> ReadL1(const PosixFile& file, const format::Header& h,
                                             const std::string& snapshot) {
  uint64_t offset = h.l1_table_offset;
  uint64_t entries = h.l1_size;
  if (!snapshot.empty()) {
    UQ_ASSIGN_OR_RETURN(uint64_t file_size, file.Size());
    const uint64_t want = h.snapshots_offset < file_size ? file_size - h.snapshots_offset : 0;
    UQ_ASSIGN_OR_RETURN(std::vector<std::byte> table,
                        file.ReadAt(h.snapshots_offset, std::min<uint64_t>(want, 64ull << 20)));
    UQ_ASSIGN_OR_RETURN(std::vector<format::Snapshot> snaps,
                        format::DecodeSnapshotTable(table, h.nb_snapshots, h.cluster_bits));
    const format::Snapshot* found = nullptr;
    for (const format::Snapshot& s : snaps) {
      if (s.id == snapshot || (found == nullptr && s.name == snapshot)) found = &s;
    }
    if (found == nullptr) {
      return absl::NotFoundError(
          absl::StrCat("Failed to load snapshot: Can't find snapshot '", snapshot, "'"));
    }
    offset = found->l1_table_offset;
    entries = found->l1_size;
    if (offset > file_size || entries * 8 > file_size - offset) {
      return absl::DataLossError("the snapshot's L1 table is past the end of the file");
    }
  }
  UQ_ASSIGN_OR_RETURN(std::vector<std::byte> raw, file.ReadAt(offset, entries * 8));
  raw.resize(entries * 8);
  std::vector<uint64_t> l1(entries);
  for (uint64_t i = 0; i < entries; ++i) l1[i] = format::LoadBE64(&raw[i * 8]);
  return l1;
}

}  // namespace

absl::StatusOr<Chain> Chain::Open(const std::string& path, const std::string& format, LockMode lock,
                                  const std::string& snapshot, bool allow_devices) {
  Chain chain;
  std::string current = path;
  std::string current_format = format;
  // The engine's rules for files an image names (engine/named_file.h), as
  // OpenPath applies them: backing files read-only and not special files,
  // no loops (by file identity), a probed backing file's own backing and
  // data files not followed.
  std::vector<engine::ChainImage> above;  // the images opened so far, top first
  std::string overlay;                    // the image naming `current`; "" for the top
  std::string backing_name;               // `current` as `overlay` writes it
  for (;;) {
    if (chain.layers_.size() >= kMaxChainDepth) {
      return absl::InvalidArgumentError("the backing chain is too deep");
    }
    if (!overlay.empty()) {
      const engine::NamedFile named{.image_path = overlay,
                                    .path = current,
                                    .role = engine::NamedRole::kBacking,
                                    .writable = false};
      UQ_RETURN_IF_ERROR(engine::CheckNamedFile(named, allow_devices));
      UQ_RETURN_IF_ERROR(engine::CheckNotInChain(named, above));
    }
    absl::StatusOr<PosixFile> file = PosixFile::Open(current, O_RDONLY);
    if (!file.ok()) {
      return absl::Status(file.status().code(), absl::StrCat("Could not open '", current,
                                                             "': ", file.status().message()));
    }
    UQ_RETURN_IF_ERROR(LockImageFile(file->fd(), lock));
    bool qcow2 = current_format == "qcow2";
    const bool probed_backing = !overlay.empty() && current_format.empty();
    if (current_format.empty()) {
      UQ_ASSIGN_OR_RETURN(qcow2, HasQcow2Magic(*file));
    } else if (current_format != "raw" && current_format != "qcow2") {
      return absl::InvalidArgumentError(
          absl::StrCat("Unknown driver '", current_format, "' (qcow2 or raw)"));
    }
    if (!qcow2) {
      if (chain.layers_.empty() && !snapshot.empty()) {
        return absl::InvalidArgumentError("Failed to load snapshot: a raw image has no snapshots");
      }
      chain.layers_.push_back(std::make_unique<RawLayer>(*std::move(file), current));
      break;
    }
    UQ_ASSIGN_OR_RETURN(format::Header h, ReadQcow2Header(*file));
    if (probed_backing) UQ_RETURN_IF_ERROR(engine::CheckProbedFollows(h, overlay, backing_name));
    if (const std::optional<engine::FileId> id = engine::IdentifyFile(current)) {
      above.push_back({*id, current});
    }
    const bool top = chain.layers_.empty();
    UQ_ASSIGN_OR_RETURN(std::vector<uint64_t> l1, ReadL1(*file, h, top ? snapshot : ""));
    if (top) chain.top_qcow2_v3_ = h.version >= 3;
    auto layer = std::make_unique<Qcow2Layer>(*std::move(file), current, h, std::move(l1));
    if (h.has_data_file()) {
      if (!h.data_file) return absl::InvalidArgumentError("'data-file' is required for this image");
      const engine::NamedFile named{.image_path = current,
                                    .path = ResolveRelative(current, *h.data_file),
                                    .role = engine::NamedRole::kDataFile,
                                    .writable = false};
      UQ_RETURN_IF_ERROR(engine::CheckNamedFile(named, allow_devices));
      UQ_RETURN_IF_ERROR(engine::CheckNotInChain(named, above));
      absl::StatusOr<PosixFile> data = PosixFile::Open(named.path, O_RDONLY);
      if (!data.ok()) {
        return absl::Status(data.status().code(), absl::StrCat("Could not open '", *h.data_file,
                                                               "': ", data.status().message()));
      }
      UQ_RETURN_IF_ERROR(LockImageFile(data->fd(), lock));
      layer->SetDataFile(*std::move(data), *h.data_file);
    }
    chain.layers_.push_back(std::move(layer));
    if (h.backing_file.empty()) break;
    overlay = current;
    backing_name = h.backing_file;
    current = ResolveRelative(current, h.backing_file);
    current_format = h.backing_format.value_or("");
  }
  for (size_t i = 0; i < chain.layers_.size(); ++i) {
    auto* base = static_cast<LayerBase*>(chain.layers_[i].get());
    if (i + 1 < chain.layers_.size()) base->set_backing_size(chain.layers_[i + 1]->size_bytes());
  }
  return chain;
}

absl::StatusOr<BlockStatus> Chain::MapStatus(uint64_t offset, uint64_t bytes, size_t* depth) {
  for (size_t d = 0;; ++d) {
    UQ_ASSIGN_OR_RETURN(BlockStatus st, layers_[d]->Status(offset, bytes));
    bytes = st.bytes;
    if (st.data || st.zero || d + 1 == layers_.size()) {
      *depth = d;
      return st;
    }
  }
}

absl::StatusOr<BlockStatus> Chain::StatusAbove(uint64_t offset, uint64_t bytes) {
  UQ_ASSIGN_OR_RETURN(BlockStatus st, layers_[0]->Status(offset, bytes));
  if (st.allocated) return st;
  const uint64_t eof = st.eof ? offset + st.bytes : 0;
  bytes = st.bytes;
  for (size_t d = 1; d < layers_.size(); ++d) {
    if (offset >= layers_[d]->size_bytes()) {
      // A short backing file: the zeros past its end count as allocated there.
      st = BlockStatus{};
      st.bytes = bytes;
      st.zero = true;
      st.allocated = true;
      break;
    }
    UQ_ASSIGN_OR_RETURN(st, layers_[d]->Status(offset, bytes));
    if (st.allocated) {
      st.eof = false;
      break;
    }
    bytes = st.bytes;
  }
  if (offset + st.bytes == eof) st.eof = true;
  return st;
}

}  // namespace uq::tools
