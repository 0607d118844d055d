#include "src/engine/snapshot.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "format/endian.h"
#include "format/header.h"
#include "format/snapshot.h"
#include "format/status_macros.h"
#include "format/tables.h"
#include "src/engine/check.h"
#include "src/engine/resize.h"
#include "src/engine/snapshot_tree.h"

namespace uq::engine {

ImageParts& SnapshotParts(Qcow2Image& image) { return *image.p_; }

namespace {

using snapshot_internal::ActiveL1;
using snapshot_internal::RecomputeCopied;
using snapshot_internal::StoreActiveL1;
using snapshot_internal::TreeOp;
using snapshot_internal::WalkTree;

// QEMU's QCOW_MAX_SNAPSHOTS and the length of its name buffer (less the NUL).
constexpr uint32_t kMaxSnapshots = 65536;
constexpr size_t kMaxNameBytes = 255;
// QEMU's QCowSnapshotExtraData: vm_state_size_large, disk_size, icount.
constexpr size_t kExtraBytes = 24;

absl::Status Errno(absl::string_view what, int r) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(-r)));
}

uint64_t Clusters(const Geometry& geo, uint64_t bytes) {
  return (bytes + geo.cluster_bytes - 1) >> geo.cluster_bits;
}

absl::Status CheckWritable(ImageParts& p) {
  if (p.meta->read_only()) return absl::FailedPreconditionError("the image is read-only");
  // QEMU refuses snapshots of an image with an external data file (ENOTSUP):
  // the data clusters are not refcounted, so a snapshot could not keep them.
  if (p.meta->external_data()) return absl::UnimplementedError(std::strerror(ENOTSUP));
  return absl::OkStatus();
}

// QEMU rewrites every entry with its full extra data, filling in what an
// older writer left out as it reads it: the 32-bit VM state size, the
// current disk size, and icount unknown (-1).
void CompleteExtraData(format::Snapshot& s, uint64_t disk_size_bytes) {
  const size_t have = s.extra_data.size();
  if (have >= kExtraBytes) return;
  s.extra_data.resize(kExtraBytes);
  if (have < 8) format::StoreBE64(s.extra_data.data(), s.vm_state_size);
  if (have < 16) format::StoreBE64(s.extra_data.data() + 8, disk_size_bytes);
  format::StoreBE64(s.extra_data.data() + 16, ~uint64_t{0});
}

// Allocates and writes `bytes` of metadata; returns its offset (0 for an
// empty buffer) or -errno. The refcounts are durable at the next flush.
Task<int64_t> WriteNew(ImageParts& p, std::span<const std::byte> bytes) {
  if (bytes.empty()) co_return 0;
  int64_t offset = 0;
  {
    co_await p.meta->lock().Lock();
    cache::MutexGuard guard(&p.meta->lock());
    offset = co_await p.refs->Allocate(Clusters(p.geo, bytes.size()));
  }
  if (offset < 0) co_return offset;
  int r = co_await p.meta->CheckWrite(static_cast<uint64_t>(offset), bytes.size());
  if (r < 0) co_return r;
  const int64_t w = co_await p.meta->file().Write(static_cast<uint64_t>(offset), bytes);
  if (w < 0) co_return p.meta->Fail(static_cast<int>(w), "snapshot metadata write");
  co_return offset;
}

std::vector<std::byte> EncodeL1(const std::vector<uint64_t>& l1) {
  std::vector<std::byte> buf(l1.size() * 8);
  for (size_t i = 0; i < l1.size(); ++i) format::StoreBE64(&buf[i * 8], l1[i]);
  return buf;
}

Task<absl::StatusOr<std::vector<uint64_t>>> ReadL1(ImageParts& p, const format::Snapshot& s) {
  std::vector<std::byte> buf(uint64_t{s.l1_size} * 8);
  if (!buf.empty()) {
    if (s.l1_table_offset == 0 || s.l1_table_offset + buf.size() > p.meta->file().size_bytes()) {
      co_return absl::DataLossError(absl::StrCat("snapshot '", s.name, "': L1 table at ",
                                                 s.l1_table_offset, " is outside the file"));
    }
    const int64_t r = co_await p.meta->file().Read(s.l1_table_offset, buf);
    if (r < 0) co_return Errno("reading the snapshot's L1 table", static_cast<int>(r));
  }
  std::vector<uint64_t> l1(s.l1_size);
  for (size_t i = 0; i < l1.size(); ++i) l1[i] = format::LoadBE64(&buf[i * 8]);
  co_return l1;
}

