#include "src/engine/qcow2_image.h"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

#include "absl/container/inlined_vector.h"
#include "absl/strings/str_cat.h"
#include "format/endian.h"
#include "format/snapshot.h"
#include "format/status_macros.h"
#include "src/engine/check.h"
#include "src/engine/codec.h"
#include "src/io/aligned_file.h"

namespace uq::engine {

using format::ClusterType;
using format::L2Entry;
using io::AlignedFile;

namespace {

constexpr uint64_t kMaxSliceBytes = 4096;
// Queued frees above this many clusters trigger an internal flush so freed
// space becomes reusable even if the guest never flushes.
constexpr uint64_t kFreeFlushThresholdClusters = 4096;
constexpr uint64_t kDefaultL2CacheBytes = 8ull << 20;
constexpr uint64_t kNone = ~0ull;
constexpr uint64_t kMaxL1Bytes = 32ull << 20;
constexpr uint64_t kMaxRefcountTableBytes = 8ull << 20;

using IovVec = absl::InlinedVector<iovec, 8>;

uint64_t IovLen(std::span<const iovec> iov) {
  uint64_t n = 0;
  for (const iovec& v : iov) n += v.iov_len;
  return n;
}

// Appends the pieces of `iov` covering bytes [begin, begin + len).
void SliceIov(std::span<const iovec> iov, uint64_t begin, uint64_t len, IovVec* out) {
  for (const iovec& v : iov) {
    if (len == 0) break;
    if (begin >= v.iov_len) {
      begin -= v.iov_len;
      continue;
    }
    uint64_t n = std::min<uint64_t>(v.iov_len - begin, len);
    out->push_back({static_cast<std::byte*>(v.iov_base) + begin, n});
    begin = 0;
    len -= n;
  }
}

void ZeroIov(std::span<const iovec> iov) {
  for (const iovec& v : iov) std::memset(v.iov_base, 0, v.iov_len);
}

void CopyToIov(std::span<const iovec> iov, const std::byte* src) {
  for (const iovec& v : iov) {
    std::memcpy(v.iov_base, src, v.iov_len);
    src += v.iov_len;
  }
}

uint32_t SubclusterMask(uint32_t first, uint32_t end) {
  uint64_t m = ((uint64_t{1} << end) - 1) & ~((uint64_t{1} << first) - 1);
  return static_cast<uint32_t>(m);
}

std::string ResolvePath(const std::string& image_path, const std::string& name) {
  if (name.empty() || name[0] == '/') return name;
  size_t slash = image_path.rfind('/');
  if (slash == std::string::npos) return name;
  return image_path.substr(0, slash + 1) + name;
}

// Unlocks a KeyedRwLock key at scope exit.
class ClusterLockGuard {
 public:
  ClusterLockGuard(cache::KeyedRwLock* locks, uint64_t key, bool exclusive)
      : locks_(locks), key_(key), exclusive_(exclusive) {}
  ClusterLockGuard(const ClusterLockGuard&) = delete;
  ClusterLockGuard& operator=(const ClusterLockGuard&) = delete;
  ~ClusterLockGuard() { Release(); }
  void Release() {
    if (locks_ != nullptr) std::exchange(locks_, nullptr)->Unlock(key_, exclusive_);
  }

 private:
  cache::KeyedRwLock* locks_;
  uint64_t key_;
  bool exclusive_;
};

}  // namespace

// Cluster-sized scratch buffers (COW, decompression), reused across requests
// so the data path does not allocate once warm. Grows to the peak number of
// concurrent users (bounded by the queue depth).
class Qcow2Image::BufferPool {
 public:
  // Buffers are 4 KiB aligned so COW and decompression I/O can go straight
  // to O_DIRECT files.
  static constexpr size_t kAlign = 4096;
  explicit BufferPool(size_t bytes)
      : bytes_(bytes), alloc_bytes_((bytes + kAlign - 1) / kAlign * kAlign) {}

  struct Free {
    void operator()(std::byte* p) const { std::free(p); }
  };
  using Buffer = std::unique_ptr<std::byte[], Free>;

  class Lease {
   public:
    Lease(BufferPool* pool, Buffer buf) : pool_(pool), buf_(std::move(buf)) {}
    Lease(Lease&& o) noexcept : pool_(std::exchange(o.pool_, nullptr)), buf_(std::move(o.buf_)) {}
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    ~Lease() {
      if (pool_ != nullptr) pool_->free_.push_back(std::move(buf_));
    }
    std::span<std::byte> span() { return {buf_.get(), pool_->bytes_}; }
    std::byte* data() { return buf_.get(); }

   private:
    BufferPool* pool_;
    Buffer buf_;
  };

  Lease Acquire() {
    if (free_.empty()) {
      Buffer b(static_cast<std::byte*>(std::aligned_alloc(kAlign, alloc_bytes_)));
      if (!b) std::abort();  // out of memory on a tiny, bounded pool
      return Lease(this, std::move(b));
    }
    Buffer b = std::move(free_.back());
    free_.pop_back();
    return Lease(this, std::move(b));
  }

