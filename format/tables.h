// qcow2 table entries (docs/interop/qcow2.txt, "Cluster mapping" and
// "Host cluster management"): L1, L2 (standard and extended), compressed
// cluster descriptors and refcount entries. Pure value codecs, no I/O.
//
// Decoders that can meet reserved bits return absl::StatusOr; the message
// names the entry kind, the raw value and the offending bits so the engine
// can report "corrupt image" with a useful line.
#ifndef UQ_FORMAT_TABLES_H_
#define UQ_FORMAT_TABLES_H_

#include <cstddef>
#include <cstdint>
#include <span>

#include "absl/status/statusor.h"

namespace uq::format {

inline constexpr uint64_t kOflagCopied = 1ull << 63;
inline constexpr uint64_t kOflagCompressed = 1ull << 62;
inline constexpr uint64_t kOflagZero = 1ull << 0;
// Bits 9..55: host cluster offset in L1/L2/refcount-table entries.
inline constexpr uint64_t kOffsetMask = 0x00fffffffffffe00ull;

// L1 entry: bit 63 COPIED, bits 9..55 L2 table offset, others reserved.
struct L1Entry {
  uint64_t l2_offset = 0;  // 0 = L2 table unallocated
  bool copied = false;
};
absl::StatusOr<L1Entry> DecodeL1Entry(uint64_t raw);
uint64_t EncodeL1Entry(const L1Entry& e);

enum class ClusterType {
  kUnallocated,  // offset 0, no zero flag: read from backing (or zero)
  kZeroPlain,    // zero flag, no host cluster
  kZeroAlloc,    // zero flag with a preallocated host cluster
  kNormal,       // data at host_offset
  kCompressed,   // compressed descriptor
};

// One L2 entry, standard (64 bit) or extended (128 bit, with the subcluster
// bitmap word).
struct L2Entry {
  ClusterType type = ClusterType::kUnallocated;
  bool copied = false;
  // kNormal / kZeroAlloc: host cluster offset (cluster aligned).
  uint64_t host_offset = 0;
  // kCompressed: byte offset of the compressed data and its byte length as
  // covered by the descriptor (whole 512-byte sectors, see spec).
  uint64_t compressed_offset = 0;
  uint64_t compressed_length = 0;
  // Extended L2 only: bit i of alloc_bitmap = subcluster i allocated,
  // bit i of zero_bitmap = subcluster i reads as zero. (Bits 0..31 / 32..63 of
  // the second word.)
  uint32_t alloc_bitmap = 0;
  uint32_t zero_bitmap = 0;
};

// `raw` is the first word; `bitmap` the second word (extended L2 only, else 0).
// cluster_bits decides the compressed-descriptor split (x = 62 - (cluster_bits - 8)).
// With an external data file, host offset 0 is a valid data cluster: the
// spec (and QEMU) read offset 0 with COPIED set as kNormal at offset 0 there,
// and as kUnallocated otherwise.
absl::StatusOr<L2Entry> DecodeL2Entry(uint64_t raw, uint64_t bitmap, uint32_t cluster_bits,
                                      bool extended_l2, bool external_data_file = false);
// Returns {first word, bitmap word}.
struct EncodedL2 {
  uint64_t entry;
  uint64_t bitmap;
};
EncodedL2 EncodeL2Entry(const L2Entry& e, uint32_t cluster_bits, bool extended_l2);

// Compressed-cluster descriptor: host offset in bits 0..x-1, number of
// additional 512-byte sectors in bits x..61, x = 62 - (cluster_bits - 8).
struct CompressedDescriptor {
  uint64_t host_offset = 0;    // byte offset, need not be aligned
  uint64_t extra_sectors = 0;  // additional 512-byte sectors after the first
};
uint64_t EncodeCompressedDescriptor(const CompressedDescriptor& d, uint32_t cluster_bits);
CompressedDescriptor DecodeCompressedDescriptor(uint64_t raw, uint32_t cluster_bits);
// Bytes to read for a compressed cluster (from host_offset, may cross a
// cluster boundary): (extra_sectors + 1) * 512 - (host_offset & 511).
uint64_t CompressedReadLength(const CompressedDescriptor& d);

// Refcount table entry: bits 9..63 refcount block offset, 0..8 reserved.
absl::StatusOr<uint64_t> DecodeRefcountTableEntry(uint64_t raw);

// Refcount block entries of width 1 << refcount_order bits (order 0..6).
// Widths below 8 bits pack LSB-first inside each byte (as QEMU does); widths
// of 8 and more are big-endian.
uint64_t GetRefcount(std::span<const std::byte> block, uint32_t refcount_order, uint64_t index);
void SetRefcount(std::span<std::byte> block, uint32_t refcount_order, uint64_t index,
                 uint64_t value);
inline uint64_t MaxRefcount(uint32_t refcount_order) {
  return refcount_order == 6 ? ~0ull : (1ull << (1u << refcount_order)) - 1;
}

}  // namespace uq::format

#endif  // UQ_FORMAT_TABLES_H_
