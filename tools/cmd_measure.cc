// qcow2-img measure: how large a new image would be, as qemu-img 7.2's
// measure computes it (raw_measure and qcow2_measure): `required` for the
// data of SRC (or none, with --size) plus all metadata of a fully allocated
// image, `fully-allocated`, and for qcow2 v3 sources and targets the space
// the source's persistent bitmaps would take.
#include <algorithm>
#include <bit>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "format/header.h"
#include "format/status_macros.h"
#include "src/common/json.h"
#include "tools/block_status.h"
#include "tools/commands.h"
#include "tools/engine_util.h"
#include "tools/util.h"

namespace uq::tools {
namespace {

constexpr int kSizeId = common::kLongOnlyIdBase + 1;

constexpr common::OptionSpec kMeasureOptions[] = {
    {'f', 'f', "format", "FMT", "format of SRC, qcow2 or raw (probed when omitted)"},
    {'O', 'O', "output-format", "FMT", "format of the new image, raw (default) or qcow2"},
    {'o', 'o', "options", "OPTS",
     "creation options of the new image (repeatable): cluster_size, compat, refcount_bits, "
     "extended_l2, preallocation (off|metadata|falloc|full), backing_file, size, and the "
     "qcow2 options that do not change its size (lazy_refcounts, compression_type, data_file, "
     "data_file_raw, backing_fmt)"},
    {'l', 'l', "snapshot", "SNAPSHOT", "measure internal snapshot SNAPSHOT of SRC (name or id)"},
    {kSizeId, 0, "size", "SIZE", "measure a new empty image of SIZE bytes instead of SRC"},
    kOutputOption,
    kForceShareOption,
    kAllowDevicesOption,
    kHelpOption,
};

uint64_t RoundUp(uint64_t v, uint64_t to) { return (v + to - 1) / to * to; }
uint64_t DivRoundUp(uint64_t v, uint64_t by) { return (v + by - 1) / by; }

// The new image's creation options that change its size.
struct Target {
  bool qcow2 = false;
  uint64_t cluster_bytes = 64 << 10;
  int version = 3;
  uint32_t refcount_order = 4;
  bool extended_l2 = false;
  bool preallocate_data = false;  // preallocation=falloc|full
  bool has_backing_file = false;
  std::optional<uint64_t> size_bytes;  // -o size=
};

absl::Status ApplyOption(Target& t, absl::string_view key, absl::string_view value,
                         bool* refcount_given, std::optional<uint64_t>* cluster_given) {
  if (key == "cluster_size") {
    absl::StatusOr<uint64_t> v = ParseByteCount(value, "cluster size");
    if (!v.ok() || *v < 512 || *v > (2u << 20) || !std::has_single_bit(*v)) {
      return absl::InvalidArgumentError(
          "Cluster size must be a power of two between 512 and 2048k");
    }
    *cluster_given = *v;
  } else if (key == "compat") {
    if (value == "0.10") {
      t.version = 2;
    } else if (value == "1.1") {
      t.version = 3;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("Invalid compatibility level: '", value, "'"));
    }
  } else if (key == "refcount_bits") {
    absl::StatusOr<uint64_t> v = ParseCount(value, "refcount_bits");
    if (!v.ok() || *v == 0 || *v > 64 || !std::has_single_bit(*v)) {
      return absl::InvalidArgumentError(
          "Refcount width must be a power of two and may not exceed 64 bits");
    }
    t.refcount_order = static_cast<uint32_t>(std::countr_zero(*v));
    *refcount_given = true;
  } else if (key == "extended_l2") {
    if (value != "on" && value != "off") {
      return absl::InvalidArgumentError(absl::StrCat("Invalid parameter value for extended_l2"));
    }
    t.extended_l2 = value == "on";
  } else if (key == "preallocation") {
    if (value != "off" && value != "metadata" && value != "falloc" && value != "full") {
      return absl::InvalidArgumentError(absl::StrCat("invalid parameter value: ", value));
    }
    t.preallocate_data = value == "falloc" || value == "full";
  } else if (key == "backing_file") {
    t.has_backing_file = true;
  } else if (key == "size") {
    UQ_ASSIGN_OR_RETURN(t.size_bytes, ParseByteCount(value, "size"));
  } else if (key != "lazy_refcounts" && key != "compression_type" && key != "data_file" &&
             key != "data_file_raw" && key != "backing_fmt") {
    return absl::InvalidArgumentError(
        absl::StrCat("Invalid parameter '", key, "' (invalid options for file format 'qcow2')"));
  }
  return absl::OkStatus();
}

absl::StatusOr<Target> ParseTarget(const std::string& format,
                                   const std::vector<std::string>& option_strings) {
  Target t;
  if (format != "raw" && format != "qcow2") {
    return absl::InvalidArgumentError(absl::StrCat("Unknown file format '", format, "'"));
  }
  t.qcow2 = format == "qcow2";
  bool refcount_given = false;
  std::optional<uint64_t> cluster_given;
  for (const std::string& group : option_strings) {
    for (absl::string_view item : absl::StrSplit(group, ',', absl::SkipEmpty())) {
      const size_t eq = item.find('=');
      if (eq == absl::string_view::npos) {
        return absl::InvalidArgumentError(absl::StrCat("Invalid parameter '", item, "'"));
      }
      if (!t.qcow2 && item.substr(0, eq) != "size") {
        return absl::InvalidArgumentError(
            absl::StrCat("Invalid parameter '", item.substr(0, eq),
                         "' (invalid options for file format 'raw')"));
      }
      UQ_RETURN_IF_ERROR(
          ApplyOption(t, item.substr(0, eq), item.substr(eq + 1), &refcount_given, &cluster_given));
    }
  }
  if (cluster_given) t.cluster_bytes = *cluster_given;
  if (t.extended_l2 && t.cluster_bytes < (16 << 10)) {
    return absl::InvalidArgumentError(
        "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes");
  }
  if (t.version < 3 && refcount_given && t.refcount_order != 4) {
    return absl::InvalidArgumentError(
        "Different refcount widths than 16 bits require compatibility level 1.1 or above (use "
        "compat=1.1 or greater)");
  }
  return t;
}

// QEMU's qcow2_refcount_metadata_size: refcount blocks and table clusters
// for `clusters` clusters plus themselves (a fixed point).
uint64_t RefcountMetadataBytes(uint64_t clusters, uint64_t cs, uint32_t refcount_order) {
  const uint64_t blocks_per_table_cluster = cs / 8;
  const uint64_t refcounts_per_block = cs * 8 / (uint64_t{1} << refcount_order);
  uint64_t table = 0;
  uint64_t blocks = 0;
  uint64_t n = 0;
  uint64_t last = 0;
  do {
    last = n;
    blocks = DivRoundUp(clusters + table + blocks, refcounts_per_block);
    table = DivRoundUp(blocks, blocks_per_table_cluster);
    n = clusters + blocks + table;
  } while (n != last);
  return (blocks + table) * cs;
}

// QEMU's qcow2_calc_prealloc_size: a fully allocated image of `size` bytes.
uint64_t FullyAllocatedBytes(const Target& t, uint64_t size) {
  const uint64_t cs = t.cluster_bytes;
  const uint64_t aligned = RoundUp(size, cs);
  const uint64_t entry_bytes = t.extended_l2 ? 16 : 8;
  uint64_t meta = cs;  // header
  const uint64_t l2_entries = RoundUp(aligned / cs, cs / entry_bytes);
  meta += l2_entries * entry_bytes;
  const uint64_t l1_entries = RoundUp(l2_entries * entry_bytes / cs, cs / 8);
  meta += l1_entries * 8;
  meta += RefcountMetadataBytes((meta + aligned) / cs, cs, t.refcount_order);
  return meta + aligned;
}

// Bytes of the source's data a qcow2 copy needs, as qcow2_measure counts
// them: every target cluster with data (zero ranges are skipped).
absl::StatusOr<uint64_t> DataBytes(Chain& chain, uint64_t cs) {
  const uint64_t size = chain.size_bytes();
  uint64_t required = 0;
  for (uint64_t offset = 0, pnum = 0; offset < size; offset += pnum) {
    UQ_ASSIGN_OR_RETURN(BlockStatus st, chain.StatusAbove(offset, size - offset));
    pnum = st.bytes;
    if (!st.zero && st.data && st.allocated) {
      pnum = RoundUp(offset + pnum, cs) - offset;  // on to the end of the cluster
      required += offset % cs + pnum;
    }
  }
  return required;
}

// qcow2_get_persistent_dirty_bitmap_size.
uint64_t BitmapBytes(const ImageDescription& d, uint64_t cs) {
  uint64_t total = 0;
  uint64_t directory = 0;
  for (const format::BitmapInfo& b : d.bitmaps) {
    const uint64_t bits = DivRoundUp(d.virtual_size_bytes, uint64_t{1} << b.granularity_bits);
    const uint64_t clusters = DivRoundUp(DivRoundUp(bits, 8), cs);
    total += clusters * cs + RoundUp(clusters * 8, cs);
    directory += RoundUp(24 + b.name.size(), 8);
  }
  return total + RoundUp(directory, cs);
}

struct Measurement {
  uint64_t required = 0;
  uint64_t fully_allocated = 0;
  std::optional<uint64_t> bitmaps;
};

absl::StatusOr<Measurement> Measure(const Target& t, std::optional<uint64_t> size, Chain* source,
                                    const ImageDescription* source_info) {
  Measurement m;
  if (!t.qcow2) {
    m.required = source ? source->size_bytes() : RoundUp(*size, 512);
    m.fully_allocated = m.required;
    return m;
  }
  const uint64_t cs = t.cluster_bytes;
  uint64_t virtual_size = RoundUp(size.value_or(t.size_bytes.value_or(0)), cs);
  const uint64_t l2_tables = DivRoundUp(virtual_size / cs, cs / (t.extended_l2 ? 16 : 8));
  if (l2_tables * 8 > format::kMaxL1Bytes) {
    return absl::InvalidArgumentError(
        "The image size is too large (try using a larger cluster size)");
  }
  uint64_t data = 0;
  if (source != nullptr) {
    virtual_size = RoundUp(source->size_bytes(), cs);
    if (t.has_backing_file) {
      data = virtual_size;  // nothing known to be shared with the new backing file
    } else {
      UQ_ASSIGN_OR_RETURN(data, DataBytes(*source, cs));
    }
  }
  if (t.preallocate_data) data = virtual_size;
  m.fully_allocated = FullyAllocatedBytes(t, virtual_size);
  m.required = m.fully_allocated - virtual_size + data;
  if (t.version >= 3 && source != nullptr && source->top_is_qcow2_v3()) {
    m.bitmaps = BitmapBytes(*source_info, cs);
  }
  return m;
}

int RunMeasure(const common::ParsedArgs& parsed) {
  absl::StatusOr<bool> json = WantJson(parsed);
  if (!json.ok()) return Fail("measure", json.status());
  std::optional<uint64_t> size;
  if (const std::string* v = parsed.Last(kSizeId)) {
    absl::StatusOr<uint64_t> n = ParseByteCount(*v, "image size");
    if (!n.ok()) return Fail("measure", n.status());
    size = *n;
  }
  const std::string format = parsed.Last('f') ? *parsed.Last('f') : "";
  const std::string snapshot = parsed.Last('l') ? *parsed.Last('l') : "";
  if (parsed.operands.size() > 1) {
    return Fail("measure", "At most one filename argument is allowed.");
  }
  const bool has_file = parsed.operands.size() == 1;
  if (!has_file && (!format.empty() || parsed.Has('l'))) {
    return Fail("measure", "-f and -l require a filename argument.");
  }
  if (has_file && size) return Fail("measure", "--size N cannot be used together with a filename.");
  if (!has_file && !size) {
    return Fail("measure", "Either --size N or one filename must be specified.");
  }
  std::vector<std::string> option_strings;
  for (const common::ParsedOption& o : parsed.options) {
    if (o.id == 'o') option_strings.push_back(o.value);
  }

  std::optional<Chain> chain;
  std::optional<ImageDescription> info;
  if (has_file) {
    const std::string& path = parsed.operands[0];
    absl::StatusOr<LockMode> lock = LockModeFor(false, parsed.Has('U'));
    if (!lock.ok()) return Fail(path, lock.status());
    absl::StatusOr<Chain> c =
        Chain::Open(path, format, *lock, snapshot, parsed.Has(kAllowDevicesId));
    if (!c.ok()) return Fail(path, c.status());
    chain = *std::move(c);
    // The bitmaps of the image itself (the chain holds its lock already).
    absl::StatusOr<ImageDescription> d = DescribeImage(path, format, LockMode::kNone);
    if (!d.ok()) return Fail(path, d.status());
    info = *std::move(d);
  }
  absl::StatusOr<Target> target =
      ParseTarget(parsed.Last('O') ? *parsed.Last('O') : "raw", option_strings);
  if (!target.ok()) return Fail("measure", target.status());
  absl::StatusOr<Measurement> m =
      Measure(*target, size, chain ? &*chain : nullptr, info ? &*info : nullptr);
  if (!m.ok()) return Fail("measure", m.status());

  if (*json) {
    common::Json j = common::Json::Object();
    j.Set("required", common::Json::Int(static_cast<int64_t>(m->required)));
    j.Set("fully-allocated", common::Json::Int(static_cast<int64_t>(m->fully_allocated)));
    if (m->bitmaps) j.Set("bitmaps", common::Json::Int(static_cast<int64_t>(*m->bitmaps)));
    std::printf("%s\n", j.Serialize().c_str());
  } else {
    std::printf("required size: %llu\nfully allocated size: %llu\n",
                static_cast<unsigned long long>(m->required),
                static_cast<unsigned long long>(m->fully_allocated));
    if (m->bitmaps) {
      std::printf("bitmaps size: %llu\n", static_cast<unsigned long long>(*m->bitmaps));
    }
  }
  return 0;
}

}  // namespace

const Command kMeasureCommand = {
    "measure",
    RunMeasure,
    "measure [--output=human|json] [-O FMT] [-o OPTIONS] [--allow-devices] "
    "[--size SIZE | [-f FMT] [-l SNAPSHOT] [-U] SRC]",
    "Computes how large a new image of format FMT (default raw) holding SRC (or SIZE empty "
    "bytes) would be, as qemu-img measure does.",
    kMeasureOptions,
};

}  // namespace uq::tools