 private:
  size_t bytes_;        // what span() shows
  size_t alloc_bytes_;  // rounded up for aligned_alloc
  std::vector<Buffer> free_;
};

struct Qcow2Image::Slot {
  cache::SliceCache::Ref ref;  // !valid(): the L2 table is not allocated
  uint32_t byte_in_slice = 0;
};

Qcow2Image::Qcow2Image() = default;
Qcow2Image::~Qcow2Image() = default;

// ---------------------------------------------------------------------------
// Open / Close

Task<absl::StatusOr<std::unique_ptr<Qcow2Image>>> Qcow2Image::Open(
    std::unique_ptr<io::BlockFile> file, const OpenOptions& options) {
  std::unique_ptr<Qcow2Image> img(new Qcow2Image());
  img->file_ = std::move(file);
  io::BlockFile& f = *img->file_;

  std::vector<std::byte> first(512);
  int64_t r = co_await f.Read(0, first);
  if (r < 0) co_return absl::DataLossError(absl::StrCat("reading header: ", std::strerror(-r)));
  UQ_CO_ASSIGN_OR_RETURN(uint64_t header_bytes, format::HeaderReadSize(first));
  std::vector<std::byte> hbuf(header_bytes);
  r = co_await f.Read(0, hbuf);
  if (r < 0) co_return absl::DataLossError(absl::StrCat("reading header: ", std::strerror(-r)));
  UQ_CO_ASSIGN_OR_RETURN(format::Header h,
                         format::DecodeHeader(hbuf, {.file_size_bytes = f.size_bytes()}));

  if (h.crypt_method != 0 || h.has_crypto_extension) {
    co_return absl::UnimplementedError("encrypted qcow2 images are not supported");
  }
  const bool snapshot_mode = !options.snapshot.empty();
  img->read_only_ = options.read_only || f.read_only() || snapshot_mode;
  if ((h.incompatible_features & format::kIncompatCorrupt) && !img->read_only_) {
    co_return absl::FailedPreconditionError(
        "image is marked corrupt (incompatible feature bit 1); it can only be opened read-only "
        "(repair it with `qcow2-img check -r all`)");
  }
  img->corrupt_ = (h.incompatible_features & format::kIncompatCorrupt) != 0;

  img->cluster_bits_ = h.cluster_bits;
  img->cluster_bytes_ = h.cluster_size();
  img->extended_l2_ = h.extended_l2();
  img->l2_entry_bytes_ = h.l2_entry_bytes();
  img->l2_bits_ = h.cluster_bits - (img->extended_l2_ ? 4 : 3);
  img->subcluster_bytes_ = img->extended_l2_ ? img->cluster_bytes_ / 32 : img->cluster_bytes_;
  img->refcount_order_ = h.refcount_order;
  img->refblock_bits_ = h.cluster_bits + 3 - h.refcount_order;
  const uint64_t slice_bytes = std::min(img->cluster_bytes_, kMaxSliceBytes);
  img->refcount_slice_bits_ = std::countr_zero(slice_bytes) + 3 - h.refcount_order;
  img->lazy_refcounts_ = (h.compatible_features & format::kCompatLazyRefcounts) != 0;
  img->metadata_writethrough_ = options.metadata_writethrough;
  img->size_bytes_ = h.size_bytes;

  // External data file.
  if (h.has_data_file()) {
    if (!h.data_file || h.data_file->empty()) {
      co_return absl::InvalidArgumentError(
          "image has the external data file bit but names no data file");
    }
    if (!options.opener) {
      co_return absl::InvalidArgumentError("image needs an external data file but no opener");
    }
    std::string path = ResolvePath(options.path, *h.data_file);
    auto df = options.opener(path, !img->read_only_);
    if (!df.ok()) {
      co_return absl::Status(df.status().code(),
                             absl::StrCat("data file '", path, "': ", df.status().message()));
    }
    img->data_file_ = std::move(*df);
    if (options.file_alignment_bytes > 1) {
      img->data_file_ =
          std::make_unique<AlignedFile>(std::move(img->data_file_), options.file_alignment_bytes);
    }
    img->data_file_raw_ = (h.autoclear_features & format::kAutoclearDataFileRaw) != 0;
  }

  // Backing file.
  if (!h.backing_file.empty()) {
    if (options.max_backing_depth == 0) {
      co_return absl::InvalidArgumentError("backing chain too deep (a loop?)");
    }
    if (!options.opener) {
      co_return absl::InvalidArgumentError(
          absl::StrCat("image has backing file '", h.backing_file, "' but no opener was given"));
    }
    std::string path = ResolvePath(options.path, h.backing_file);
    auto bf = options.opener(path, false);
    if (!bf.ok()) {
      co_return absl::Status(bf.status().code(),
                             absl::StrCat("backing file '", path, "': ", bf.status().message()));
    }
    OpenOptions bo;
    bo.read_only = true;
    bo.path = path;
    bo.opener = options.opener;
    bo.l2_cache_bytes = options.l2_cache_bytes;
    bo.refcount_cache_bytes = options.refcount_cache_bytes;
    bo.max_backing_depth = options.max_backing_depth - 1;
    bo.file_alignment_bytes = options.file_alignment_bytes;
    if (h.backing_format == "qcow2") {
      bo.format = ImageFormat::kQcow2;
    } else if (h.backing_format == "raw") {
      bo.format = ImageFormat::kRaw;
    }
    auto dev = co_await OpenImage(std::move(*bf), bo);
    if (!dev.ok()) {
      co_return absl::Status(dev.status().code(),
                             absl::StrCat("backing file '", path, "': ", dev.status().message()));
    }
    img->backing_ = std::move(*dev);
    img->backing_size_bytes_ = img->backing_->size_bytes();
  }

  // A dirty image has unreliable refcounts: rebuild them before any write.
  if ((h.incompatible_features & format::kIncompatDirty) && !img->read_only_) {
    UQ_CO_RETURN_IF_ERROR(co_await RebuildRefcounts(f, h));
  }

  // Active L1 table, or the snapshot's.
  uint64_t l1_offset = h.l1_table_offset;
  uint64_t l1_entries = h.l1_size;
  if (snapshot_mode) {
    UQ_CO_ASSIGN_OR_RETURN(std::vector<format::Snapshot> snaps, co_await ReadSnapshotTable(f, h));
    const format::Snapshot* found = nullptr;
    for (const format::Snapshot& s : snaps) {
      if (s.name == options.snapshot) found = &s;
    }
    if (found == nullptr) {
      for (const format::Snapshot& s : snaps) {
        if (s.id == options.snapshot) found = &s;
      }
    }
    if (found == nullptr) {
      co_return absl::NotFoundError(absl::StrCat("no snapshot named '", options.snapshot, "'"));
    }
    l1_offset = found->l1_table_offset;
    l1_entries = found->l1_size;
    if (found->disk_size_bytes() != 0) img->size_bytes_ = found->disk_size_bytes();
  }
  const uint64_t guest_clusters = (img->size_bytes_ + img->cluster_bytes_ - 1) >> h.cluster_bits;
  const uint64_t needed_l1 = (guest_clusters + (1ull << img->l2_bits_) - 1) >> img->l2_bits_;
  if (l1_entries * 8 > kMaxL1Bytes) {
    co_return absl::InvalidArgumentError(absl::StrCat("L1 table too large: ", l1_entries));
  }
  if (l1_entries < needed_l1) {
    co_return absl::InvalidArgumentError(
        absl::StrCat("L1 table has ", l1_entries, " entries; the disk size needs ", needed_l1));
  }
  if (l1_entries > 0 && (l1_offset == 0 || (l1_offset & (img->cluster_bytes_ - 1)))) {
    co_return absl::InvalidArgumentError(
        absl::StrCat("L1 table offset ", l1_offset, " is not cluster aligned"));
  }
  {
    std::vector<std::byte> l1buf(l1_entries * 8);
    if (!l1buf.empty()) {
      r = co_await f.Read(l1_offset, l1buf);
      if (r < 0) co_return absl::DataLossError(absl::StrCat("reading L1: ", std::strerror(-r)));
    }
    img->l1_.resize(l1_entries);
    for (uint64_t i = 0; i < l1_entries; ++i) img->l1_[i] = format::LoadBE64(&l1buf[i * 8]);
  }
  img->l1_offset_bytes_ = l1_offset;

  // Refcount table.
  {
    const uint64_t bytes = uint64_t{h.refcount_table_clusters} << h.cluster_bits;
    if (bytes > kMaxRefcountTableBytes || bytes == 0) {
      co_return absl::InvalidArgumentError(
          absl::StrCat("refcount table size ", h.refcount_table_clusters, " clusters is invalid"));
    }
    if (h.refcount_table_offset & (img->cluster_bytes_ - 1) || h.refcount_table_offset == 0) {
      co_return absl::InvalidArgumentError(absl::StrCat(
          "refcount table offset ", h.refcount_table_offset, " is not cluster aligned"));
    }
    std::vector<std::byte> buf(bytes);
    r = co_await f.Read(h.refcount_table_offset, buf);
    if (r < 0) {
      co_return absl::DataLossError(absl::StrCat("reading refcount table: ", std::strerror(-r)));
    }
    img->reftable_.resize(bytes / 8);
    for (uint64_t i = 0; i < bytes / 8; ++i) {
      auto off = format::DecodeRefcountTableEntry(format::LoadBE64(&buf[i * 8]));
      if (!off.ok()) {
        co_return absl::InvalidArgumentError(
            absl::StrCat("refcount table entry ", i, ": ", off.status().message()));
      }
      if (*off & (img->cluster_bytes_ - 1)) {
        co_return absl::InvalidArgumentError(
            absl::StrCat("refcount block ", i, " offset ", *off, " is not cluster aligned"));
      }
      img->reftable_[i] = *off;
    }
  }

  if (!img->read_only_) {
    bool changed = format::ClearUnknownAutoclear(h);
    // Bitmaps are not maintained by this engine: after our writes they would
    // be stale, so declare them inconsistent as the spec asks.
    if (h.autoclear_features & format::kAutoclearBitmaps) {
      h.autoclear_features &= ~format::kAutoclearBitmaps;
      changed = true;
    }
    img->header_ = h;
    if (changed) {
      int w = co_await img->WriteHeader();
      if (w >= 0) w = co_await img->SyncFiles();
      if (w < 0) co_return absl::DataLossError(absl::StrCat("writing header: ", std::strerror(-w)));
    }
  }
  img->header_ = h;

  const uint64_t l2_budget = options.l2_cache_bytes ? options.l2_cache_bytes : kDefaultL2CacheBytes;
  const uint64_t rc_budget =
      options.refcount_cache_bytes ? options.refcount_cache_bytes : l2_budget / 4;
  img->l2_cache_ =
      std::make_unique<cache::SliceCache>(&f, static_cast<uint32_t>(slice_bytes), l2_budget, "L2");
  img->refcount_cache_ = std::make_unique<cache::SliceCache>(&f, static_cast<uint32_t>(slice_bytes),
                                                             rc_budget, "refcount");
  Qcow2Image* self = img.get();
  img->l2_cache_->set_writeback_hook([self]() { return self->L2WritebackHook(); });
  img->cluster_pool_ = std::make_unique<BufferPool>(img->cluster_bytes_);
  img->compressed_pool_ = std::make_unique<BufferPool>(2 * img->cluster_bytes_);
  img->zeros_.assign(img->cluster_bytes_, std::byte{0});
  img->host_end_clusters_ = (f.size_bytes() + img->cluster_bytes_ - 1) >> h.cluster_bits;
  co_return std::move(img);
}

Task<absl::Status> Qcow2Image::Close() {
  if (closed_) co_return absl::OkStatus();
  closed_ = true;
  absl::Status status;
  if (!read_only_) {
    co_await meta_mutex_.Lock();
    cache::MutexGuard guard(&meta_mutex_);
    // Twice: the first pass applies queued frees (dirtying refcounts), the
    // second writes those refcounts.
    int r = co_await FlushLocked();
    if (r >= 0) r = co_await FlushLocked();
    if (r >= 0 && dirty_marked_ && !corrupt_) {
      header_.incompatible_features &= ~format::kIncompatDirty;
      r = co_await WriteHeader();
      if (r >= 0) r = co_await SyncFiles();
      if (r >= 0) dirty_marked_ = false;
    }
    if (r < 0)
      status = absl::DataLossError(absl::StrCat("close: flush failed: ", std::strerror(-r)));
  }
  if (backing_) {
    absl::Status b = co_await backing_->Close();
    if (status.ok()) status = b;
  }
  co_return status;
}

// ---------------------------------------------------------------------------
// Metadata access

Task<int> Qcow2Image::Corrupt(std::string what) {
  std::fprintf(stderr, "qcow2: corrupt image: %s\n", what.c_str());
  if (!corrupt_) {
    corrupt_ = true;
    if (!read_only_) {
      header_.incompatible_features |= format::kIncompatCorrupt;
      int r = co_await WriteHeader();
      if (r >= 0) r = co_await SyncFiles();
      if (r < 0) std::fprintf(stderr, "qcow2: could not set the corrupt bit: %d\n", r);
    }
  }
  co_return -EIO;
}

Task<int> Qcow2Image::GetSlot(uint64_t guest_cluster, bool for_write, Slot* slot) {
  const uint64_t l1_index = guest_cluster >> l2_bits_;
  if (l1_index >= l1_.size()) {
    co_return co_await Corrupt(absl::StrCat("guest cluster ", guest_cluster,
                                            " is beyond the L1 table (", l1_.size(), " entries)"));
  }
  if (for_write) {
    const uint64_t raw = l1_[l1_index];
    if ((raw & format::kOffsetMask) == 0 || !(raw & format::kOflagCopied)) {
      int r = co_await PrepareL2Table(l1_index);
      if (r < 0) co_return r;
    }
  }
  auto l1e = format::DecodeL1Entry(l1_[l1_index]);
  if (!l1e.ok()) {
    co_return co_await Corrupt(absl::StrCat("L1 entry ", l1_index, ": ", l1e.status().message()));
  }
  if (l1e->l2_offset == 0) {
    slot->ref.Reset();
    co_return 0;
  }
  if (l1e->l2_offset & (cluster_bytes_ - 1)) {
    co_return co_await Corrupt(absl::StrCat("L1 entry ", l1_index, ": L2 table offset ",
                                            l1e->l2_offset, " is not cluster aligned"));
  }
  const uint64_t byte = (guest_cluster & ((uint64_t{1} << l2_bits_) - 1)) * l2_entry_bytes_;
  const uint64_t sb = l2_cache_->slice_bytes();
  int r = co_await l2_cache_->Get(l1e->l2_offset + byte / sb * sb, &slot->ref);
  if (r < 0) co_return r;
  slot->byte_in_slice = static_cast<uint32_t>(byte % sb);
  co_return 0;
}

Task<int> Qcow2Image::PrepareL2Table(uint64_t l1_index) {
  co_await meta_mutex_.Lock();
  cache::MutexGuard guard(&meta_mutex_);
  const uint64_t raw = l1_[l1_index];
  const uint64_t old = raw & format::kOffsetMask;
  if (old != 0 && (raw & format::kOflagCopied)) co_return 0;  // done meanwhile
  if (old != 0) {
    if (old & (cluster_bytes_ - 1)) {
      co_return co_await Corrupt(absl::StrCat("L1 entry ", l1_index, ": L2 table offset ", old,
                                              " is not cluster aligned"));
    }
    uint64_t rc = 0;
    int r = co_await GetRefcount(old >> cluster_bits_, &rc);
    if (r < 0) co_return r;
    if (rc == 0) {
      co_return co_await Corrupt(
          absl::StrCat("L2 table at ", old, " (L1 index ", l1_index, ") has refcount 0"));
    }
    if (rc == 1) {  // not shared after all: just own it
      l1_[l1_index] = raw | format::kOflagCopied;
      l1_dirty_ = true;
      ++meta_gen_;
      co_return 0;
    }
  }
  int64_t new_offset = co_await AllocClusters(1);
  if (new_offset < 0) co_return static_cast<int>(new_offset);
  auto buf = cluster_pool_->Acquire();
  if (old != 0) {
    // Copy through the cache: it holds the newest version of every slice.
    const uint64_t sb = l2_cache_->slice_bytes();
    for (uint64_t s = 0; s < cluster_bytes_; s += sb) {
      cache::SliceCache::Ref ref;
      int r = co_await l2_cache_->Get(old + s, &ref);
      if (r < 0) co_return r;
      std::memcpy(buf.data() + s, ref.data().data(), sb);
    }
  } else {
    std::memset(buf.data(), 0, cluster_bytes_);
  }
  co_await l2_cache_->Drop(new_offset, cluster_bytes_);
  int64_t w = co_await file_->Write(new_offset, buf.span());
  if (w < 0) {
    uint64_t nv;
    co_await AddRefcount(new_offset >> cluster_bits_, -1, &nv);
    co_return static_cast<int>(w);
  }
  // The table is written; the L1 entry reaches the disk in Flush, after an
  // fsync, so the table is never reachable before it is durable. Write-through
  // writes the L1 table at the end of this request instead: fsync the new
  // table now (rare: once per L2 table) so that still holds.
  if (metadata_writethrough_) {
    int r = co_await SyncFiles();
    if (r < 0) {
      uint64_t nv;
      co_await AddRefcount(new_offset >> cluster_bits_, -1, &nv);
      co_return r;
    }
  }
  l1_[l1_index] = static_cast<uint64_t>(new_offset) | format::kOflagCopied;
  l1_dirty_ = true;
  ++meta_gen_;
  if (old != 0) {
    pending_frees_.push_back({old >> cluster_bits_, 1});
    ++pending_free_clusters_;
  }
  co_return 0;
}

Task<int> Qcow2Image::DecodeSlot(const Slot& slot, uint64_t guest_cluster, L2Entry* out) {
  if (!slot.ref.valid()) {
    *out = L2Entry{};
    co_return 0;
  }
  const std::byte* p = slot.ref.data().data() + slot.byte_in_slice;
  const uint64_t raw = format::LoadBE64(p);
  const uint64_t bitmap = extended_l2_ ? format::LoadBE64(p + 8) : 0;
  // With an external data file, offset 0 is a valid host offset (guest
  // cluster 0); data clusters always have refcount 1, so COPIED tells an
  // allocated cluster 0 from an unallocated entry (as QEMU reads it). Decode
  // with a stand-in offset so the bitmap checks accept it.
  const bool data_at_zero = external_data() && (raw & format::kOflagCopied) &&
                            !(raw & format::kOflagCompressed) && (raw & format::kOffsetMask) == 0;
  auto e = format::DecodeL2Entry(data_at_zero ? raw | cluster_bytes_ : raw, bitmap, cluster_bits_,
                                 extended_l2_);
  if (e.ok() && data_at_zero) e->host_offset = 0;
  if (!e.ok()) {
    co_return co_await Corrupt(
        absl::StrCat("L2 entry of guest cluster ", guest_cluster, ": ", e.status().message()));
  }
  if (external_data()) {
    if (e->type == ClusterType::kCompressed) {
      co_return co_await Corrupt(absl::StrCat("guest cluster ", guest_cluster,
                                              ": compressed cluster in an image with a data file"));
    }
    if (e->host_offset != 0 && e->host_offset != (guest_cluster << cluster_bits_)) {
      co_return co_await Corrupt(absl::StrCat("guest cluster ", guest_cluster, ": host offset ",
                                              e->host_offset,
                                              " differs from the guest offset (data file)"));
    }
  } else if ((e->type == ClusterType::kNormal || e->type == ClusterType::kZeroAlloc) &&
             e->host_offset == 0) {
    co_return co_await Corrupt(
        absl::StrCat("guest cluster ", guest_cluster, " maps to the header cluster"));
  }
  if (e->type == ClusterType::kCompressed && e->compressed_length > 2 * cluster_bytes_) {
    co_return co_await Corrupt(absl::StrCat("guest cluster ", guest_cluster, ": compressed length ",
                                            e->compressed_length, " exceeds two clusters"));
  }
  *out = *e;
  co_return 0;
}

void Qcow2Image::StoreSlot(Slot& slot, const L2Entry& e) {
  format::EncodedL2 enc = format::EncodeL2Entry(e, cluster_bits_, extended_l2_);
  std::byte* p = slot.ref.data().data() + slot.byte_in_slice;
  format::StoreBE64(p, enc.entry);
  if (extended_l2_) format::StoreBE64(p + 8, enc.bitmap);
  slot.ref.MarkDirty();
  ++meta_gen_;
}

Qcow2Image::Source Qcow2Image::Classify(const L2Entry& e, uint32_t subcluster) const {
  if (e.type == ClusterType::kCompressed) return Source::kCompressed;
  if (!extended_l2_) {
    switch (e.type) {
      case ClusterType::kNormal:
        return Source::kData;
      case ClusterType::kZeroPlain:
      case ClusterType::kZeroAlloc:
        return Source::kZero;
      default:
        return Source::kBacking;
    }
  }
  if ((e.alloc_bitmap >> subcluster) & 1) return Source::kData;
  if ((e.zero_bitmap >> subcluster) & 1) return Source::kZero;
  return Source::kBacking;
}

// ---------------------------------------------------------------------------
// Refcounts and allocation

Task<int> Qcow2Image::GetRefcount(uint64_t cluster_index, uint64_t* out) {
  const uint64_t block = cluster_index >> refblock_bits_;
  if (block >= reftable_.size() || reftable_[block] == 0) {
    *out = 0;
    co_return 0;
  }
  const uint64_t index = cluster_index & ((uint64_t{1} << refblock_bits_) - 1);
  const uint64_t slice = index >> refcount_slice_bits_;
  cache::SliceCache::Ref ref;
  int r = co_await refcount_cache_->Get(reftable_[block] + slice * refcount_cache_->slice_bytes(),
                                        &ref);
  if (r < 0) co_return r;
  *out = format::GetRefcount(ref.data(), refcount_order_,
                             index & ((uint64_t{1} << refcount_slice_bits_) - 1));
  co_return 0;
}

Task<int> Qcow2Image::AddRefcount(uint64_t cluster_index, int64_t delta, uint64_t* new_value) {
  if (delta > 0) {
    uint64_t placed;
    int r = co_await EnsureRefblock(cluster_index, &placed);
    if (r < 0) co_return r;
  }
  const uint64_t block = cluster_index >> refblock_bits_;
  if (block >= reftable_.size() || reftable_[block] == 0) {
    co_return co_await Corrupt(
        absl::StrCat("refcount of cluster ", cluster_index, " would drop below zero (no block)"));
  }
  const uint64_t index = cluster_index & ((uint64_t{1} << refblock_bits_) - 1);
  const uint64_t slice = index >> refcount_slice_bits_;
  const uint64_t in_slice = index & ((uint64_t{1} << refcount_slice_bits_) - 1);
  cache::SliceCache::Ref ref;
  int r = co_await refcount_cache_->Get(reftable_[block] + slice * refcount_cache_->slice_bytes(),
                                        &ref);
  if (r < 0) co_return r;
  const uint64_t v = format::GetRefcount(ref.data(), refcount_order_, in_slice);
  if (delta < 0 && v < static_cast<uint64_t>(-delta)) {
    co_return co_await Corrupt(
        absl::StrCat("refcount of cluster ", cluster_index, " would drop below zero"));
  }
  const uint64_t nv = v + static_cast<uint64_t>(delta);
  if (delta > 0 && (nv > format::MaxRefcount(refcount_order_) || nv < v)) co_return -ERANGE;
  format::SetRefcount(ref.data(), refcount_order_, in_slice, nv);
  ref.MarkDirty();
  ++meta_gen_;
  if (nv == 0 && cluster_index < free_hint_) free_hint_ = cluster_index;
  *new_value = nv;
  co_return 0;
}

Task<int> Qcow2Image::EnsureRefblock(uint64_t cluster_index, uint64_t* placed_cluster) {
  *placed_cluster = kNone;
  const uint64_t block = cluster_index >> refblock_bits_;
  if (block >= reftable_.size()) {
    int r = co_await GrowRefcountTable(block + 1);
    if (r < 0) co_return r;
  }
  if (reftable_[block] != 0) co_return 0;
  // A refcount block for clusters [block*E, (block+1)*E) placed at the first
  // of them: none of them is in use (no block counts them), and the block
  // covers itself.
  const uint64_t block_cluster = block << refblock_bits_;
  const uint64_t block_offset = block_cluster << cluster_bits_;
  auto buf = cluster_pool_->Acquire();
  std::memset(buf.data(), 0, cluster_bytes_);
  format::SetRefcount(buf.span(), refcount_order_, 0, 1);
  co_await refcount_cache_->Drop(block_offset, cluster_bytes_);
  int64_t w = co_await file_->Write(block_offset, buf.span());
  if (w < 0) co_return static_cast<int>(w);
  // The block must be durable before the table entry points at it.
  int r = co_await SyncFiles();
  if (r < 0) co_return r;
  std::byte entry[8];
  format::StoreBE64(entry, block_offset);
  w = co_await file_->Write(header_.refcount_table_offset + block * 8, entry);
  if (w < 0) co_return static_cast<int>(w);
  reftable_[block] = block_offset;
  host_end_clusters_ = std::max(host_end_clusters_, block_cluster + 1);
  *placed_cluster = block_cluster;
  co_return 0;
}

Task<int> Qcow2Image::GrowRefcountTable(uint64_t min_entries) {
  const uint64_t per_block = uint64_t{1} << refblock_bits_;
  const uint64_t entries_per_cluster = cluster_bytes_ / 8;
  auto round_entries = [&](uint64_t n) {
    return (n + entries_per_cluster - 1) / entries_per_cluster * entries_per_cluster;
  };
  uint64_t new_entries = round_entries(std::max<uint64_t>(min_entries, reftable_.size() * 2));
  // The new table and the blocks that count it go in a fresh area past
  // everything in use, starting at a block boundary.
  const uint64_t area_block =
      std::max(min_entries, (host_end_clusters_ + per_block - 1) / per_block);
  uint64_t table_clusters = 0;
  uint64_t area_blocks = 0;
  for (;;) {
    table_clusters = new_entries / entries_per_cluster;
    area_blocks = 1;
    for (;;) {
      uint64_t need = (table_clusters + area_blocks + per_block - 1) / per_block;
      if (need <= area_blocks) break;
      area_blocks = need;
    }
    if (area_block + area_blocks <= new_entries) break;
    new_entries = round_entries(area_block + area_blocks);
  }
  if (new_entries * 8 > kMaxRefcountTableBytes) co_return -EFBIG;
  const uint64_t area_start = area_block * per_block;
  const uint64_t area_end = area_start + table_clusters + area_blocks;

  std::vector<std::byte> block(cluster_bytes_);
  for (uint64_t j = 0; j < area_blocks; ++j) {
    std::fill(block.begin(), block.end(), std::byte{0});
    for (uint64_t x = area_start; x < area_end; ++x) {
      if ((x >> refblock_bits_) == area_block + j) {
        format::SetRefcount(block, refcount_order_, x & (per_block - 1), 1);
      }
    }
    int64_t w = co_await file_->Write((area_start + table_clusters + j) << cluster_bits_, block);
    if (w < 0) co_return static_cast<int>(w);
  }
  std::vector<uint64_t> table(new_entries, 0);
  std::copy(reftable_.begin(), reftable_.end(), table.begin());
  for (uint64_t j = 0; j < area_blocks; ++j) {
    table[area_block + j] = (area_start + table_clusters + j) << cluster_bits_;
  }
  std::vector<std::byte> tbuf(new_entries * 8);
  for (uint64_t i = 0; i < new_entries; ++i) format::StoreBE64(&tbuf[i * 8], table[i]);
  int64_t w = co_await file_->Write(area_start << cluster_bits_, tbuf);
  if (w < 0) co_return static_cast<int>(w);
  int r = co_await SyncFiles();
  if (r < 0) co_return r;

  const uint64_t old_offset = header_.refcount_table_offset;
  const uint64_t old_clusters = header_.refcount_table_clusters;
  header_.refcount_table_offset = area_start << cluster_bits_;
  header_.refcount_table_clusters = static_cast<uint32_t>(table_clusters);
  r = co_await WriteHeader();
  if (r >= 0) r = co_await SyncFiles();
  if (r < 0) {
    header_.refcount_table_offset = old_offset;
    header_.refcount_table_clusters = static_cast<uint32_t>(old_clusters);
    co_return r;
  }
  reftable_ = std::move(table);
  host_end_clusters_ = std::max(host_end_clusters_, area_end);
  // The header no longer names the old table: free it.
  for (uint64_t i = 0; i < old_clusters; ++i) {
    uint64_t nv;
    r = co_await AddRefcount((old_offset >> cluster_bits_) + i, -1, &nv);
    if (r < 0) co_return r;
  }
  co_return 0;
}

Task<int64_t> Qcow2Image::AllocClusters(uint64_t count) {
  for (;;) {
    uint64_t start = free_hint_;
    uint64_t run = 0;
    uint64_t first_free = kNone;
    for (uint64_t c = free_hint_; run < count; ++c) {
      uint64_t rc;
      // Scanning is hot: read cached slices directly, await only on a miss.
      const uint64_t block = c >> refblock_bits_;
      if (block >= reftable_.size() || reftable_[block] == 0) {
        rc = 0;
      } else {
        const uint64_t index = c & ((uint64_t{1} << refblock_bits_) - 1);
        const std::byte* p = refcount_cache_->Peek(
            reftable_[block] + (index >> refcount_slice_bits_) * refcount_cache_->slice_bytes());
        if (p != nullptr) {
          rc = format::GetRefcount(std::span<const std::byte>(p, refcount_cache_->slice_bytes()),
                                   refcount_order_,
                                   index & ((uint64_t{1} << refcount_slice_bits_) - 1));
        } else {
          int r = co_await GetRefcount(c, &rc);
          if (r < 0) co_return r;
        }
      }
      if (rc == 0) {
        if (run == 0) start = c;
        if (first_free == kNone) first_free = c;
        ++run;
      } else {
        run = 0;
      }
    }
    // Nothing below first_free is free.
    free_hint_ = first_free;
    // Make sure blocks count the run; placing a block (or growing the table)
    // may take clusters of the run, in which case search again.
    bool retry = false;
    for (uint64_t c = start; c < start + count && !retry; ++c) {
      uint64_t placed;
      int r = co_await EnsureRefblock(c, &placed);
      if (r < 0) co_return r;
    }
    for (uint64_t c = start; c < start + count && !retry; ++c) {
      uint64_t rc;
      int r = co_await GetRefcount(c, &rc);
      if (r < 0) co_return r;
      if (rc != 0) retry = true;
    }
    if (retry) continue;
    if (metadata_writethrough_) {
      int r = co_await GrowFileDurably((start + count) << cluster_bits_);
      if (r < 0) co_return r;
    }
    for (uint64_t c = start; c < start + count; ++c) {
      uint64_t nv;
      int r = co_await AddRefcount(c, 1, &nv);
      if (r < 0) co_return r;
    }
    if (start == free_hint_) free_hint_ = start + count;  // else a short free run remains below
    host_end_clusters_ = std::max(host_end_clusters_, start + count);
    stats_.clusters_allocated += count;
    co_return static_cast<int64_t>(start << cluster_bits_);
  }
}

void Qcow2Image::QueueFree(const L2Entry& e) {
  if (external_data()) return;  // data clusters are not refcounted
  if ((e.type == ClusterType::kNormal || e.type == ClusterType::kZeroAlloc) && e.host_offset) {
    pending_frees_.push_back({e.host_offset >> cluster_bits_, 1});
    ++pending_free_clusters_;
  } else if (e.type == ClusterType::kCompressed && e.compressed_length > 0) {
    const uint64_t first = e.compressed_offset >> cluster_bits_;
    const uint64_t last = (e.compressed_offset + e.compressed_length - 1) >> cluster_bits_;
    pending_frees_.push_back({first, last - first + 1});
    pending_free_clusters_ += last - first + 1;
  }
}

Task<int> Qcow2Image::ApplyFrees(std::vector<PendingFree> frees) {
  for (const PendingFree& f : frees) {
    for (uint64_t c = f.cluster_index; c < f.cluster_index + f.count; ++c) {
      uint64_t nv;
      int r = co_await AddRefcount(c, -1, &nv);
      if (r < 0) co_return r;
      if (nv == 0) {
        ++stats_.clusters_freed;
        // Best effort: the cluster is free whether or not the punch works.
        co_await file_->Discard(c << cluster_bits_, cluster_bytes_);
      }
    }
  }
  co_return 0;
}

Task<int> Qcow2Image::GrowFileDurably(uint64_t end_bytes) {
  const uint64_t size = file_->size_bytes();
  if (end_bytes <= size) co_return 0;
  // Grow in steps (1/8 of the file, at least 1 MiB) so the fsync is rare.
  uint64_t target = std::max(end_bytes, size + std::max(size / 8, uint64_t{1} << 20));
  target = (target + cluster_bytes_ - 1) & ~(cluster_bytes_ - 1);
  int r = co_await file_->Truncate(target);
  // A file that cannot grow ahead (a block device: fixed size) gets just
  // what is needed, or the error.
  if (r < 0) r = co_await file_->Truncate(end_bytes);
  if (r < 0) co_return r;
  co_return co_await file_->Flush();
}

Task<int> Qcow2Image::SyncFiles() {
  if (data_file_) {
    int r = co_await data_file_->Flush();
    if (r < 0) co_return r;
  }
  co_return co_await file_->Flush();
}

Task<int> Qcow2Image::L2WritebackHook() {
  // Write-through with a durable dirty bit: power loss rebuilds the
  // refcounts, so no fsync is needed. Refcounts are still written first, so
  // the file as a killed process leaves it never has an L2 entry whose
  // refcount is missing (`qemu-img check` without repair sees leaks only).
  if (metadata_writethrough_ && dirty_marked_) co_return co_await refcount_cache_->Flush();
  // Every L2 entry about to be written points at clusters whose refcount
  // increments and data writes happened before the copy was taken.
  int r = co_await refcount_cache_->Flush();
  if (r < 0) co_return r;
  co_return co_await SyncFiles();
}

Task<int> Qcow2Image::WriteHeader() {
  std::vector<std::byte> buf(cluster_bytes_);
  absl::Status s = format::EncodeHeader(header_, buf);
  if (!s.ok()) {
    std::fprintf(stderr, "qcow2: encoding header: %s\n", std::string(s.message()).c_str());
    co_return -EIO;
  }
  int64_t w = co_await file_->Write(0, buf);
  co_return w < 0 ? static_cast<int>(w) : 0;
}

Task<int> Qcow2Image::WriteL1() {
  std::vector<std::byte> buf(l1_.size() * 8);
  for (size_t i = 0; i < l1_.size(); ++i) format::StoreBE64(&buf[i * 8], l1_[i]);
  l1_dirty_ = false;
  ++l1_writes_in_flight_;
  int64_t w = co_await file_->Write(l1_offset_bytes_, buf);
  --l1_writes_in_flight_;
  if (w < 0) {
    l1_dirty_ = true;
    co_return static_cast<int>(w);
  }
  co_return 0;
}

Task<int> Qcow2Image::FlushLocked() {
  if (read_only_) co_return 0;
  // Frees queued so far belong to L2/L1 changes already in the caches; they
  // are applied once those changes are durable.
  std::vector<PendingFree> frees = std::move(pending_frees_);
  pending_frees_.clear();
  const uint64_t free_clusters = std::exchange(pending_free_clusters_, 0);
  int r = 0;
  // Write-through skips the hook; keep data durable before L2 slices anyway.
  if (metadata_writethrough_ && dirty_marked_ && l2_cache_->has_dirty()) r = co_await SyncFiles();
  if (r >= 0) r = co_await l2_cache_->Flush();  // hook: refcounts + fsync first
  if (r >= 0) r = co_await refcount_cache_->Flush();
  if (r >= 0) r = co_await SyncFiles();
  if (r >= 0 && l1_dirty_) {
    r = co_await WriteL1();
    if (r >= 0) r = co_await SyncFiles();
  }
  if (r < 0) {
    pending_frees_.insert(pending_frees_.begin(), frees.begin(), frees.end());
    pending_free_clusters_ += free_clusters;
    co_return r;
  }
  co_return co_await ApplyFrees(std::move(frees));
}

Task<int> Qcow2Image::Flush() {
  if (read_only_) co_return 0;
  co_await meta_mutex_.Lock();
  cache::MutexGuard guard(&meta_mutex_);
  co_return co_await FlushLocked();
}

Task<int> Qcow2Image::MarkDirtyOnce() {
  // Version 2 has no dirty bit: write-through keeps the hook's fsync there.
  const bool want = lazy_refcounts_ || (metadata_writethrough_ && header_.version >= 3);
  if (!want || dirty_marked_) co_return 0;
  co_await meta_mutex_.Lock();
  cache::MutexGuard guard(&meta_mutex_);
  if (dirty_marked_) co_return 0;
  header_.incompatible_features |= format::kIncompatDirty;
  int r = co_await WriteHeader();
  if (r >= 0) r = co_await SyncFiles();
  if (r < 0) co_return r;
  dirty_marked_ = true;
  co_return 0;
}

void Qcow2Image::NoteMetadataDependency(const Slot& slot) {
  if (!metadata_writethrough_) return;
  if ((slot.ref.valid() && slot.ref.dirty()) || l1_dirty_ || l1_writes_in_flight_ > 0) ++meta_gen_;
}

Task<int> Qcow2Image::WriteThroughMetadata(uint64_t since_gen) {
  if (!metadata_writethrough_ || meta_gen_ == since_gen) co_return 0;
  // No metadata mutex for the slices, so allocations go on while they are
  // written and concurrent requests batch: SliceCache::Flush returns only
  // once every change made before it reached the file, whoever writes it,
  // and the L2 hook writes refcount blocks after the L2 copies are taken, so
  // every refcount an L2 slice depends on is written before that slice.
  int r = co_await refcount_cache_->Flush();
  if (r >= 0) r = co_await l2_cache_->Flush();
  if (r < 0) co_return r;
  if (l1_dirty_ || l1_writes_in_flight_ > 0) {
    // The L1 table is written whole from a copy: one writer at a time (the
    // mutex), so an older copy never lands after a newer one; waiting for the
    // mutex also waits out a write already in flight.
    co_await meta_mutex_.Lock();
    cache::MutexGuard guard(&meta_mutex_);
    if (l1_dirty_) {
      // A new L2 table may have been allocated after our refcount flush:
      // its refcount goes first (and, without the dirty bit, durably).
      r = co_await refcount_cache_->Flush();
      if (r >= 0 && !dirty_marked_) r = co_await SyncFiles();
      if (r >= 0) r = co_await WriteL1();
    }
  }
  co_return r;
}

Task<int> Qcow2Image::MaybeFlushFrees() {
  if (pending_free_clusters_ < kFreeFlushThresholdClusters) co_return 0;
  co_return co_await Flush();
}

int Qcow2Image::CheckRequest(uint64_t offset_bytes, uint64_t length_bytes, bool write) const {
  if (closed_) return -EIO;
  if (write && read_only_) return -EROFS;
  if (write && corrupt_) return -EIO;
  if ((offset_bytes | length_bytes) & 511) return -EINVAL;
  if (offset_bytes > size_bytes_ || length_bytes > size_bytes_ - offset_bytes) return -EINVAL;
  return 0;
}

// ---------------------------------------------------------------------------
// Reads

Task<int> Qcow2Image::Read(uint64_t offset_bytes, std::span<const iovec> iov) {
  const uint64_t len = IovLen(iov);
  if (int r = CheckRequest(offset_bytes, len, false); r < 0) co_return r;
  co_return co_await ForEachChunk(offset_bytes, iov, false);
}

struct Qcow2Image::Fanout {
  uint64_t remaining = 0;
  int result = 0;
  std::coroutine_handle<> waiter;
};

Task<void> Qcow2Image::RunPiece(bool write, uint64_t g, uint64_t n, IovVec iov, Fanout* f) {
  int r;
  if (write) {
    r = co_await WriteChunk(g, n, iov);
  } else {
    r = co_await ReadChunk(g, n, iov);
  }
  if (r < 0 && f->result == 0) f->result = r;
  // The waiter may free *f once resumed: nothing touches it afterwards.
  if (--f->remaining == 0 && f->waiter) f->waiter.resume();
}

Task<int> Qcow2Image::ForEachChunk(uint64_t offset_bytes, std::span<const iovec> iov, bool write) {
  const uint64_t len = IovLen(iov);
  const uint64_t first = std::min(len, cluster_bytes_ - (offset_bytes & (cluster_bytes_ - 1)));
  if (first == len) {
    // One cluster (the common small request): no fan-out.
    if (write) co_return co_await WriteChunk(offset_bytes, len, iov);
    co_return co_await ReadChunk(offset_bytes, len, iov);
  }
  Fanout f;
  f.remaining = 1 + (len - first + cluster_bytes_ - 1) / cluster_bytes_;
  uint64_t pos = 0;
  while (pos < len) {
    const uint64_t g = offset_bytes + pos;
    const uint64_t n = std::min(len - pos, cluster_bytes_ - (g & (cluster_bytes_ - 1)));
    IovVec sub;
    SliceIov(iov, pos, n, &sub);
    Spawn(RunPiece(write, g, n, std::move(sub), &f));
    pos += n;
  }
  struct Join {
    Fanout* f;
    bool await_ready() const noexcept { return f->remaining == 0; }
    void await_suspend(std::coroutine_handle<> h) noexcept { f->waiter = h; }
    void await_resume() const noexcept {}
  };
  co_await Join{&f};
  co_return f.result;
}

Task<int> Qcow2Image::ReadChunk(uint64_t g, uint64_t n, std::span<const iovec> iov) {
  const uint64_t gc = g >> cluster_bits_;
  const uint64_t in_off = g & (cluster_bytes_ - 1);
  co_await cluster_locks_.Lock(gc, false);
  ClusterLockGuard lock(&cluster_locks_, gc, false);
  L2Entry e;
  {
    Slot slot;
    int r = co_await GetSlot(gc, false, &slot);
    if (r < 0) co_return r;
    r = co_await DecodeSlot(slot, gc, &e);
    if (r < 0) co_return r;
  }
  if (e.type == ClusterType::kCompressed) {
    auto buf = cluster_pool_->Acquire();
    int r = co_await ReadCompressed(e, buf.span());
    if (r < 0) co_return r;
    CopyToIov(iov, buf.data() + in_off);
    co_return 0;
  }
  uint64_t pos = 0;
  while (pos < n) {
    const uint32_t sc = static_cast<uint32_t>((in_off + pos) / subcluster_bytes_);
    const Source src = Classify(e, sc);
    uint64_t end = pos;
    while (end < n &&
           Classify(e, static_cast<uint32_t>((in_off + end) / subcluster_bytes_)) == src) {
      end = std::min(n, ((in_off + end) / subcluster_bytes_ + 1) * subcluster_bytes_ - in_off);
    }
    IovVec sub;
    SliceIov(iov, pos, end - pos, &sub);
    int r = co_await ReadFrom(src, e, g + pos, end - pos, sub);
    if (r < 0) co_return r;
    pos = end;
  }
  co_return 0;
}

Task<int> Qcow2Image::ReadFrom(Source src, const L2Entry& e, uint64_t g, uint64_t n,
                               std::span<const iovec> iov) {
  switch (src) {
    case Source::kZero:
      ZeroIov(iov);
      co_return 0;
    case Source::kBacking:
      co_return co_await ReadBacking(g, n, iov);
    case Source::kData: {
      int64_t r = co_await data_file()->ReadV(e.host_offset + (g & (cluster_bytes_ - 1)), iov);
      co_return r < 0 ? static_cast<int>(r) : 0;
    }
    case Source::kCompressed:
      break;
  }
  co_return -EIO;
}

Task<int> Qcow2Image::ReadBacking(uint64_t g, uint64_t n, std::span<const iovec> iov) {
  if (!backing_ || g >= backing_size_bytes_) {
    ZeroIov(iov);
    co_return 0;
  }
  const uint64_t m = std::min(n, backing_size_bytes_ - g);
  IovVec head;
  SliceIov(iov, 0, m, &head);
  int r = co_await backing_->Read(g, head);
  if (r < 0) co_return r;
  if (m < n) {
    IovVec tail;
    SliceIov(iov, m, n - m, &tail);
    ZeroIov(tail);
  }
  co_return 0;
}

Task<int> Qcow2Image::ReadCompressed(const L2Entry& e, std::span<std::byte> cluster) {
  auto in = compressed_pool_->Acquire();
  std::span<std::byte> src = in.span().subspan(0, e.compressed_length);
  int64_t r = co_await file_->Read(e.compressed_offset, src);
  if (r < 0) co_return static_cast<int>(r);
  int d = DecompressCluster(header_.compression_type, src, cluster);
  if (d < 0) {
    co_return co_await Corrupt(absl::StrCat("compressed cluster at host offset ",
                                            e.compressed_offset, " does not decompress to ",
                                            cluster_bytes_, " bytes"));
  }
  co_return 0;
}

Task<int> Qcow2Image::FillFrom(Source src, const L2Entry& e, uint64_t gco, uint64_t begin,
                               uint64_t end, std::span<std::byte> cluster) {
  if (begin >= end) co_return 0;
  iovec v{cluster.data() + begin, end - begin};
  co_return co_await ReadFrom(src, e, gco + begin, end - begin, std::span<const iovec>(&v, 1));
}

Task<int> Qcow2Image::ReadsZero(uint64_t g, uint64_t n, bool* zero) {
  *zero = false;
  const uint64_t gc = g >> cluster_bits_;
  const uint64_t in_off = g & (cluster_bytes_ - 1);
  co_await cluster_locks_.Lock(gc, false);
  ClusterLockGuard lock(&cluster_locks_, gc, false);
  Slot slot;
  int r = co_await GetSlot(gc, false, &slot);
  if (r < 0) co_return r;
  L2Entry e;
  r = co_await DecodeSlot(slot, gc, &e);
  if (r < 0) co_return r;
  NoteMetadataDependency(slot);  // a caller may skip a write on the answer
  // Every subcluster the range touches, partly covered ones included: stepping
  // from in_off by a subcluster would skip the last one when in_off is not
  // subcluster aligned.
  const uint64_t first_sc = in_off / subcluster_bytes_;
  const uint64_t end_sc = (in_off + n + subcluster_bytes_ - 1) / subcluster_bytes_;
  for (uint64_t sc = first_sc; sc < end_sc; ++sc) {
    const Source s = Classify(e, static_cast<uint32_t>(sc));
    // A backing subcluster reads zero only if the backing file ends before the
    // part of it this range covers.
    const uint64_t from = std::max(in_off, sc * subcluster_bytes_);
    const bool z =
        s == Source::kZero ||
        (s == Source::kBacking && (!backing_ || (g - in_off) + from >= backing_size_bytes_));
    if (!z) co_return 0;
  }
  *zero = true;
  co_return 0;
}

// ---------------------------------------------------------------------------
// Writes

Task<int> Qcow2Image::Write(uint64_t offset_bytes, std::span<const iovec> iov, bool fua) {
  const uint64_t len = IovLen(iov);
  if (int r = CheckRequest(offset_bytes, len, true); r < 0) co_return r;
  {
    int d = co_await MarkDirtyOnce();
    if (d < 0) co_return d;
  }
  const uint64_t gen = meta_gen_;
  {
    int r = co_await ForEachChunk(offset_bytes, iov, true);
    if (r < 0) co_return r;
  }
  if (fua) co_return co_await Flush();
  {
    int r = co_await WriteThroughMetadata(gen);
    if (r < 0) co_return r;
  }
  co_return co_await MaybeFlushFrees();
}

Task<int> Qcow2Image::WriteChunk(uint64_t g, uint64_t n, std::span<const iovec> data_iov) {
  const uint64_t gc = g >> cluster_bits_;
  const uint64_t gco = gc << cluster_bits_;
  const uint64_t in_off = g - gco;
  iovec zero_vec{zeros_.data(), n};
  std::span<const iovec> iov = data_iov.empty() ? std::span<const iovec>(&zero_vec, 1) : data_iov;
  const uint32_t sa = static_cast<uint32_t>(in_off / subcluster_bytes_);
  const uint32_t sb =
      static_cast<uint32_t>((in_off + n + subcluster_bytes_ - 1) / subcluster_bytes_);
  const uint32_t touched = extended_l2_ ? SubclusterMask(sa, sb) : 0;

  // Fast path: an allocated cluster we own, every touched subcluster
  // allocated. No metadata changes, so a shared lock suffices.
  {
    co_await cluster_locks_.Lock(gc, false);
    ClusterLockGuard lock(&cluster_locks_, gc, false);
    Slot slot;
    int r = co_await GetSlot(gc, false, &slot);
    if (r < 0) co_return r;
    L2Entry e;
    r = co_await DecodeSlot(slot, gc, &e);
    if (r < 0) co_return r;
    const bool fast = e.type == ClusterType::kNormal && (e.copied || external_data()) &&
                      (!extended_l2_ || (e.alloc_bitmap & touched) == touched);
    if (fast) NoteMetadataDependency(slot);
    slot.ref.Reset();
    if (fast) {
      int64_t w = co_await data_file()->WriteV(e.host_offset + in_off, iov);
      co_return w < 0 ? static_cast<int>(w) : 0;
    }
  }

  // Slow path: allocation, COW or a metadata update, under the exclusive lock.
  co_await cluster_locks_.Lock(gc, true);
  ClusterLockGuard lock(&cluster_locks_, gc, true);
  Slot slot;
  int r = co_await GetSlot(gc, true, &slot);
  if (r < 0) co_return r;
  L2Entry old;
  r = co_await DecodeSlot(slot, gc, &old);
  if (r < 0) co_return r;

  bool in_place = false;
  if ((old.type == ClusterType::kNormal || old.type == ClusterType::kZeroAlloc) &&
      (old.host_offset != 0 || external_data())) {
    if (old.copied || external_data()) {
      in_place = true;
    } else {
      // COPIED clear: shared unless the refcount says otherwise.
      uint64_t rc = 0;
      {
        co_await meta_mutex_.Lock();
        cache::MutexGuard guard(&meta_mutex_);
        r = co_await GetRefcount(old.host_offset >> cluster_bits_, &rc);
      }
      if (r < 0) co_return r;
      if (rc == 0) {
        co_return co_await Corrupt(absl::StrCat("guest cluster ", gc, " maps to host offset ",
                                                old.host_offset, " whose refcount is 0"));
      }
      in_place = rc == 1;
    }
  }
  uint64_t host = 0;
  bool allocated = false;
  bool fresh = false;  // past every cluster ever used: reads zero even after power loss
  if (in_place) {
    host = old.host_offset;
  } else if (external_data()) {
    host = gco;  // data file clusters sit at the guest offset
  } else {
    int64_t a;
    {
      co_await meta_mutex_.Lock();
      cache::MutexGuard guard(&meta_mutex_);
      const uint64_t end_before = host_end_clusters_;
      a = co_await AllocClusters(1);
      fresh = a >= 0 && (static_cast<uint64_t>(a) >> cluster_bits_) >= end_before;
    }
    if (a < 0) co_return static_cast<int>(a);
    host = static_cast<uint64_t>(a);
    allocated = true;
  }

  auto buf = cluster_pool_->Acquire();
  std::span<std::byte> cbuf = buf.span();
  L2Entry ne;
  ne.type = ClusterType::kNormal;
  ne.host_offset = host;
  ne.copied = true;
  uint64_t ws = 0;
  uint64_t we = cluster_bytes_;
  if (!extended_l2_) {
    if (in_place && old.type == ClusterType::kNormal) {
      ws = in_off;
      we = in_off + n;
    } else if (old.type == ClusterType::kCompressed) {
      r = co_await ReadCompressed(old, cbuf);
    } else {
      const Source src = Classify(old, 0);
      r = co_await FillFrom(src, old, gco, 0, in_off, cbuf);
      if (r >= 0) r = co_await FillFrom(src, old, gco, in_off + n, cluster_bytes_, cbuf);
    }
  } else {
    const bool compressed = old.type == ClusterType::kCompressed;
    // Moving existing data to a new cluster: copy the whole cluster.
    const bool whole = !in_place && (compressed || old.type == ClusterType::kNormal);
    if (compressed) {
      r = co_await ReadCompressed(old, cbuf);
    } else if (whole) {
      r = co_await FillFrom(Source::kData, old, gco, 0, cluster_bytes_, cbuf);
    }
    if (!whole) {
      ws = uint64_t{sa} * subcluster_bytes_;
      we = uint64_t{sb} * subcluster_bytes_;
    }
    // Untouched parts of the edge subclusters keep their current contents.
    if (r >= 0 && !compressed) {
      const uint64_t head_begin = uint64_t{sa} * subcluster_bytes_;
      const Source hs = Classify(old, sa);
      if (!(whole && hs == Source::kData)) {
        r = co_await FillFrom(hs, old, gco, head_begin, in_off, cbuf);
      }
      const uint64_t tail_end = uint64_t{sb} * subcluster_bytes_;
      const Source ts = Classify(old, sb - 1);
      if (r >= 0 && !(whole && ts == Source::kData)) {
        r = co_await FillFrom(ts, old, gco, in_off + n, tail_end, cbuf);
      }
    }
    ne.alloc_bitmap = (compressed ? 0xffffffffu : old.alloc_bitmap) | touched;
    ne.zero_bitmap = compressed ? 0 : (old.zero_bitmap & ~ne.alloc_bitmap);
  }
  if (r >= 0) {
    IovVec wv;
    if (in_off > ws) wv.push_back({cbuf.data() + ws, in_off - ws});
    for (const iovec& v : iov) wv.push_back(v);
    if (we > in_off + n) wv.push_back({cbuf.data() + in_off + n, we - in_off - n});
    int64_t w = co_await data_file()->WriteV(host + ws, wv);
    if (w < 0) r = static_cast<int>(w);
  }
  if (r < 0) {
    if (allocated) {
      co_await meta_mutex_.Lock();
      cache::MutexGuard guard(&meta_mutex_);
      uint64_t nv;
      co_await AddRefcount(host >> cluster_bits_, -1, &nv);
    }
    co_return r;
  }
  if (metadata_writethrough_ && dirty_marked_) {
    // Write-through lets this L2 entry reach the disk before an fsync. If
    // power is lost with the entry durable and the data write not, the
    // cluster shows what was there before; that is fine for the bytes of this
    // (unflushed) request, but not for bytes it did not write, which must
    // keep their flushed contents. Those only survive without an fsync if
    // they were zero and the cluster is fresh (a hole made durable by
    // GrowFileDurably); otherwise make the data durable first (COW, reused
    // clusters, external data files: the rarer allocating writes).
    const bool only_request_bytes =
        in_place && old.type == ClusterType::kNormal && ws == in_off && we == in_off + n;
    const bool zero_before =
        !backing_ &&
        (old.type == ClusterType::kUnallocated || old.type == ClusterType::kZeroPlain) &&
        old.alloc_bitmap == 0;
    if (!only_request_bytes && !(allocated && fresh && zero_before)) {
      r = co_await SyncFiles();
      if (r < 0) {
        if (allocated) {
          co_await meta_mutex_.Lock();
          cache::MutexGuard guard(&meta_mutex_);
          uint64_t nv;
          co_await AddRefcount(host >> cluster_bits_, -1, &nv);
        }
        co_return r;
      }
    }
  }
  if (!in_place) {
    ++stats_.cow_writes;
    QueueFree(old);
  }
  StoreSlot(slot, ne);
  co_return 0;
}

Task<int> Qcow2Image::WriteCompressed(uint64_t g, std::span<const std::byte> cluster) {
  const uint64_t len = cluster.size();
  if (g & (cluster_bytes_ - 1)) co_return -EINVAL;
  if (len == 0 || len > cluster_bytes_) co_return -EINVAL;
  if (len < cluster_bytes_ && g + len != size_bytes_) co_return -EINVAL;
  if (int r = CheckRequest(g, (len + 511) / 512 * 512, true); r < 0) co_return r;
  auto in = cluster_pool_->Acquire();
  std::memcpy(in.data(), cluster.data(), len);
  std::memset(in.data() + len, 0, cluster_bytes_ - len);
  const uint64_t write_len = (len + 511) / 512 * 512;
  iovec v{in.data(), write_len};
  if (external_data()) co_return co_await Write(g, std::span<const iovec>(&v, 1), false);
  auto out = compressed_pool_->Acquire();
  int64_t clen = CompressCluster(header_.compression_type, in.span(),
                                 out.span().subspan(0, cluster_bytes_ - 1));
  if (clen < 0) co_return static_cast<int>(clen);
  if (clen == 0) co_return co_await Write(g, std::span<const iovec>(&v, 1), false);
  {
    int d = co_await MarkDirtyOnce();
    if (d < 0) co_return d;
  }
  const uint64_t gen = meta_gen_;

  const uint64_t gc = g >> cluster_bits_;
  co_await cluster_locks_.Lock(gc, true);
  ClusterLockGuard lock(&cluster_locks_, gc, true);
  Slot slot;
  int r = co_await GetSlot(gc, true, &slot);
  if (r < 0) co_return r;
  L2Entry old;
  r = co_await DecodeSlot(slot, gc, &old);
  if (r < 0) co_return r;
  int64_t a;
  {
    co_await meta_mutex_.Lock();
    cache::MutexGuard guard(&meta_mutex_);
    a = co_await AllocClusters(1);
  }
  if (a < 0) co_return static_cast<int>(a);
  const uint64_t padded = (static_cast<uint64_t>(clen) + 511) / 512 * 512;
  std::memset(out.data() + clen, 0, padded - clen);
  int64_t w = co_await file_->Write(static_cast<uint64_t>(a), out.span().subspan(0, padded));
  if (w < 0) {
    co_await meta_mutex_.Lock();
    cache::MutexGuard guard(&meta_mutex_);
    uint64_t nv;
    co_await AddRefcount(static_cast<uint64_t>(a) >> cluster_bits_, -1, &nv);
    co_return static_cast<int>(w);
  }
  if (metadata_writethrough_) {
    // Write-through lets the L2 entry reach the disk before an fsync; stale
    // bytes under a compressed entry would not decompress (corruption, not
    // just old data), so the compressed data is made durable first. The
    // frontend never issues compressed writes; tools write few.
    int r2 = co_await SyncFiles();
    if (r2 < 0) {
      co_await meta_mutex_.Lock();
      cache::MutexGuard guard(&meta_mutex_);
      uint64_t nv;
      co_await AddRefcount(static_cast<uint64_t>(a) >> cluster_bits_, -1, &nv);
      co_return r2;
    }
  }
  L2Entry ne;
  ne.type = ClusterType::kCompressed;
  ne.compressed_offset = static_cast<uint64_t>(a);
  ne.compressed_length = static_cast<uint64_t>(clen);
  QueueFree(old);
  StoreSlot(slot, ne);
  slot.ref.Reset();
  lock.Release();
  co_return co_await WriteThroughMetadata(gen);
}

// ---------------------------------------------------------------------------
// Discard / write zeroes

Task<int> Qcow2Image::Discard(uint64_t offset_bytes, uint64_t length_bytes) {
  co_return co_await ZeroRange(offset_bytes, length_bytes, true, true);
}

Task<int> Qcow2Image::WriteZeroes(uint64_t offset_bytes, uint64_t length_bytes, bool may_unmap) {
  co_return co_await ZeroRange(offset_bytes, length_bytes, may_unmap, false);
}

Task<int> Qcow2Image::ZeroRange(uint64_t offset_bytes, uint64_t length_bytes, bool may_unmap,
                                bool discard) {
  if (int r = CheckRequest(offset_bytes, length_bytes, true); r < 0) co_return r;
  // A version 2 image has no zero flag: a discarded cluster would show the
  // backing file again, so (as QEMU) discards are ignored there.
  if (discard && header_.version < 3 && backing_) co_return 0;
  {
    int d = co_await MarkDirtyOnce();
    if (d < 0) co_return d;
  }
  const uint64_t gen = meta_gen_;
  const uint64_t table_span_bytes = cluster_bytes_ << l2_bits_;
  uint64_t pos = 0;
  while (pos < length_bytes) {
    const uint64_t g = offset_bytes + pos;
    // Ranges under an unallocated L2 table with nothing below already read
    // as zero: skip the whole table's span (a discard of a mostly empty disk
    // is then cheap).
    if (!backing_ && !data_file_raw_ && (l1_[g / table_span_bytes] & format::kOffsetMask) == 0) {
      pos += std::min(length_bytes - pos, table_span_bytes - g % table_span_bytes);
      continue;
    }
    const uint64_t n = std::min(length_bytes - pos, cluster_bytes_ - (g & (cluster_bytes_ - 1)));
    // A discard leaves partly covered clusters alone (as QEMU); the image's
    // last cluster counts as whole when the range reaches the end of the disk.
    const bool whole =
        (g & (cluster_bytes_ - 1)) == 0 && (n == cluster_bytes_ || g + n == size_bytes_);
    if (!discard || whole) {
      int r = co_await ZeroChunk(g, n, may_unmap);
      if (r < 0) co_return r;
    }
    pos += n;
  }
  {
    int r = co_await WriteThroughMetadata(gen);
    if (r < 0) co_return r;
  }
  co_return co_await MaybeFlushFrees();
}

Task<int> Qcow2Image::ZeroChunk(uint64_t g, uint64_t n, bool may_unmap) {
  const uint64_t gc = g >> cluster_bits_;
  const uint64_t gco = gc << cluster_bits_;
  const uint64_t in_off = g - gco;
  // A raw data file must read as the guest disk by itself: write real zeros.
  // Version 2 has no zero flag: with a backing file only real zeros hide it.
  if (data_file_raw_ || (header_.version < 3 && backing_)) {
    bool zero = false;
    int r = co_await ReadsZero(g, n, &zero);
    if (r < 0 || zero) co_return r;
    co_return co_await WriteChunk(g, n, {});
  }
  uint64_t a = in_off;
  uint64_t b = in_off + n;
  if (extended_l2_) {
    a = (in_off + subcluster_bytes_ - 1) / subcluster_bytes_ * subcluster_bytes_;
    b = (in_off + n) / subcluster_bytes_ * subcluster_bytes_;
    if (a >= b) a = b = in_off + n;  // no whole subcluster
  } else if (n != cluster_bytes_) {
    a = b = in_off + n;  // partial cluster: real zeros
  }
  // Edges that are not whole (sub)clusters get real zeros (if not already).
  for (auto [s, e] :
       {std::pair{in_off, std::min(a, in_off + n)}, std::pair{std::max(b, a), in_off + n}}) {
    if (s >= e) continue;
    bool zero = false;
    int r = co_await ReadsZero(gco + s, e - s, &zero);
    if (r < 0) co_return r;
    if (!zero) {
      r = co_await WriteChunk(gco + s, e - s, {});
      if (r < 0) co_return r;
    }
  }
  if (a >= b) co_return 0;

  co_await cluster_locks_.Lock(gc, true);
  ClusterLockGuard lock(&cluster_locks_, gc, true);
  // No table and nothing below: already reads as zero.
  {
    const uint64_t raw = l1_[gc >> l2_bits_];
    if ((raw & format::kOffsetMask) == 0 && !backing_) co_return 0;
  }
  Slot slot;
  int r = co_await GetSlot(gc, true, &slot);
  if (r < 0) co_return r;
  L2Entry old;
  r = co_await DecodeSlot(slot, gc, &old);
  if (r < 0) co_return r;
  const bool whole = a == 0 && b == cluster_bytes_;
  const bool has_host = (old.type == ClusterType::kNormal || old.type == ClusterType::kZeroAlloc) &&
                        (old.host_offset != 0 || external_data());
  const bool keep_host = has_host && !may_unmap && (old.copied || external_data());
  L2Entry ne;
  bool free_old = false;
  if (!extended_l2_) {
    if (keep_host && header_.version >= 3) {
      ne.type = ClusterType::kZeroAlloc;
      ne.host_offset = old.host_offset;
      ne.copied = true;
    } else {
      ne.type =
          (backing_ && header_.version >= 3) ? ClusterType::kZeroPlain : ClusterType::kUnallocated;
      free_old = true;
    }
  } else if (old.type == ClusterType::kCompressed) {
    if (!whole) {
      // Subcluster bits cannot describe part of a compressed cluster:
      // decompress into a normal cluster with real zeros instead.
      slot.ref.Reset();
      lock.Release();
      co_return co_await WriteChunk(gco + a, b - a, {});
    }
    ne.type = ClusterType::kUnallocated;
    ne.zero_bitmap = backing_ ? 0xffffffffu : 0;
    free_old = true;
  } else if (whole && !keep_host) {
    ne.type = ClusterType::kUnallocated;
    ne.zero_bitmap = backing_ ? 0xffffffffu : 0;
    free_old = true;
  } else {
    const uint32_t m = SubclusterMask(static_cast<uint32_t>(a / subcluster_bytes_),
                                      static_cast<uint32_t>(b / subcluster_bytes_));
    ne = old;
    ne.alloc_bitmap &= ~m;
    ne.zero_bitmap |= m;
  }
  if (free_old) QueueFree(old);
  StoreSlot(slot, ne);
  if (free_old && has_host && external_data() && may_unmap) {
    co_await data_file_->Discard(gco, cluster_bytes_);
  }
  co_return 0;
}

}  // namespace uq::engine