// Writes `snaps` as the new snapshot table, makes everything durable, points
// the header at it, then queues the old table's clusters for freeing.
Task<absl::Status> ReplaceTable(Qcow2Image& image, const std::vector<format::Snapshot>& snaps) {
  ImageParts& p = SnapshotParts(image);
  const format::Header old = p.meta->header();
  // The old table as it is on disk (the entries in `snaps` may have grown).
  absl::StatusOr<std::vector<format::Snapshot>> on_disk =
      co_await ReadSnapshotTable(p.meta->file(), old);
  if (!on_disk.ok()) co_return on_disk.status();
  const uint64_t old_bytes = on_disk->empty() ? 0 : format::SnapshotTableSize(*on_disk);
  std::vector<std::byte> table(format::SnapshotTableSize(snaps));
  format::EncodeSnapshotTable(snaps, table);
  const int64_t offset = co_await WriteNew(p, table);
  if (offset < 0) co_return Errno("Failed to write the snapshot table", static_cast<int>(offset));
  // The table, its refcounts and every refcount and L2 change before it are
  // durable before the header names it.
  int r = co_await image.Flush();
  if (r >= 0) {
    r = co_await p.meta->SetSnapshotTable(static_cast<uint64_t>(offset),
                                          static_cast<uint32_t>(snaps.size()));
  }
  if (r >= 0) r = co_await p.meta->Sync();
  if (r < 0) co_return Errno("Failed to update the snapshot table", r);
  OverlapMap& m = p.meta->overlaps();
  m.Replace(m.RegionOf(Metadata::kSnapshotTable, old.snapshots_offset, old_bytes),
            m.RegionOf(Metadata::kSnapshotTable, static_cast<uint64_t>(offset), table.size()));
  if (old_bytes > 0) {
    p.refs->QueueFree(p.geo.ClusterIndex(old.snapshots_offset), Clusters(p.geo, old_bytes));
  }
  co_return absl::OkStatus();
}

// A version 2 image has no dirty bit: its snapshot changes are made out of
// place and switched with one header write (SwitchTrees).
bool OutOfPlace(ImageParts& p) { return p.meta->version() < 3; }

// Switches the image to the active L1 entries `l1`, the snapshot table
// `snaps` (null: the table stays) and the disk size `size_bytes` (nullopt:
// it stays), then reloads the parts that held the old tables. The new state
// is counted afresh, so the same write clears a version 3 image's dirty bit.
Task<absl::Status> SwitchOutOfPlace(Qcow2Image& image, std::vector<uint64_t> l1,
                                    const std::vector<format::Snapshot>* snaps,
                                    std::optional<uint64_t> size_bytes = std::nullopt) {
  ImageParts& p = SnapshotParts(image);
  // Every earlier change on disk (the second flush applies the frees the
  // first one queued), and the file ending where its clusters do.
  int r = co_await image.Flush();
  if (r >= 0) r = co_await image.Flush();
  if (r < 0) co_return Errno("Failed to flush the image", r);
  {
    co_await p.meta->lock().Lock();
    cache::MutexGuard guard(&p.meta->lock());
    co_await p.refs->TrimReserve();
  }
  format::Header h = p.meta->header();
  h.incompatible_features &= ~format::kIncompatDirty;
  bool header_written = false;
  // A named local: GCC 12 destroys an aggregate temporary in a co_await
  // expression twice.
  const NewTrees trees{std::move(l1), snaps, size_bytes};
  absl::Status st = co_await SwitchTrees(p.meta->file(), h, trees, &header_written);
  if (st.ok()) st = co_await ReloadTables(p, h);
  if (!st.ok() && header_written) {
    // The header may name the old tables or the new ones: fail-stop.
    p.meta->Fail(-EIO, "switching to the new snapshot tables");
  }
  co_return st;
}

// Dirty bit durable (version 3) and every earlier change on disk.
Task<absl::Status> Begin(Qcow2Image& image) {
  ImageParts& p = SnapshotParts(image);
  int r = co_await p.order->MarkDirty(/*always=*/true);
  if (r >= 0) r = co_await image.Flush();
  if (r < 0) co_return Errno("Failed to flush the image", r);
  co_return absl::OkStatus();
}

Task<absl::StatusOr<std::vector<format::Snapshot>>> Snapshots(ImageParts& p) {
  UQ_CO_ASSIGN_OR_RETURN(std::vector<format::Snapshot> snaps,
                         co_await ReadSnapshotTable(p.meta->file(), p.meta->header()));
  for (format::Snapshot& s : snaps) CompleteExtraData(s, p.size_bytes);
  co_return snaps;
}

// QEMU's find_new_snapshot_id: one more than the largest numeric id.
std::string NextId(const std::vector<format::Snapshot>& snaps) {
  uint64_t max = 0;
  for (const format::Snapshot& s : snaps)
    max = std::max<uint64_t>(max, std::strtoul(s.id.c_str(), nullptr, 10));
  return absl::StrCat(max + 1);
}

