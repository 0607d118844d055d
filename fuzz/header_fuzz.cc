// Fuzz entry for the header path: DecodeHeader (fixed fields, extensions,
// validation), HeaderReadSize, the snapshot table, the bitmap directory and
// the table-entry codecs.
// Properties checked beyond "no crash / no sanitizer report":
//  - a header that decodes re-encodes, and the re-encoded cluster decodes to
//    the same values (nothing lost or invented by EncodeHeader);
//  - a snapshot table that decodes re-encodes byte-identically up to padding.
// Shared by the libFuzzer binary and the corpus replay test.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <vector>

#include "format/bitmaps.h"
#include "format/endian.h"
#include "format/header.h"
#include "format/snapshot.h"
#include "format/tables.h"

namespace {

using uq::format::Header;

void Check(bool ok) {
  if (!ok) std::abort();
}

void CheckSameHeader(const Header& a, const Header& b) {
  Check(a.version == b.version);
  Check(a.cluster_bits == b.cluster_bits);
  Check(a.size_bytes == b.size_bytes);
  Check(a.l1_size == b.l1_size);
  Check(a.l1_table_offset == b.l1_table_offset);
  Check(a.refcount_table_offset == b.refcount_table_offset);
  Check(a.refcount_table_clusters == b.refcount_table_clusters);
  Check(a.nb_snapshots == b.nb_snapshots);
  Check(a.snapshots_offset == b.snapshots_offset);
  Check(a.incompatible_features == b.incompatible_features);
  Check(a.compatible_features == b.compatible_features);
  Check(a.autoclear_features == b.autoclear_features);
  Check(a.refcount_order == b.refcount_order);
  Check(a.compression_type == b.compression_type);
  Check(a.backing_file == b.backing_file);
  Check(a.backing_format == b.backing_format);
  Check(a.data_file == b.data_file);
  Check(a.opaque_extensions.size() == b.opaque_extensions.size());
  for (size_t i = 0; i < a.opaque_extensions.size(); ++i) {
    Check(a.opaque_extensions[i].type == b.opaque_extensions[i].type);
    Check(a.opaque_extensions[i].data == b.opaque_extensions[i].data);
  }
}

void FuzzSnapshots(std::span<const std::byte> table, const Header& h) {
  auto snaps = uq::format::DecodeSnapshotTable(table, h.nb_snapshots, h.cluster_bits);
  if (!snaps.ok()) return;
  std::vector<std::byte> out(uq::format::SnapshotTableSize(*snaps));
  uq::format::EncodeSnapshotTable(*snaps, out);
  auto again = uq::format::DecodeSnapshotTable(out, h.nb_snapshots, h.cluster_bits);
  Check(again.ok());
  Check(again->size() == snaps->size());
  for (size_t i = 0; i < snaps->size(); ++i) {
    Check((*again)[i].id == (*snaps)[i].id);
    Check((*again)[i].name == (*snaps)[i].name);
    Check((*again)[i].extra_data == (*snaps)[i].extra_data);
    Check((*again)[i].l1_table_offset == (*snaps)[i].l1_table_offset);
  }
}

void FuzzEntries(std::span<const std::byte> data, uint32_t cluster_bits) {
  // A few words of the input through every entry codec.
  for (size_t off = 0; off + 16 <= data.size() && off < 256; off += 16) {
    const uint64_t w0 = uq::format::LoadBE64(data.data() + off);
    const uint64_t w1 = uq::format::LoadBE64(data.data() + off + 8);
    (void)uq::format::DecodeL1Entry(w0);
    (void)uq::format::DecodeRefcountTableEntry(w0);
    for (bool extended : {false, true}) {
      auto e = uq::format::DecodeL2Entry(w0, w1, cluster_bits, extended, w1 & 1);
      if (e.ok()) {
        const auto enc = uq::format::EncodeL2Entry(*e, cluster_bits, extended);
        auto back =
            uq::format::DecodeL2Entry(enc.entry, enc.bitmap, cluster_bits, extended, w1 & 1);
        Check(back.ok());
        Check(back->type == e->type);
      }
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* raw, size_t size) {
  std::span<const std::byte> data(reinterpret_cast<const std::byte*>(raw), size);
  (void)uq::format::HeaderReadSize(data);
  // Once as the whole file, once with the end-of-file checks off (corpus
  // files are truncated to the first cluster, their tables lie beyond).
  for (uint64_t file_size : {uint64_t{size}, uint64_t{0}}) {
    auto h = uq::format::DecodeHeader(data, {.file_size_bytes = file_size});
    if (!h.ok()) continue;
    FuzzEntries(data, h->cluster_bits);
    std::vector<std::byte> cluster(h->cluster_size());
    if (uq::format::EncodeHeader(*h, cluster).ok()) {
      auto again = uq::format::DecodeHeader(cluster, {.file_size_bytes = file_size});
      Check(again.ok());
      CheckSameHeader(*h, *again);
    }
    auto bitmaps = uq::format::FindBitmapsExtension(*h);
    if (bitmaps.ok() && bitmaps->has_value() && (*bitmaps)->directory_offset < size) {
      (void)uq::format::DecodeBitmapDirectory(data.subspan((*bitmaps)->directory_offset), **bitmaps,
                                              h->cluster_bits);
    }
    if (h->nb_snapshots > 0 && h->snapshots_offset < size) {
      FuzzSnapshots(data.subspan(h->snapshots_offset), *h);
    }
  }
  return 0;
}
