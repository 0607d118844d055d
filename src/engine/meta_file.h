// MetaFile: the files an open qcow2 image writes (the image file and its
// external data file) and the header that lives in the image file's first
// cluster; plus the two things every metadata change goes through: the
// metadata lock and the change generation.
//
// Header updates write only the field that changes, as QEMU does: the 8-byte
// incompatible (dirty, corrupt) or autoclear feature word, or the 12 bytes of
// refcount table offset and size. The first cluster is never re-encoded and
// rewritten, so a torn write cannot lose the backing file name or an
// extension.
//
// The metadata lock serialises allocation, refcount updates, L2 table
// creation, L1 changes and the flush sequence (RefcountStore, L2Map and
// WriteOrder say which of their methods require it). It is never held across
// guest data I/O. The change generation counts in-memory metadata changes (L2
// entries, refcounts, L1 entries) so that metadata write-through can tell
// whether a request changed (or relied on) anything not yet written.
//
// Overlap checks: every write the engine issues to the image file is first
// looked up in overlaps() (OverlapMap, QEMU's overlap-check=cached); one that
// would land on metadata is refused with RefuseOverlap instead.
//
// Ownership: owns both files, the in-memory header and the overlap map.
// Thread-safety: thread-safe; the queue threads of one image share it. The
// files dispatch each operation to the calling thread's own descriptor
// (io::PerLoopFile when several queues serve the image). Header field
// updates are serialised by a lock of their own (taken inside the metadata
// lock when both are held, never the other way round); the fields a request
// path reads (version, compression type, names) never change after Open.
#ifndef UQ_SRC_ENGINE_META_FILE_H_
#define UQ_SRC_ENGINE_META_FILE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>

#include "cache/wait_list.h"
#include "format/header.h"
#include "src/engine/overlap_map.h"
#include "src/io/block_file.h"
#include "src/io/task.h"

namespace uq::engine {

class MetaFile {
 public:
  // `data_file` may be null (no external data file).
  MetaFile(std::unique_ptr<io::BlockFile> file, std::unique_ptr<io::BlockFile> data_file,
           const format::Header& header, bool read_only);
  MetaFile(const MetaFile&) = delete;
  MetaFile& operator=(const MetaFile&) = delete;

  io::BlockFile& file() { return *file_; }
  // Where guest data clusters live: the external data file, or the image.
  io::BlockFile& data_file() { return data_file_ ? *data_file_ : *file_; }
  bool external_data() const { return data_file_ != nullptr; }
  // The external data file holds the guest disk as raw bytes (autoclear bit).
  bool data_file_raw() const { return data_file_raw_; }
  const format::Header& header() const { return header_; }
  uint32_t version() const { return header_.version; }
  bool read_only() const { return read_only_; }
  bool corrupt() const { return corrupt_.load(std::memory_order_acquire); }

  // Fail-stop. After a failed fsync/fdatasync, or a failed metadata write
  // whose outcome on disk is unknown, the page cache and the file may
  // disagree about what is durable, and in-memory metadata about what is on
  // disk: the image is failed. Every later write, flush and Sync returns
  // -EIO, nothing retries the lost writes, Close leaves the image as a crash
  // would (the next writable open repairs it), and reads keep working.
  // Guest data write errors only fail their request.
  bool failed() const { return failed_errno_.load(std::memory_order_acquire) != 0; }
  // Why the image failed ("fsync: Input/output error"), or "".
  std::string failure() const;
  // Marks the image failed by `error` (-errno) during `what`, the first time
  // (reported once on stderr). Returns `error`, so a metadata write site can
  // `co_return meta.Fail(w, "...")`.
  int Fail(int error, const char* what);

  // fdatasync of the data file (if any), then of the image file. -EIO
  // without any I/O once the image failed; a failure fails the image.
  Task<int> Sync();

