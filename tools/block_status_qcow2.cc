// Block status of one qcow2 image, as QEMU 7.2's qcow2_co_block_status and
// qcow2_get_host_offset answer it (subcluster types, runs of one type, one
// L2 table at most per answer), plus the holes of a preallocated image.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "format/endian.h"
#include "format/status_macros.h"
#include "format/tables.h"
#include "tools/block_status_internal.h"

namespace uq::tools {
namespace {

constexpr uint64_t kSectorBytes = 512;

enum class SubType {
  kNormal,
  kCompressed,
  kZeroPlain,
  kZeroAlloc,
  kUnallocatedPlain,
  kUnallocatedAlloc,
  kInvalid,
};

absl::Status Corrupt(std::string what) {
  return absl::DataLossError(absl::StrCat("Input/output error (", what, ")"));
}

}  // namespace

Qcow2Layer::Qcow2Layer(PosixFile file, std::string path, format::Header header,
                       std::vector<uint64_t> l1)
    : file_(std::move(file)), path_(std::move(path)), h_(std::move(header)), l1_(std::move(l1)) {
  size_bytes_ = h_.size_bytes / kSectorBytes * kSectorBytes;
  sc_bits_ = h_.cluster_bits - (h_.extended_l2() ? 5 : 0);
}

void Qcow2Layer::SetDataFile(PosixFile file, std::string name) {
  data_file_ = std::move(file);
  data_name_ = std::move(name);
}

namespace {

// QEMU's qcow2_get_subcluster_type.
SubType TypeOf(const format::Header& h, uint64_t entry, uint64_t bitmap, unsigned sc) {
  const uint64_t offset = entry & format::kOffsetMask;
  if (entry & format::kOflagCompressed) return SubType::kCompressed;
  const bool data_file_zero_offset = h.has_data_file() && (entry & format::kOflagCopied);
  if (!h.extended_l2()) {
    if (entry & format::kOflagZero) return offset ? SubType::kZeroAlloc : SubType::kZeroPlain;
    return offset || data_file_zero_offset ? SubType::kNormal : SubType::kUnallocatedPlain;
  }
  const uint64_t alloc = uint64_t{1} << sc;
  const uint64_t zero = uint64_t{1} << (32 + sc);
  if (offset || data_file_zero_offset) {
    if ((bitmap >> 32) & bitmap) return SubType::kInvalid;
    if (bitmap & zero) return SubType::kZeroAlloc;
    return (bitmap & alloc) ? SubType::kNormal : SubType::kUnallocatedAlloc;
  }
  if (bitmap & 0xffffffffull) return SubType::kInvalid;
  return (bitmap & zero) ? SubType::kZeroPlain : SubType::kUnallocatedPlain;
}

// QEMU's qcow2_get_subcluster_range_type: how many subclusters from `from`
// share its type (to the end of the cluster without subclusters).
int RangeOf(const format::Header& h, uint64_t entry, uint64_t bitmap, unsigned from,
            unsigned per_cluster, SubType* type) {
  *type = TypeOf(h, entry, bitmap, from);
  if (*type == SubType::kInvalid) return -1;
  if (!h.extended_l2() || *type == SubType::kCompressed)
    return static_cast<int>(per_cluster - from);
  const uint32_t below = from == 0 ? 0 : static_cast<uint32_t>((uint64_t{1} << from) - 1);
  const uint32_t alloc = static_cast<uint32_t>(bitmap);
  const uint32_t zero = static_cast<uint32_t>(bitmap >> 32);
  switch (*type) {
    case SubType::kNormal:
      return std::countr_one(alloc | below) - static_cast<int>(from);
    case SubType::kZeroPlain:
    case SubType::kZeroAlloc:
      return std::countr_one(zero | below) - static_cast<int>(from);
    default:
      return std::countr_zero((zero | alloc) & ~below) - static_cast<int>(from);
  }
}

}  // namespace

absl::StatusOr<const std::vector<std::byte>*> Qcow2Layer::LoadL2(uint64_t l2_offset) {
  if (l2_offset == cached_l2_offset_) return &l2_;
  if (l2_offset >= file_size()) {
    return Corrupt(absl::StrFormat("L2 table offset %#x is past the end of the file", l2_offset));
  }
  UQ_ASSIGN_OR_RETURN(l2_, file_.ReadAt(l2_offset, h_.cluster_size()));
  l2_.resize(h_.cluster_size());  // zeros past the end of the file
  cached_l2_offset_ = l2_offset;
  return &l2_;
}

uint64_t Qcow2Layer::file_size() const {
  absl::StatusOr<uint64_t> s = file_.Size();
  return s.ok() ? *s : 0;
}

absl::StatusOr<Qcow2Layer::HostRun> Qcow2Layer::HostOffset(uint64_t offset, uint64_t bytes) {
  const uint64_t cs = h_.cluster_size();
  const uint64_t entries = h_.l2_entries_per_table();
  const unsigned per_cluster = h_.extended_l2() ? 32 : 1;
  const uint64_t in_cluster = offset & (cs - 1);
  const uint64_t l2_index = (offset >> h_.cluster_bits) & (entries - 1);
  uint64_t needed = std::min<uint64_t>(bytes, INT32_MAX) + in_cluster;
  uint64_t available = (entries - l2_index) << h_.cluster_bits;
  needed = std::min(needed, available);
  HostRun run;
  const uint64_t l1_index = offset >> (h_.cluster_bits + std::countr_zero(entries));
  const uint64_t l2_offset = l1_index < l1_.size() ? (l1_[l1_index] & format::kOffsetMask) : 0;
  if (l2_offset != 0) {
    if (l2_offset & (cs - 1)) {
      return Corrupt(
          absl::StrFormat("L2 table offset %#x unaligned (L1 index: %#x)", l2_offset, l1_index));
    }
    UQ_ASSIGN_OR_RETURN(const std::vector<std::byte>* l2, LoadL2(l2_offset));
    const uint64_t entry_bytes = h_.l2_entry_bytes();
    auto entry_at = [&](uint64_t i) { return format::LoadBE64(&(*l2)[i * entry_bytes]); };
    auto bitmap_at = [&](uint64_t i) {
      return h_.extended_l2() ? format::LoadBE64(&(*l2)[i * entry_bytes + 8]) : 0;
    };
    const unsigned sc_index = static_cast<unsigned>(in_cluster >> sc_bits_);
    const uint64_t first = entry_at(l2_index);
    const uint64_t clusters = (needed + cs - 1) / cs;
    SubType type = SubType::kUnallocatedPlain;
    uint64_t count = 0;
    uint64_t expected = first & format::kOffsetMask;
    for (uint64_t i = 0; i < clusters; ++i) {
      const unsigned from = i == 0 ? sc_index : 0;
      SubType t;
      const int n =
          RangeOf(h_, entry_at(l2_index + i), bitmap_at(l2_index + i), from, per_cluster, &t);
      if (n < 0) {
        return Corrupt(
            absl::StrFormat("Invalid cluster entry found (L2 offset: %#x, L2 index: %#x)",
                            l2_offset, l2_index + i));
      }
      if (i == 0) {
        type = t;
        if (t == SubType::kCompressed) {
          count = static_cast<uint64_t>(n);
          break;
        }
      } else if (t != type) {
        break;
      } else if (t == SubType::kNormal || t == SubType::kZeroAlloc ||
                 t == SubType::kUnallocatedAlloc) {
        expected += cs;
        if (expected != (entry_at(l2_index + i) & format::kOffsetMask)) break;
      }
      count += static_cast<uint64_t>(n);
      if (from + static_cast<unsigned>(n) < per_cluster) break;
    }
    if (h_.version < 3 && (type == SubType::kZeroPlain || type == SubType::kZeroAlloc)) {
      return Corrupt("zero cluster entry in a version 2 image");
    }
    if (type == SubType::kCompressed && h_.has_data_file()) {
      return Corrupt("compressed cluster entry in an image with an external data file");
    }
    if (type == SubType::kNormal || type == SubType::kZeroAlloc ||
        type == SubType::kUnallocatedAlloc) {
      const uint64_t host_cluster = first & format::kOffsetMask;
      if (host_cluster & (cs - 1)) {
        return Corrupt(absl::StrFormat("cluster allocation offset %#x unaligned", host_cluster));
      }
      run.host_offset = host_cluster + in_cluster;
      run.has_host = true;
      if (h_.has_data_file() && run.host_offset != offset) {
        return Corrupt("external data file host offset does not match the guest offset");
      }
    }
    run.data = type == SubType::kNormal || type == SubType::kCompressed;
    run.zero = type == SubType::kZeroPlain || type == SubType::kZeroAlloc;
    available = (count + sc_index) << sc_bits_;
  }
  run.bytes = std::min(available, needed) - in_cluster;
  return run;
}

// QEMU's qcow2_detect_metadata_preallocation: more clusters have a refcount
// than the file has blocks allocated (a refcount that cannot be read counts
// as "not preallocated", as QEMU ignores the error).
bool Qcow2Layer::DetectPreallocation() {
  const uint64_t cs = h_.cluster_size();
  absl::StatusOr<uint64_t> allocated = file_.AllocatedBytes();
  if (!allocated.ok()) return false;
  const uint64_t real_clusters = *allocated / cs;
  const uint64_t threshold = std::max(real_clusters * 10 / 9, real_clusters + 2);
  const uint64_t end = (file_size() + cs - 1) / cs;
  absl::StatusOr<std::vector<std::byte>> table =
      file_.ReadAt(h_.refcount_table_offset, uint64_t{h_.refcount_table_clusters} * cs);
  if (!table.ok()) return false;
  const uint32_t block_bits = h_.cluster_bits + 3 - h_.refcount_order;
  uint64_t in_use = 0;
  std::vector<std::byte> block;
  uint64_t loaded = UINT64_MAX;
  for (uint64_t c = 0; c < end && in_use <= threshold; ++c) {
    const uint64_t index = c >> block_bits;
    if (index * 8 + 8 > table->size()) break;
    const uint64_t block_offset = format::LoadBE64(&(*table)[index * 8]) & ~uint64_t{0x1ff};
    if (block_offset == 0) continue;
    if (block_offset & (cs - 1)) return false;
    if (index != loaded) {
      absl::StatusOr<std::vector<std::byte>> b = file_.ReadAt(block_offset, cs);
      if (!b.ok()) return false;
      block = *std::move(b);
      block.resize(cs);
      loaded = index;
    }
    in_use +=
        format::GetRefcount(block, h_.refcount_order, c & ((uint64_t{1} << block_bits) - 1)) != 0;
  }
  return in_use > threshold;
}

absl::StatusOr<BlockStatus> Qcow2Layer::Status(uint64_t offset, uint64_t bytes) {
  if (!preallocated_.has_value()) preallocated_ = DetectPreallocation();
  bytes = std::min(bytes, size_bytes_ - offset);
  UQ_ASSIGN_OR_RETURN(HostRun run, HostOffset(offset, bytes));
  BlockStatus st;
  st.bytes = run.bytes;
  st.data = run.data;
  st.zero = run.zero;
  if (run.has_host) {
    st.offset_valid = true;
    st.host_offset = run.host_offset;
    st.file = data_file_ ? data_name_ : path_;
  }
  st.recurse = *preallocated_ && st.data && st.offset_valid;
  if (st.recurse && !st.zero) {
    const PosixFile& f = data_file_ ? *data_file_ : file_;
    UQ_ASSIGN_OR_RETURN(HoleRun file_run, FindHoles(f, st.host_offset, st.bytes));
    if (file_run.past_eof && (file_run.bytes == 0 || file_run.hole)) {
      st.zero = true;  // reading past the end of the file gives zeros
    } else {
      st.bytes = file_run.bytes;
      st.zero = file_run.hole;
    }
  }
  FinishStatus(st, offset);
  return st;
}

}  // namespace uq::tools