// The snapshot table of an image that a snapshot change may write.
Task<absl::StatusOr<std::vector<format::Snapshot>>> SnapshotsToChange(ImageParts& p) {
  UQ_CO_RETURN_IF_ERROR(CheckWritable(p));
  co_return co_await Snapshots(p);
}

}  // namespace

Task<absl::Status> CreateSnapshot(Qcow2Image& image, const NewSnapshot& request) {
  ImageParts& p = SnapshotParts(image);
  UQ_CO_ASSIGN_OR_RETURN(std::vector<format::Snapshot> snaps, co_await SnapshotsToChange(p));
  if (snaps.size() >= kMaxSnapshots) co_return absl::OutOfRangeError(std::strerror(EFBIG));
  // One-bit refcounts cannot count a second reference (QEMU fails with
  // EINVAL half-way, leaking a cluster; this refuses up front).
  if (p.geo.refcount_order == 0) co_return absl::InvalidArgumentError(std::strerror(EINVAL));
  if (!OutOfPlace(p)) UQ_CO_RETURN_IF_ERROR(co_await Begin(image));

  format::Snapshot s;
  s.id = NextId(snaps);
  s.name = request.name.substr(0, kMaxNameBytes);
  s.date_sec = request.date_sec;
  s.date_nsec = request.date_nsec;
  s.extra_data.assign(kExtraBytes, std::byte{0});  // no VM state; icount 0 as qemu-img
  format::StoreBE64(s.extra_data.data() + 8, p.size_bytes);
  // The snapshot's L1 table: the active one as it is (COPIED flags of an
  // inactive table mean nothing).
  const std::vector<uint64_t> active = ActiveL1(p);
  if (OutOfPlace(p)) {
    // The old active L1 table becomes the snapshot's as it stands; the new
    // active tree is a copy.
    s.l1_table_offset = p.l2->l1_offset_bytes();
    s.l1_size = static_cast<uint32_t>(active.size());
    snaps.push_back(s);
    co_return co_await SwitchOutOfPlace(image, active, &snaps);
  }
  const std::vector<std::byte> l1_bytes = EncodeL1(active);
  const int64_t l1_offset = co_await WriteNew(p, l1_bytes);
  if (l1_offset < 0)
    co_return Errno("Failed to write the snapshot's L1 table", static_cast<int>(l1_offset));
  s.l1_table_offset = static_cast<uint64_t>(l1_offset);
  s.l1_size = static_cast<uint32_t>(active.size());
  {
    co_await p.meta->lock().Lock();
    cache::MutexGuard guard(&p.meta->lock());
    std::vector<uint64_t> l1 = active;
    int r = co_await WalkTree(p, l1, TreeOp::kAddReference);
    StoreActiveL1(p, l1);
    if (r < 0) co_return Errno("Failed to update the refcounts", r);
  }
  snaps.push_back(s);
  UQ_CO_RETURN_IF_ERROR(co_await ReplaceTable(image, snaps));
  OverlapMap& m = p.meta->overlaps();
  m.Add(m.RegionOf(Metadata::kInactiveL1, s.l1_table_offset, l1_bytes.size()));
  co_return absl::OkStatus();
}

Task<absl::Status> DeleteSnapshot(Qcow2Image& image, const std::string& name) {
  ImageParts& p = SnapshotParts(image);
  UQ_CO_ASSIGN_OR_RETURN(std::vector<format::Snapshot> snaps, co_await SnapshotsToChange(p));
  auto it = std::find_if(snaps.begin(), snaps.end(),
                         [&](const format::Snapshot& s) { return s.name == name; });
  if (it == snaps.end()) co_return absl::NotFoundError("snapshot not found");
  const format::Snapshot gone = *it;
  UQ_CO_ASSIGN_OR_RETURN(std::vector<uint64_t> l1, co_await ReadL1(p, gone));
  if (OutOfPlace(p)) {
    snaps.erase(it);
    co_return co_await SwitchOutOfPlace(image, ActiveL1(p), &snaps);
  }
  UQ_CO_RETURN_IF_ERROR(co_await Begin(image));
  snaps.erase(it);
  UQ_CO_RETURN_IF_ERROR(co_await ReplaceTable(image, snaps));
  // Nothing durable names the snapshot's tree any more.
  const uint64_t l1_bytes = l1.size() * 8;
  OverlapMap& m = p.meta->overlaps();
  m.Remove(m.RegionOf(Metadata::kInactiveL1, gone.l1_table_offset, l1_bytes));
  {
    co_await p.meta->lock().Lock();
    cache::MutexGuard guard(&p.meta->lock());
    int r = co_await WalkTree(p, l1, TreeOp::kDropReference);
    if (r < 0) co_return Errno("Failed to drop the snapshot's references", r);
    if (l1_bytes > 0) {
      p.refs->QueueFree(p.geo.ClusterIndex(gone.l1_table_offset), Clusters(p.geo, l1_bytes));
    }
  }
  int r = co_await image.Flush();  // applies the frees
  if (r >= 0) r = co_await RecomputeCopied(p);
  if (r >= 0) r = co_await image.Flush();
  if (r < 0) co_return Errno("Failed to free the snapshot's clusters", r);
  co_return absl::OkStatus();
}