  // Sets or clears incompatible feature `bit` in memory and on disk (no
  // fsync). A version 2 header has no feature words: memory only, returns 0.
  Task<int> SetIncompatibleFeature(uint64_t bit, bool on);
  // Replaces the autoclear feature word in memory and on disk (no fsync).
  Task<int> SetAutoclearFeatures(uint64_t bits);
  // Points the header at a new refcount table (no fsync).
  Task<int> SetRefcountTable(uint64_t offset_bytes, uint32_t clusters);
  // Points the header at a new active L1 table (no fsync). Resize only.
  Task<int> SetL1Table(uint64_t offset_bytes, uint32_t entries);
  // Writes the guest disk size (no fsync). Resize only.
  Task<int> SetDiskSize(uint64_t size_bytes);
  // Points the header at a new snapshot table of `count` entries: both fields
  // in one write, so a crash leaves the old table or the new one (no fsync).
  Task<int> SetSnapshotTable(uint64_t offset_bytes, uint32_t count);
  // Takes the disk size, the incompatible features and the L1, refcount and
  // snapshot table fields of `h`, which another writer of the file has already made durable
  // (SwitchTrees); memory only.
  // REQUIRES: no request in flight.
  void AdoptTables(const format::Header& h);

  // Reports `what` on stderr ("qcow2: corrupt image: ..."), and the first time
  // sets the corrupt bit durably (writable images). Returns -EIO, so a request
  // path can `co_return co_await meta.MarkCorrupt(...)`.
  Task<int> MarkCorrupt(std::string what);

  // Where metadata lives in the image file (built by Open for writable
  // images; a read-only image writes nothing and leaves it empty).
  OverlapMap& overlaps() { return overlaps_; }
  // The metadata (other than the kinds in `ignore`) a write of [offset,
  // + length) to the image file would land on, or nullopt. No I/O, no
  // allocation: the request paths call it before every write.
  std::optional<Metadata> Overlap(uint64_t offset_bytes, uint64_t length_bytes,
                                  uint32_t ignore = 0) const {
    return overlaps_.Find(offset_bytes, length_bytes, ignore);
  }
  // The same for guest data at a host offset: an external data file holds
  // no metadata (QEMU's qcow2_pre_write_overlap_check with data_file).
  std::optional<Metadata> DataOverlap(uint64_t offset_bytes, uint64_t length_bytes) const {
    if (external_data()) return std::nullopt;
    return overlaps_.Find(offset_bytes, length_bytes);
  }
  // Refuses a write that would land on `kind`: marks the image corrupt (a
  // table entry points at metadata) and returns -EIO; nothing is written.
  Task<int> RefuseOverlap(Metadata kind, uint64_t offset_bytes, uint64_t length_bytes);
  // Overlap and RefuseOverlap in one: 0 if the image-file write may go ahead,
  // else -EIO. For the metadata write sites (a coroutine per call).
  Task<int> CheckWrite(uint64_t offset_bytes, uint64_t length_bytes, uint32_t ignore = 0);

  cache::AsyncMutex& lock() { return lock_; }
  uint64_t generation() const { return generation_.load(std::memory_order_acquire); }
  void NoteChange() { generation_.fetch_add(1, std::memory_order_acq_rel); }

 private:
  // Writes header bytes: -EIO without I/O once failed; a failure fails the
  // image (the field's state on disk is unknown). REQUIRES: header_lock_.
  Task<int> WriteField(uint64_t offset_bytes, std::span<const std::byte> bytes, const char* what);
  Task<int> WriteWord(uint64_t offset_bytes, uint64_t value);
  // Sets a table pointer, the header fields `offset_field` and `count_field`,
  // in memory and with one write at `at`: 8-byte offset and 4-byte count, the
  // count first when `count_first` (l1_size, l1_table_offset). Takes
  // header_lock_.
  Task<int> SetTablePointer(uint64_t at, uint64_t* offset_field, uint64_t offset_bytes,
                            uint32_t* count_field, uint32_t count, bool count_first,
                            const char* what);

  std::unique_ptr<io::BlockFile> file_;
  std::unique_ptr<io::BlockFile> data_file_;
  format::Header header_;
  bool read_only_;
  bool data_file_raw_;
  std::atomic<bool> corrupt_;
  std::atomic<int> failed_errno_{0};  // positive errno of the first failure
  mutable std::mutex failure_mu_;
  std::string failure_;  // guarded by failure_mu_
  cache::AsyncMutex lock_;
  cache::AsyncMutex header_lock_;  // header field updates
  std::atomic<uint64_t> generation_{0};
  OverlapMap overlaps_;
};

}  // namespace uq::engine

#endif  // UQ_SRC_ENGINE_META_FILE_H_
