// ChangeRefcountOrder (check.h): the dirty-image rebuild's counting and
// writing, at another refcount width.
#include <cstdint>
#include <string>

#include "absl/strings/str_format.h"
#include "format/snapshot.h"
#include "format/status_macros.h"
#include "src/engine/check.h"
#include "src/engine/check_internal.h"

namespace uq::engine {

Task<absl::Status> ChangeRefcountOrder(io::BlockFile& file, format::Header& header,
                                       uint32_t new_order) {
  if (header.version < 3 || new_order > 6) {
    co_return absl::InvalidArgumentError("refcount width change needs a v3 image and order <= 6");
  }
  check_internal::Scan s(file, header, nullptr);
  s.count_refcount_structures = false;  // the old structures become free
  UQ_CO_ASSIGN_OR_RETURN(s.snapshots, co_await ReadSnapshotTable(file, header));
  s.snapshots_size = s.snapshots.empty() ? 0 : format::SnapshotTableSize(s.snapshots);
  s.refs.Grow(s.file_clusters());
  UQ_CO_RETURN_IF_ERROR(co_await check_internal::CountReferences(s, RepairMode::kNone));
  UQ_CO_RETURN_IF_ERROR(check_internal::NoCorruptions(s, "cannot change the refcount width"));
  const uint32_t bits = 1u << new_order;
  const uint64_t max = bits == 64 ? UINT64_MAX : (uint64_t{1} << bits) - 1;
  for (uint64_t c = 0; c < s.refs.size(); ++c) {
    if (s.refs.Get(c) > max) {
      co_return absl::InvalidArgumentError(absl::StrFormat(
          "Cannot decrease refcount entry width to %d bits: Cluster at offset %#x has a refcount "
          "of %d",
          bits, c * s.cluster_bytes, s.refs.Get(c)));
    }
  }
  s.h.refcount_order = new_order;
  UQ_CO_RETURN_IF_ERROR(co_await check_internal::WriteNewRefcountStructure(s, false, true));
  header = s.h;
  co_return absl::OkStatus();
}

}  // namespace uq::engine
