#include "src/engine/meta_file.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "format/endian.h"

namespace uq::engine {

MetaFile::MetaFile(std::unique_ptr<io::BlockFile> file, std::unique_ptr<io::BlockFile> data_file,
                   const format::Header& header, bool read_only)
    : file_(std::move(file)),
      data_file_(std::move(data_file)),
      header_(header),
      read_only_(read_only),
      data_file_raw_(data_file_ != nullptr &&
                     (header.autoclear_features & format::kAutoclearDataFileRaw) != 0),
      corrupt_((header.incompatible_features & format::kIncompatCorrupt) != 0),
      overlaps_(header.cluster_bits) {}

std::string MetaFile::failure() const {
  std::lock_guard<std::mutex> g(failure_mu_);
  return failure_;
}

int MetaFile::Fail(int error, const char* what) {
  if (error >= 0) return error;
  std::lock_guard<std::mutex> g(failure_mu_);
  int expected = 0;
  if (failed_errno_.compare_exchange_strong(expected, -error, std::memory_order_acq_rel)) {
    failure_ = absl::StrCat(what, ": ", std::strerror(-error));
    std::fprintf(stderr,
                 "qcow2: %s; the image is failed: later writes and flushes return EIO, and the "
                 "next writable open repairs it\n",
                 failure_.c_str());
  }
  return error;
}

Task<int> MetaFile::Sync() {
  if (failed()) co_return -EIO;
  if (data_file_) {
    int r = co_await data_file_->Flush();
    if (r < 0) co_return Fail(r, "fdatasync of the data file");
  }
  int r = co_await file_->Flush();
  co_return Fail(r, "fdatasync of the image file");
}

Task<int> MetaFile::WriteField(uint64_t offset_bytes, std::span<const std::byte> bytes,
                               const char* what) {
  if (failed()) co_return -EIO;
  int64_t w = co_await file_->Write(offset_bytes, bytes);
  co_return w < 0 ? Fail(static_cast<int>(w), what) : 0;
}

Task<int> MetaFile::WriteWord(uint64_t offset_bytes, uint64_t value) {
  std::byte buf[8];
  format::StoreBE64(buf, value);
  co_return co_await WriteField(offset_bytes, buf, "header write");
}

Task<int> MetaFile::SetIncompatibleFeature(uint64_t bit, bool on) {
  co_await header_lock_.Lock();
  cache::MutexGuard guard(&header_lock_);
  if (on) {
    header_.incompatible_features |= bit;
  } else {
    header_.incompatible_features &= ~bit;
  }
  if (header_.version < 3) co_return 0;
  co_return co_await WriteWord(format::kHeaderIncompatibleFeaturesAt,
                               header_.incompatible_features);
}

Task<int> MetaFile::SetAutoclearFeatures(uint64_t bits) {
  co_await header_lock_.Lock();
  cache::MutexGuard guard(&header_lock_);
  header_.autoclear_features = bits;
  if (header_.version < 3) co_return 0;
  co_return co_await WriteWord(format::kHeaderAutoclearFeaturesAt, bits);
}

// Every table pointer is an adjacent 8-byte offset and 4-byte count: one
// write, inside one sector (the L1 pointer as QEMU's qcow2_grow_l1_table
// writes it). Memory follows the write as soon as it is issued: a failed
// write may still have landed, and the image fails then anyway.
Task<int> MetaFile::SetTablePointer(uint64_t at, uint64_t* offset_field, uint64_t offset_bytes,
                                    uint32_t* count_field, uint32_t count, bool count_first,
                                    const char* what) {
  co_await header_lock_.Lock();
  cache::MutexGuard guard(&header_lock_);
  *offset_field = offset_bytes;
  *count_field = count;
  std::byte buf[12];
  format::StoreBE64(buf + (count_first ? 4 : 0), offset_bytes);
  format::StoreBE32(buf + (count_first ? 0 : 8), count);
  co_return co_await WriteField(at, buf, what);
}

Task<int> MetaFile::SetRefcountTable(uint64_t offset_bytes, uint32_t clusters) {
  return SetTablePointer(format::kHeaderRefcountTableOffsetAt, &header_.refcount_table_offset,
                         offset_bytes, &header_.refcount_table_clusters, clusters, false,
                         "header write (refcount table)");
}

Task<int> MetaFile::SetL1Table(uint64_t offset_bytes, uint32_t entries) {
  return SetTablePointer(format::kHeaderL1SizeAt, &header_.l1_table_offset, offset_bytes,
                         &header_.l1_size, entries, true, "header write (L1 table)");
}

Task<int> MetaFile::SetSnapshotTable(uint64_t offset_bytes, uint32_t count) {
  return SetTablePointer(format::kHeaderNbSnapshotsAt, &header_.snapshots_offset, offset_bytes,
                         &header_.nb_snapshots, count, true, "header write (snapshot table)");
}

void MetaFile::AdoptTables(const format::Header& h) {
  header_.size_bytes = h.size_bytes;
  header_.incompatible_features = h.incompatible_features;
  header_.l1_size = h.l1_size;
  header_.l1_table_offset = h.l1_table_offset;
  header_.refcount_table_offset = h.refcount_table_offset;
  header_.refcount_table_clusters = h.refcount_table_clusters;
  header_.nb_snapshots = h.nb_snapshots;
  header_.snapshots_offset = h.snapshots_offset;
}

Task<int> MetaFile::SetDiskSize(uint64_t size_bytes) {
  co_await header_lock_.Lock();
  cache::MutexGuard guard(&header_lock_);
  int r = co_await WriteWord(format::kHeaderSizeAt, size_bytes);
  if (r < 0) co_return r;
  header_.size_bytes = size_bytes;
  co_return 0;
}

Task<int> MetaFile::RefuseOverlap(Metadata kind, uint64_t offset_bytes, uint64_t length_bytes) {
  co_return co_await MarkCorrupt(absl::StrCat("preventing a write of ", length_bytes,
                                              " bytes at host offset ", offset_bytes,
                                              ": it overlaps the ", MetadataName(kind)));
}

Task<int> MetaFile::CheckWrite(uint64_t offset_bytes, uint64_t length_bytes, uint32_t ignore) {
  const std::optional<Metadata> hit = Overlap(offset_bytes, length_bytes, ignore);
  if (!hit) co_return 0;
  co_return co_await RefuseOverlap(*hit, offset_bytes, length_bytes);
}

Task<int> MetaFile::MarkCorrupt(std::string what) {
  // Said once per image, as QEMU signals corruption once: a salvaging
  // reader would otherwise repeat it for every bad cluster it reads.
  if (!corrupt_.exchange(true, std::memory_order_acq_rel)) {
    std::fprintf(stderr, "qcow2: corrupt image: %s\n", what.c_str());
    if (!read_only_) {
      int r = co_await SetIncompatibleFeature(format::kIncompatCorrupt, true);
      if (r >= 0) r = co_await Sync();
      if (r < 0) std::fprintf(stderr, "qcow2: could not set the corrupt bit: %d\n", r);
    }
  }
  co_return -EIO;
}

}  // namespace uq::engine
