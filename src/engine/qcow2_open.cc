// Qcow2Image::Open, one named step at a time: header, what may be opened,
// data file, backing chain, repair of a dirty image, the L1 table (active or
// a snapshot's), the refcount table, autoclear bits; then the parts.
#include <cerrno>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "format/endian.h"
#include "format/snapshot.h"
#include "format/status_macros.h"
#include "src/engine/check.h"
#include "src/engine/named_file.h"
#include "src/engine/qcow2_image.h"
#include "src/io/aligned_file.h"

namespace uq::engine {

namespace {

constexpr uint64_t kDefaultL2CacheBytes = 8ull << 20;

absl::Status ReadError(const char* what, int64_t r) {
  return absl::DataLossError(
      absl::StrCat("reading ", what, ": ", std::strerror(static_cast<int>(-r))));
}

std::string ResolvePath(const std::string& image_path, const std::string& name) {
  if (name.empty() || name[0] == '/') return name;
  size_t slash = image_path.rfind('/');
  if (slash == std::string::npos) return name;
  return image_path.substr(0, slash + 1) + name;
}

Task<absl::StatusOr<format::Header>> ReadHeader(io::BlockFile& f) {
  std::vector<std::byte> first(512);
  int64_t r = co_await f.Read(0, first);
  if (r < 0) co_return ReadError("header", r);
  UQ_CO_ASSIGN_OR_RETURN(uint64_t header_bytes, format::HeaderReadSize(first));
  std::vector<std::byte> buf(header_bytes);
  r = co_await f.Read(0, buf);
  if (r < 0) co_return ReadError("header", r);
  co_return format::DecodeHeader(buf, {.file_size_bytes = f.size_bytes()});
}

absl::Status CheckOpenable(const format::Header& h, bool read_only) {
  if (h.crypt_method != 0 || h.has_crypto_extension) {
    return absl::UnimplementedError("encrypted qcow2 images are not supported");
  }
  if ((h.incompatible_features & format::kIncompatCorrupt) && !read_only) {
    return absl::FailedPreconditionError(
        "image is marked corrupt (incompatible feature bit 1); it can only be opened read-only "
        "(repair it with `qcow2-img check -r all`)");
  }
  return absl::OkStatus();
}

// The external data file, or null if the image has none: the one the user
// named (options.data_file_path), else the header's name checked against the
// host-path policy (named_file.h).
absl::StatusOr<std::unique_ptr<io::BlockFile>> OpenDataFile(const format::Header& h,
                                                            const OpenOptions& options,
                                                            bool writable,
                                                            const std::vector<ChainImage>& chain) {
  const bool user_named = !options.data_file_path.empty();
  if (!h.has_data_file()) {
    if (user_named) {
      return absl::InvalidArgumentError(
          absl::StrCat("--data-file '", options.data_file_path,
                       "' given, but the image has no external data file"));
    }
    return nullptr;
  }
  if (!user_named && (!h.data_file || h.data_file->empty())) {
    return absl::InvalidArgumentError(
        "image has the external data file bit but names no data file");
  }
  if (!options.opener) {
    return absl::InvalidArgumentError("image needs an external data file but no opener");
  }
  const std::string path =
      user_named ? options.data_file_path : ResolvePath(options.path, *h.data_file);
  const NamedFile named{
      .image_path = options.path, .path = path, .role = NamedRole::kDataFile, .writable = writable};
  if (options.check_named_files && !user_named) {
    UQ_RETURN_IF_ERROR(CheckNamedFile(named, options.allow_devices));
  }
  if (options.check_named_files) {
    UQ_RETURN_IF_ERROR(CheckNotInChain(named, chain));
  }
  auto df = options.opener(path, writable);
  if (!df.ok()) {
    return absl::Status(df.status().code(),
                        absl::StrCat("data file '", path, "': ", df.status().message()));
  }
  std::unique_ptr<io::BlockFile> file = std::move(*df);
  if (options.file_alignment_bytes > 1) {
    file = std::make_unique<io::AlignedFile>(std::move(file), options.file_alignment_bytes);
  }
  return file;
}

// The format a backing file is opened as: the one the image names (only
// formats this engine has), else probed (kAuto).
absl::StatusOr<ImageFormat> BackingFormat(const format::Header& h) {
  if (!h.backing_format || h.backing_format->empty()) return ImageFormat::kAuto;
  if (*h.backing_format == "qcow2") return ImageFormat::kQcow2;
  if (*h.backing_format == "raw") return ImageFormat::kRaw;
  return absl::UnimplementedError(absl::StrCat("backing file '", h.backing_file, "' has format '",
                                               *h.backing_format,
                                               "', which is not supported (qcow2 or raw)"));
}

// A backing file whose format its overlay does not name was probed; if it
// turned out qcow2, it may not lead on to files it names itself.
absl::Status CheckProbedFollows(const format::Header& h, const OpenOptions& options) {
  if (!options.unnamed_format) return absl::OkStatus();
  return engine::CheckProbedFollows(h, options.unnamed_format->overlay_path,
                                    options.unnamed_format->backing_name);
}

// With the host-path policy on: the images from the top of the chain down to
// this one, by identity (a file that cannot be stat'ed is left out; its own
// open failed or will fail).
std::vector<ChainImage> ChainThrough(const OpenOptions& options) {
  std::vector<ChainImage> chain = options.images_above;
  if (!options.check_named_files) return chain;
  const std::optional<FileId> self = IdentifyFile(options.path);
  if (self) chain.push_back({*self, options.path});
  return chain;
}

// The backing chain below the image (read-only), or null if it has none.
Task<absl::StatusOr<std::unique_ptr<Device>>> OpenBacking(const format::Header& h,
                                                          const OpenOptions& options,
                                                          const std::vector<ChainImage>& chain) {
  if (h.backing_file.empty()) co_return nullptr;
  if (options.max_backing_depth == 0) {
    co_return absl::InvalidArgumentError("backing chain too deep (a loop?)");
  }
  if (!options.opener) {
    co_return absl::InvalidArgumentError(
        absl::StrCat("image has backing file '", h.backing_file, "' but no opener was given"));
  }
  UQ_CO_ASSIGN_OR_RETURN(const ImageFormat format, BackingFormat(h));
  std::string path = ResolvePath(options.path, h.backing_file);
  if (options.check_named_files) {
    const NamedFile named{
        .image_path = options.path, .path = path, .role = NamedRole::kBacking, .writable = false};
    UQ_CO_RETURN_IF_ERROR(CheckNamedFile(named, options.allow_devices));
    UQ_CO_RETURN_IF_ERROR(CheckNotInChain(named, chain));
  }
  // Always read-only: an overlay never writes to its backing file.
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
  bo.check_named_files = options.check_named_files;
  bo.allow_devices = options.allow_devices;
  bo.format = format;
  bo.images_above = chain;
  if (format == ImageFormat::kAuto) {
    bo.unnamed_format = OpenOptions::UnnamedFormat{options.path, h.backing_file};
  }
  auto dev = co_await OpenImage(std::move(*bf), bo);
  if (!dev.ok()) {
    co_return absl::Status(dev.status().code(),
                           absl::StrCat("backing file '", path, "': ", dev.status().message()));
  }
  co_return std::move(*dev);
}

struct L1Location {
  uint64_t offset_bytes = 0;
  uint64_t entries = 0;
  uint64_t disk_size_bytes = 0;  // the guest disk it maps
};

// The active L1 table, or the named snapshot's.
Task<absl::StatusOr<L1Location>> SelectL1(io::BlockFile& f, const format::Header& h,
                                          const std::string& snapshot) {
  L1Location l1{h.l1_table_offset, h.l1_size, h.size_bytes};
  if (snapshot.empty()) co_return l1;
  UQ_CO_ASSIGN_OR_RETURN(std::vector<format::Snapshot> snaps, co_await ReadSnapshotTable(f, h));
  const format::Snapshot* found = nullptr;
  for (const format::Snapshot& s : snaps) {
    if (s.name == snapshot) found = &s;
  }
  if (found == nullptr) {
    for (const format::Snapshot& s : snaps) {
      if (s.id == snapshot) found = &s;
    }
  }
  if (found == nullptr) {
    co_return absl::NotFoundError(absl::StrCat("no snapshot named '", snapshot, "'"));
  }
  l1.offset_bytes = found->l1_table_offset;
  l1.entries = found->l1_size;
  if (found->disk_size_bytes() != 0) l1.disk_size_bytes = found->disk_size_bytes();
  co_return l1;
}

Task<absl::StatusOr<std::vector<uint64_t>>> LoadL1(io::BlockFile& f, const L1Location& l1,
                                                   const Geometry& geo) {
  const uint64_t guest_clusters = (l1.disk_size_bytes + geo.cluster_bytes - 1) >> geo.cluster_bits;
  const uint64_t needed = (guest_clusters + (uint64_t{1} << geo.l2_bits) - 1) >> geo.l2_bits;
  if (l1.entries * 8 > format::kMaxL1Bytes) {
    co_return absl::InvalidArgumentError(absl::StrCat("L1 table too large: ", l1.entries));
  }
  if (l1.entries < needed) {
    co_return absl::InvalidArgumentError(
        absl::StrCat("L1 table has ", l1.entries, " entries; the disk size needs ", needed));
  }
  if (l1.entries > 0 && (l1.offset_bytes == 0 || !geo.ClusterAligned(l1.offset_bytes))) {
    co_return absl::InvalidArgumentError(
        absl::StrCat("L1 table offset ", l1.offset_bytes, " is not cluster aligned"));
  }
  std::vector<std::byte> buf(l1.entries * 8);
  if (!buf.empty()) {
    int64_t r = co_await f.Read(l1.offset_bytes, buf);
    if (r < 0) co_return ReadError("L1", r);
  }
  std::vector<uint64_t> table(l1.entries);
  for (uint64_t i = 0; i < l1.entries; ++i) table[i] = format::LoadBE64(&buf[i * 8]);
  co_return table;
}

Task<absl::StatusOr<std::vector<uint64_t>>> LoadRefcountTable(io::BlockFile& f,
                                                              const format::Header& h,
                                                              const Geometry& geo) {
  const uint64_t bytes = uint64_t{h.refcount_table_clusters} << h.cluster_bits;
  if (bytes > format::kMaxRefcountTableBytes || bytes == 0) {
    co_return absl::InvalidArgumentError(
        absl::StrCat("refcount table size ", h.refcount_table_clusters, " clusters is invalid"));
  }
  if (h.refcount_table_offset == 0 || !geo.ClusterAligned(h.refcount_table_offset)) {
    co_return absl::InvalidArgumentError(
        absl::StrCat("refcount table offset ", h.refcount_table_offset, " is not cluster aligned"));
  }
  std::vector<std::byte> buf(bytes);
  int64_t r = co_await f.Read(h.refcount_table_offset, buf);
  if (r < 0) co_return ReadError("refcount table", r);
  std::vector<uint64_t> table(bytes / 8);
  for (uint64_t i = 0; i < bytes / 8; ++i) {
    auto off = format::DecodeRefcountTableEntry(format::LoadBE64(&buf[i * 8]));
    if (!off.ok()) {
      co_return absl::InvalidArgumentError(
          absl::StrCat("refcount table entry ", i, ": ", off.status().message()));
    }
    if (!geo.ClusterAligned(*off)) {
      co_return absl::InvalidArgumentError(
          absl::StrCat("refcount block ", i, " offset ", *off, " is not cluster aligned"));
    }
    table[i] = *off;
  }
  co_return table;
}

// A writer clears unknown autoclear bits (the spec), and the bitmaps bit:
// this engine does not maintain bitmaps, so after our writes they would be
// stale.
Task<absl::Status> ClearAutoclear(MetaFile& meta) {
  format::Header h = meta.header();
  bool changed = format::ClearUnknownAutoclear(h);
  if (h.autoclear_features & format::kAutoclearBitmaps) {
    h.autoclear_features &= ~format::kAutoclearBitmaps;
    changed = true;
  }
  if (!changed) co_return absl::OkStatus();
  int w = co_await meta.SetAutoclearFeatures(h.autoclear_features);
  if (w >= 0) w = co_await meta.Sync();
  if (w < 0) co_return absl::DataLossError(absl::StrCat("writing header: ", std::strerror(-w)));
  co_return absl::OkStatus();
}

}  // namespace

Task<absl::Status> ReloadTables(ImageParts& p, const format::Header& h) {
  io::BlockFile& f = p.meta->file();
  const L1Location location{h.l1_table_offset, h.l1_size, h.size_bytes};
  UQ_CO_ASSIGN_OR_RETURN(std::vector<uint64_t> l1_table, co_await LoadL1(f, location, p.geo));
  UQ_CO_ASSIGN_OR_RETURN(std::vector<uint64_t> reftable, co_await LoadRefcountTable(f, h, p.geo));
  UQ_CO_ASSIGN_OR_RETURN(std::vector<format::Snapshot> snapshots, co_await ReadSnapshotTable(f, h));
  const uint64_t l2_budget = p.l2->cache().capacity_slices() * p.geo.slice_bytes;
  const uint64_t rc_budget = p.refs->cache().capacity_slices() * p.geo.slice_bytes;
  const bool writethrough = p.order->writethrough();
  const bool lazy_refcounts = (h.compatible_features & format::kCompatLazyRefcounts) != 0;
  p.meta->AdoptTables(h);
  p.size_bytes = h.size_bytes;
  OverlapMap& overlaps = p.meta->overlaps();
  overlaps.Reset(MetadataRegions(overlaps, h, l1_table, reftable, snapshots));
  // Users first: the write order and the L2 map point at the store.
  p.order.reset();
  p.l2.reset();
  p.refs.reset();
  p.refs = std::make_unique<RefcountStore>(p.meta.get(), p.geo, std::move(reftable), rc_budget,
                                           writethrough);
  p.l2 = std::make_unique<L2Map>(p.meta.get(), p.refs.get(), p.geo, std::move(l1_table),
                                 h.l1_table_offset, l2_budget, writethrough);
  p.order = std::make_unique<WriteOrder>(p.meta.get(), p.refs.get(), p.l2.get(), writethrough,
                                         lazy_refcounts);
  co_return absl::OkStatus();
}

Task<absl::StatusOr<std::unique_ptr<Qcow2Image>>> Qcow2Image::Open(
    std::unique_ptr<io::BlockFile> file, const OpenOptions& options) {
  io::BlockFile& f = *file;
  UQ_CO_ASSIGN_OR_RETURN(format::Header h, co_await ReadHeader(f));
  const bool read_only = options.read_only || f.read_only() || !options.snapshot.empty();
  UQ_CO_RETURN_IF_ERROR(CheckOpenable(h, read_only));
  UQ_CO_RETURN_IF_ERROR(CheckProbedFollows(h, options));
  const std::vector<ChainImage> chain = ChainThrough(options);
  UQ_CO_ASSIGN_OR_RETURN(std::unique_ptr<io::BlockFile> data_file,
                         OpenDataFile(h, options, !read_only, chain));
  UQ_CO_ASSIGN_OR_RETURN(std::unique_ptr<Device> backing, co_await OpenBacking(h, options, chain));
  // A dirty image has unreliable refcounts: rebuild them before any write.
  if ((h.incompatible_features & format::kIncompatDirty) && !read_only) {
    UQ_CO_RETURN_IF_ERROR(co_await RebuildRefcounts(f, h));
  }
  const Geometry geo = Geometry::FromHeader(h);
  UQ_CO_ASSIGN_OR_RETURN(L1Location l1, co_await SelectL1(f, h, options.snapshot));
  UQ_CO_ASSIGN_OR_RETURN(std::vector<uint64_t> l1_table, co_await LoadL1(f, l1, geo));
  UQ_CO_ASSIGN_OR_RETURN(std::vector<uint64_t> reftable, co_await LoadRefcountTable(f, h, geo));

  std::vector<format::Snapshot> snapshots;
  if (!read_only && h.nb_snapshots > 0) {
    UQ_CO_ASSIGN_OR_RETURN(snapshots, co_await ReadSnapshotTable(f, h));
  }

  auto p = std::make_unique<ImageParts>(geo);
  p->size_bytes = l1.disk_size_bytes;
  p->meta = std::make_unique<MetaFile>(std::move(file), std::move(data_file), h, read_only);
  // Only writes consult the overlap map (a snapshot opens read-only).
  if (!read_only) {
    OverlapMap& overlaps = p->meta->overlaps();
    overlaps.Reset(MetadataRegions(overlaps, h, l1_table, reftable, snapshots));
  }
  if (!read_only) UQ_CO_RETURN_IF_ERROR(co_await ClearAutoclear(*p->meta));
  if (backing) {
    p->backing_size_bytes = backing->size_bytes();
    p->backing = std::move(backing);
  }
  const bool writethrough = options.metadata_writethrough;
  const uint64_t l2_budget = options.l2_cache_bytes ? options.l2_cache_bytes : kDefaultL2CacheBytes;
  const uint64_t rc_budget =
      options.refcount_cache_bytes ? options.refcount_cache_bytes : l2_budget / 4;
  p->refs = std::make_unique<RefcountStore>(p->meta.get(), geo, std::move(reftable), rc_budget,
                                            writethrough);
  p->l2 = std::make_unique<L2Map>(p->meta.get(), p->refs.get(), geo, std::move(l1_table),
                                  l1.offset_bytes, l2_budget, writethrough);
  const bool lazy_refcounts = (h.compatible_features & format::kCompatLazyRefcounts) != 0;
  p->order = std::make_unique<WriteOrder>(p->meta.get(), p->refs.get(), p->l2.get(), writethrough,
                                          lazy_refcounts);
  co_return std::unique_ptr<Qcow2Image>(new Qcow2Image(std::move(p)));
}

}  // namespace uq::engine
