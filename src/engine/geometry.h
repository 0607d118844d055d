// Geometry: the sizes an open qcow2 image is cut into (clusters, L2 tables and
// their cache slices, subclusters, refcount blocks), derived once from the
// header; and GuestAddress, the one place where a guest offset is turned into
// L1 index, L2 index, slice and byte within the slice.
//
// Value types, immutable after Open: safe to share between threads.
#ifndef UQ_SRC_ENGINE_GEOMETRY_H_
#define UQ_SRC_ENGINE_GEOMETRY_H_

#include <algorithm>
#include <bit>
#include <cstdint>

#include "format/header.h"

namespace uq::engine {

// Metadata caches work in slices of at most this many bytes (a whole cluster
// for small clusters), so a lookup reads 4 KiB, not a 2 MiB table.
inline constexpr uint64_t kMaxSliceBytes = 4096;

// Where one guest byte lives in the mapping.
struct GuestAddress {
  uint64_t offset_bytes = 0;      // the guest offset itself
  uint64_t cluster = 0;           // guest cluster index
  uint64_t in_cluster_bytes = 0;  // offset within the cluster
  uint64_t l1_index = 0;
  uint64_t l2_index = 0;            // entry within its L2 table
  uint64_t slice_offset_bytes = 0;  // offset of the entry's slice within the L2 table
  uint32_t byte_in_slice = 0;       // offset of the entry within that slice

  uint64_t cluster_offset_bytes() const { return offset_bytes - in_cluster_bytes; }
};

struct Geometry {
  uint32_t cluster_bits = 16;
  uint64_t cluster_bytes = 0;
  bool extended_l2 = false;
  uint32_t l2_bits = 0;           // log2(entries per L2 table)
  uint32_t l2_entry_bytes = 8;    // 16 with extended L2
  uint64_t subcluster_bytes = 0;  // cluster_bytes / 32 with extended L2, else cluster_bytes
  uint32_t slice_bytes = 0;       // L2 / refcount cache slice
  uint32_t refcount_order = 4;
  uint32_t refblock_bits = 0;        // log2(refcounts per refcount block)
  uint32_t refcount_slice_bits = 0;  // log2(refcounts per refcount cache slice)

  static Geometry FromHeader(const format::Header& h) {
    Geometry g;
    g.cluster_bits = h.cluster_bits;
    g.cluster_bytes = h.cluster_size();
    g.extended_l2 = h.extended_l2();
    g.l2_entry_bytes = h.l2_entry_bytes();
    g.l2_bits = h.cluster_bits - (g.extended_l2 ? 4 : 3);
    g.subcluster_bytes = g.extended_l2 ? g.cluster_bytes / 32 : g.cluster_bytes;
    g.slice_bytes = static_cast<uint32_t>(std::min(g.cluster_bytes, kMaxSliceBytes));
    g.refcount_order = h.refcount_order;
    g.refblock_bits = h.cluster_bits + 3 - h.refcount_order;
    g.refcount_slice_bits = std::countr_zero(g.slice_bytes) + 3 - h.refcount_order;
    return g;
  }

  GuestAddress Locate(uint64_t guest_offset_bytes) const {
    GuestAddress a;
    a.offset_bytes = guest_offset_bytes;
    a.cluster = guest_offset_bytes >> cluster_bits;
    a.in_cluster_bytes = guest_offset_bytes & (cluster_bytes - 1);
    a.l1_index = a.cluster >> l2_bits;
    a.l2_index = a.cluster & ((uint64_t{1} << l2_bits) - 1);
    const uint64_t entry_byte = a.l2_index * l2_entry_bytes;
    a.slice_offset_bytes = entry_byte / slice_bytes * slice_bytes;
    a.byte_in_slice = static_cast<uint32_t>(entry_byte % slice_bytes);
    return a;
  }

  // Bytes of guest disk one L2 table maps.
  uint64_t table_span_bytes() const { return cluster_bytes << l2_bits; }
  uint64_t ClusterIndex(uint64_t host_offset_bytes) const {
    return host_offset_bytes >> cluster_bits;
  }
  uint64_t ClusterOffset(uint64_t cluster_index) const { return cluster_index << cluster_bits; }
  bool ClusterAligned(uint64_t offset_bytes) const {
    return (offset_bytes & (cluster_bytes - 1)) == 0;
  }
  uint32_t Subcluster(uint64_t in_cluster_bytes) const {
    return static_cast<uint32_t>(in_cluster_bytes / subcluster_bytes);
  }
};

// Bits [first, end) of a 32-bit subcluster bitmap.
inline uint32_t SubclusterMask(uint32_t first, uint32_t end) {
  const uint64_t m = ((uint64_t{1} << end) - 1) & ~((uint64_t{1} << first) - 1);
  return static_cast<uint32_t>(m);
}

}  // namespace uq::engine

#endif  // UQ_SRC_ENGINE_GEOMETRY_H_
