// qcow2-img map: where each guest range of an image lives, through its
// backing chain, printed as qemu-img 7.2's map prints it (its JSON lines are
// hand-formatted there, so they are here too).
#include <cstdio>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "format/status_macros.h"
#include "tools/block_status.h"
#include "tools/commands.h"
#include "tools/engine_util.h"
#include "tools/util.h"

namespace uq::tools {
namespace {

constexpr int kStartOffsetId = common::kLongOnlyIdBase + 1;
constexpr int kMaxLengthId = common::kLongOnlyIdBase + 2;

constexpr common::OptionSpec kMapOptions[] = {
    kFormatOption,
    kOutputOption,
    {kStartOffsetId, 0, "start-offset", "OFFSET", "first guest offset to map (default 0)"},
    {kMaxLengthId, 0, "max-length", "LENGTH", "map at most LENGTH bytes"},
    kForceShareOption,
    kAllowDevicesOption,
    kHelpOption,
};

struct MapEntry {
  uint64_t start = 0;
  uint64_t length = 0;
  bool data = false;
  bool zero = false;
  bool present = false;
  std::optional<uint64_t> offset;
  size_t depth = 0;
  std::optional<std::string> filename;
};

// qemu-img's entry_mergeable.
bool Mergeable(const MapEntry& curr, const MapEntry& next) {
  if (curr.length == 0) return false;
  if (curr.zero != next.zero || curr.data != next.data || curr.depth != next.depth ||
      curr.present != next.present || curr.filename != next.filename ||
      curr.offset.has_value() != next.offset.has_value()) {
    return false;
  }
  return !curr.offset || *curr.offset + curr.length == *next.offset;
}

// qemu-img's dump_map_entry; `next` may be adjusted (the human format merges
// every kind of zero).
absl::Status Dump(bool json, const MapEntry& e, MapEntry* next) {
  if (json) {
    std::printf(
        "{ \"start\": %llu, \"length\": %llu, \"depth\": %zu, \"present\": %s, \"zero\": %s, "
        "\"data\": %s",
        static_cast<unsigned long long>(e.start), static_cast<unsigned long long>(e.length),
        e.depth, e.present ? "true" : "false", e.zero ? "true" : "false",
        e.data ? "true" : "false");
    if (e.offset) std::printf(", \"offset\": %llu", static_cast<unsigned long long>(*e.offset));
    std::putchar('}');
    if (next != nullptr) std::puts(",");
    return absl::OkStatus();
  }
  if (e.data && !e.offset) {
    return absl::InvalidArgumentError("File contains external, encrypted or compressed clusters.");
  }
  if (e.data && !e.zero) {
    std::fputs(absl::StrFormat("%#-16x%#-16x%#-16x%s\n", e.start, e.length, e.offset.value_or(0),
                               e.filename.value_or(""))
                   .c_str(),
               stdout);
  }
  if (next != nullptr && (!next->data || next->zero)) {
    next->data = false;
    next->zero = true;
  }
  return absl::OkStatus();
}

int RunMap(const common::ParsedArgs& parsed) {
  absl::StatusOr<bool> json = WantJson(parsed);
  if (!json.ok()) return Fail("map", json.status());
  absl::StatusOr<std::string> path = OneImage(parsed);
  if (!path.ok()) return Fail("map", path.status());
  uint64_t start = 0;
  std::optional<uint64_t> max_length;
  if (const std::string* v = parsed.Last(kStartOffsetId)) {
    absl::StatusOr<uint64_t> n = ParseByteCount(*v, "start offset");
    if (!n.ok()) return Fail("map", n.status());
    start = *n;
  }
  if (const std::string* v = parsed.Last(kMaxLengthId)) {
    absl::StatusOr<uint64_t> n = ParseByteCount(*v, "max length");
    if (!n.ok()) return Fail("map", n.status());
    max_length = *n;
  }
  const std::string format = parsed.Last('f') ? *parsed.Last('f') : "";
  absl::StatusOr<LockMode> lock = LockModeFor(false, parsed.Has('U'));
  if (!lock.ok()) return Fail(*path, lock.status());
  absl::StatusOr<Chain> chain =
      Chain::Open(*path, format, *lock, /*snapshot=*/"", parsed.Has(kAllowDevicesId));
  if (!chain.ok()) return Fail(*path, chain.status());

  uint64_t length = chain->size_bytes();
  if (max_length && start <= UINT64_MAX - *max_length)
    length = std::min(length, start + *max_length);
  if (*json) {
    std::putchar('[');
  } else {
    std::printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
  }
  MapEntry curr;
  curr.start = start;
  absl::Status st;
  while (st.ok() && curr.start + curr.length < length) {
    const uint64_t offset = curr.start + curr.length;
    size_t depth = 0;
    absl::StatusOr<BlockStatus> bs = chain->MapStatus(offset, length - offset, &depth);
    if (!bs.ok()) {
      st = absl::Status(bs.status().code(),
                        absl::StrCat("Could not read file metadata: ", bs.status().message()));
      break;
    }
    MapEntry next;
    next.start = offset;
    next.length = bs->bytes;
    next.data = bs->data;
    next.zero = bs->zero;
    next.present = bs->allocated;
    next.depth = depth;
    if (bs->offset_valid) {
      next.offset = bs->host_offset;
      next.filename = bs->file;
    }
    if (Mergeable(curr, next)) {
      curr.length += next.length;
      continue;
    }
    if (curr.length > 0) st = Dump(*json, curr, &next);
    curr = next;
  }
  if (st.ok()) st = Dump(*json, curr, nullptr);
  if (st.ok() && *json) std::puts("]");
  std::fflush(stdout);
  if (!st.ok()) return Fail(*path, st);
  return 0;
}

}  // namespace

const Command kMapCommand = {
    "map",
    RunMap,
    "map [-f FMT] [--output=human|json] [--start-offset=OFFSET] [--max-length=LENGTH] [-U] "
    "[--allow-devices] FILE",
    "Prints where each guest range of FILE is stored, through its backing chain, as qemu-img map "
    "does: the human format lists the ranges with data, the JSON format every range (start, "
    "length, depth, present, zero, data and the host offset where there is one).",
    kMapOptions,
};

}  // namespace uq::tools
