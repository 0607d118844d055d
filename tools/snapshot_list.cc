#include "tools/snapshot_list.h"

#include <ctime>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "format/endian.h"
#include "tools/util.h"

namespace uq::tools {
namespace {

std::string FormatDate(uint32_t date_sec) {
  const time_t t = static_cast<time_t>(date_sec);
  struct tm tm;
  localtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

}  // namespace

// Snapshot extra data (spec "Snapshots"): bytes 0..7 vm_state_size_large,
// 8..15 disk size, 16..23 icount (-1 = unknown).
uint64_t VmStateSize(const format::Snapshot& s) {
  if (s.extra_data.size() >= 8) return format::LoadBE64(s.extra_data.data());
  return s.vm_state_size;
}

std::optional<int64_t> Icount(const format::Snapshot& s) {
  if (s.extra_data.size() < 24) return std::nullopt;
  const uint64_t v = format::LoadBE64(s.extra_data.data() + 16);
  if (v == ~uint64_t{0}) return std::nullopt;
  return static_cast<int64_t>(v);
}

std::string SnapshotListText(const std::vector<format::Snapshot>& snapshots) {
  std::string out =
      absl::StrCat("Snapshot list:\n", absl::StrFormat("%-10s%-17s%8s%20s%13s%11s\n", "ID", "TAG",
                                                       "VM SIZE", "DATE", "VM CLOCK", "ICOUNT"));
  for (const format::Snapshot& s : snapshots) {
    const uint64_t clock_ms = s.vm_clock_nsec / 1000000;
    const std::string clock =
        absl::StrFormat("%02d:%02d:%02d.%03d", clock_ms / 3600000, (clock_ms / 60000) % 60,
                        (clock_ms / 1000) % 60, clock_ms % 1000);
    const std::optional<int64_t> icount = Icount(s);
    absl::StrAppend(&out, absl::StrFormat("%-9s %-16s %8s%20s%13s%11s\n", s.id, s.name,
                                          HumanSize(VmStateSize(s)), FormatDate(s.date_sec), clock,
                                          icount ? absl::StrCat(*icount) : ""));
  }
  return out;
}

}  // namespace uq::tools