Task<absl::Status> RevertSnapshot(Qcow2Image& image, const std::string& id_or_name) {
  ImageParts& p = SnapshotParts(image);
  UQ_CO_ASSIGN_OR_RETURN(std::vector<format::Snapshot> snaps, co_await SnapshotsToChange(p));
  auto it = std::find_if(snaps.begin(), snaps.end(),
                         [&](const format::Snapshot& s) { return s.id == id_or_name; });
  if (it == snaps.end()) {
    it = std::find_if(snaps.begin(), snaps.end(),
                      [&](const format::Snapshot& s) { return s.name == id_or_name; });
  }
  if (it == snaps.end()) {
    co_return absl::NotFoundError("Failed to load snapshot: No such file or directory");
  }
  const format::Snapshot target = *it;
  UQ_CO_ASSIGN_OR_RETURN(std::vector<uint64_t> sn_l1, co_await ReadL1(p, target));
  // A snapshot's L1 table longer than the active one (an image whose L1
  // table another tool shrank): the active table grows to its length first,
  // as QEMU's qcow2_snapshot_goto grows it. Checked before anything changes.
  UQ_CO_RETURN_IF_ERROR(CheckL1Growth(p.geo, p.l2->l1_entries(), sn_l1.size()));
  const uint64_t disk_size = target.disk_size_bytes();
  const bool resized = disk_size != p.size_bytes;
  if (resized) {
    // QEMU resizes first and then reverts, so a crash between the two leaves
    // the resized disk with the old contents. Here the size changes in the
    // header write that switches the tables; the refusals are resize's.
    if (disk_size % 512 != 0) {
      co_return absl::InvalidArgumentError("The new size must be a multiple of 512");
    }
    if (OutOfPlace(p)) {
      co_return absl::FailedPreconditionError("Can't resize a v2 image which has snapshots");
    }
  }
  if (OutOfPlace(p) || resized) {
    const uint64_t span = p.geo.table_span_bytes();
    const uint64_t entries = std::max<uint64_t>(
        {p.l2->l1_entries(), sn_l1.size(), disk_size / span + (disk_size % span != 0)});
    UQ_CO_RETURN_IF_ERROR(CheckL1Growth(p.geo, p.l2->l1_entries(), entries));
    std::vector<uint64_t> l1(entries, 0);
    std::copy(sn_l1.begin(), sn_l1.end(), l1.begin());
    std::optional<uint64_t> new_size;
    if (resized) new_size = disk_size;
    co_return co_await SwitchOutOfPlace(image, std::move(l1), nullptr, new_size);
  }
  UQ_CO_RETURN_IF_ERROR(co_await Begin(image));
  if (sn_l1.size() > p.l2->l1_entries()) {
    UQ_CO_RETURN_IF_ERROR(co_await GrowL1Table(p, sn_l1.size()));
  }
  std::vector<uint64_t> l1(p.l2->l1_entries(), 0);
  std::copy(sn_l1.begin(), sn_l1.end(), l1.begin());
  {
    co_await p.meta->lock().Lock();
    cache::MutexGuard guard(&p.meta->lock());
    int r = co_await WalkTree(p, l1, TreeOp::kAddReference);
    if (r < 0) co_return Errno("Failed to update the refcounts", r);
  }
  // The snapshot's tree holds its new references durably before the active
  // L1 table names it.
  int r = co_await image.Flush();
  if (r < 0) co_return Errno("Failed to flush the image", r);
  {
    co_await p.meta->lock().Lock();
    cache::MutexGuard guard(&p.meta->lock());
    std::vector<uint64_t> old = ActiveL1(p);
    StoreActiveL1(p, l1);
    // Queued after the L1 change: applied once the new table is durable.
    r = co_await WalkTree(p, old, TreeOp::kDropReference);
  }
  if (r >= 0) r = co_await image.Flush();
  if (r >= 0) r = co_await RecomputeCopied(p);
  if (r >= 0) r = co_await image.Flush();
  if (r < 0) co_return Errno("Failed to revert to the snapshot", r);
  co_return absl::OkStatus();
}

}  // namespace uq::engine
