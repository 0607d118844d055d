// qcow2-img info: describes an image (and optionally its backing chain) the
// way qemu-img 7.2 does, as human text or JSON.
#include <limits.h>
#include <stdlib.h>

#include <cstdio>
#include <ctime>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "format/endian.h"
#include "format/status_macros.h"
#include "src/common/json.h"
#include "src/engine/named_file.h"
#include "tools/commands.h"
#include "tools/snapshot_list.h"
#include "tools/util.h"

namespace uq::tools {

using common::Json;
namespace {

constexpr int kBackingChainId = common::kLongOnlyIdBase + 1;
constexpr common::OptionSpec kInfoOptions[] = {
    kFormatOption,
    kOutputOption,
    {kBackingChainId, 0, "backing-chain", "", "describe every image of the backing chain"},
    kForceShareOption,
    kAllowDevicesOption,
    kHelpOption,
};

struct InfoArgs {
  std::string format;  // "" = probe
  bool json = false;
  bool backing_chain = false;
  bool allow_devices = false;
  LockMode lock = LockMode::kShared;
  std::string file;
};

absl::StatusOr<InfoArgs> ParseArgs(const common::ParsedArgs& parsed) {
  InfoArgs args;
  if (const std::string* f = parsed.Last('f')) args.format = *f;
  UQ_ASSIGN_OR_RETURN(args.json, WantJson(parsed));
  args.backing_chain = parsed.Has(kBackingChainId);
  args.allow_devices = parsed.Has(kAllowDevicesId);
  UQ_ASSIGN_OR_RETURN(args.lock, LockModeFor(/*writable=*/false, parsed.Has('U')));
  UQ_ASSIGN_OR_RETURN(args.file, OneImage(parsed));
  return args;
}

// QEMU's names for the bitmap flags, in bit order.
std::vector<const char*> BitmapFlagNames(const format::BitmapInfo& b) {
  std::vector<const char*> names;
  if (b.flags & format::kBitmapFlagInUse) names.push_back("in-use");
  if (b.flags & format::kBitmapFlagAuto) names.push_back("auto");
  return names;
}

const char* CompressionName(const format::Header& h) {
  return h.compression_type == format::CompressionType::kZstd ? "zstd" : "zlib";
}

Json ToJson(const ImageDescription& d) {
  Json j = Json::Object();
  const format::Header* h = d.header ? &*d.header : nullptr;
  if (h && !h->backing_file.empty() && h->backing_format) {
    j.Set("backing-filename-format", Json::String(*h->backing_format));
  }
  if (!d.snapshots.empty()) {
    Json& snaps = j.Set("snapshots", Json::Array());
    for (const format::Snapshot& s : d.snapshots) {
      Json o = Json::Object();
      if (std::optional<int64_t> icount = Icount(s)) o.Set("icount", Json::Int(*icount));
      o.Set("vm-clock-nsec", Json::Int(static_cast<int64_t>(s.vm_clock_nsec % 1000000000)));
      o.Set("name", Json::String(s.name));
      o.Set("date-sec", Json::Int(s.date_sec));
      o.Set("date-nsec", Json::Int(s.date_nsec));
      o.Set("vm-clock-sec", Json::Int(static_cast<int64_t>(s.vm_clock_nsec / 1000000000)));
      o.Set("id", Json::String(s.id));
      o.Set("vm-state-size", Json::Int(static_cast<int64_t>(VmStateSize(s))));
      snaps.Push(std::move(o));
    }
  }
  j.Set("virtual-size", Json::Int(static_cast<int64_t>(d.virtual_size_bytes)));
  j.Set("filename", Json::String(d.filename));
  if (h) j.Set("cluster-size", Json::Int(static_cast<int64_t>(h->cluster_size())));
  j.Set("format", Json::String(d.format));
  j.Set("actual-size", Json::Int(static_cast<int64_t>(d.actual_size_bytes)));
  if (h) {
    Json& spec = j.Set("format-specific", Json::Object());
    spec.Set("type", Json::String("qcow2"));
    Json& data = spec.Set("data", Json::Object());
    data.Set("compat", Json::String(h->version == 2 ? "0.10" : "1.1"));
    data.Set("compression-type", Json::String(CompressionName(*h)));
    if (h->version == 3) {
      data.Set("lazy-refcounts", Json::Bool(h->compatible_features & format::kCompatLazyRefcounts));
    }
    if (!d.bitmaps.empty()) {
      Json& list = data.Set("bitmaps", Json::Array());
      for (const format::BitmapInfo& b : d.bitmaps) {
        Json o = Json::Object();
        Json& flags = o.Set("flags", Json::Array());
        for (const char* f : BitmapFlagNames(b)) flags.Push(Json::String(f));
        o.Set("name", Json::String(b.name));
        o.Set("granularity", Json::Int(int64_t{1} << b.granularity_bits));
        list.Push(std::move(o));
      }
    }
    data.Set("refcount-bits", Json::Int(int64_t{1} << h->refcount_order));
    if (h->version == 3) {
      if (h->data_file) data.Set("data-file", Json::String(*h->data_file));
      if (h->has_data_file()) {
        data.Set("data-file-raw",
                 Json::Bool(h->autoclear_features & format::kAutoclearDataFileRaw));
      }
      data.Set("corrupt", Json::Bool(h->incompatible_features & format::kIncompatCorrupt));
      data.Set("extended-l2", Json::Bool(h->extended_l2()));
    }
    if (!h->backing_file.empty()) {
      j.Set("full-backing-filename", Json::String(d.full_backing_filename));
      j.Set("backing-filename", Json::String(h->backing_file));
    }
  }
  const bool dirty = h && (h->incompatible_features & format::kIncompatDirty);
  j.Set("dirty-flag", Json::Bool(dirty));
  return j;
}

std::string ToHuman(const ImageDescription& d) {
  const format::Header* h = d.header ? &*d.header : nullptr;
  std::string out;
  absl::StrAppend(&out, "image: ", d.filename, "\n", "file format: ", d.format, "\n",
                  "virtual size: ", HumanSize(d.virtual_size_bytes), " (", d.virtual_size_bytes,
                  " bytes)\n", "disk size: ", HumanSize(d.actual_size_bytes), "\n");
  if (h) absl::StrAppend(&out, "cluster_size: ", h->cluster_size(), "\n");
  if (h && (h->incompatible_features & format::kIncompatDirty)) {
    absl::StrAppend(&out, "cleanly shut down: no\n");
  }
  if (h && !h->backing_file.empty()) {
    absl::StrAppend(&out, "backing file: ", h->backing_file);
    if (d.full_backing_filename != h->backing_file) {
      absl::StrAppend(&out, " (actual path: ", d.full_backing_filename, ")");
    }
    absl::StrAppend(&out, "\n");
    if (h->backing_format) absl::StrAppend(&out, "backing file format: ", *h->backing_format, "\n");
  }
  if (!d.snapshots.empty()) {
    absl::StrAppend(&out, SnapshotListText(d.snapshots));
  }
  if (h) {
    absl::StrAppend(&out, "Format specific information:\n");
    absl::StrAppend(&out, "    compat: ", h->version == 2 ? "0.10" : "1.1", "\n");
    absl::StrAppend(&out, "    compression type: ", CompressionName(*h), "\n");
    if (h->version == 3) {
      absl::StrAppend(&out, "    lazy refcounts: ",
                      (h->compatible_features & format::kCompatLazyRefcounts) ? "true" : "false",
                      "\n");
    }
    if (!d.bitmaps.empty()) {
      absl::StrAppend(&out, "    bitmaps:\n");
      for (size_t i = 0; i < d.bitmaps.size(); ++i) {
        const format::BitmapInfo& b = d.bitmaps[i];
        absl::StrAppend(&out, "        [", i, "]:\n", "            flags:\n");
        const std::vector<const char*> flags = BitmapFlagNames(b);
        for (size_t f = 0; f < flags.size(); ++f) {
          absl::StrAppend(&out, "                [", f, "]: ", flags[f], "\n");
        }
        absl::StrAppend(&out, "            name: ", b.name, "\n",
                        "            granularity: ", uint64_t{1} << b.granularity_bits, "\n");
      }
    }
    absl::StrAppend(&out, "    refcount bits: ", 1u << h->refcount_order, "\n");
    if (h->version == 3) {
      if (h->data_file) absl::StrAppend(&out, "    data file: ", *h->data_file, "\n");
      if (h->has_data_file()) {
        absl::StrAppend(&out, "    data file raw: ",
                        (h->autoclear_features & format::kAutoclearDataFileRaw) ? "true" : "false",
                        "\n");
      }
      absl::StrAppend(&out, "    corrupt: ",
                      (h->incompatible_features & format::kIncompatCorrupt) ? "true" : "false",
                      "\n");
      absl::StrAppend(&out, "    extended l2: ", h->extended_l2() ? "true" : "false", "\n");
    }
  }
  return out;
}

int RunInfo(const common::ParsedArgs& parsed) {
  absl::StatusOr<InfoArgs> args = ParseArgs(parsed);
  if (!args.ok()) return Fail("info", args.status());

  std::vector<ImageDescription> chain;
  std::set<std::string> seen;
  std::string path = args->file;
  std::string format = args->format;
  std::string overlay;  // the image naming `path`; "" for FILE itself
  for (;;) {
    // A backing file is opened under the engine's rules for the files an
    // image names (no FIFO that would block the open, block devices only
    // when allowed), as every command that follows a chain opens it.
    if (!overlay.empty()) {
      const engine::NamedFile named{.image_path = overlay,
                                    .path = path,
                                    .role = engine::NamedRole::kBacking,
                                    .writable = false};
      if (absl::Status st = engine::CheckNamedFile(named, args->allow_devices); !st.ok()) {
        return Fail(args->file, st);
      }
    }
    absl::StatusOr<ImageDescription> d = DescribeImage(path, format, args->lock);
    if (!d.ok()) return Fail(path, d.status());
    char real[PATH_MAX];
    const std::string key = realpath(path.c_str(), real) ? std::string(real) : path;
    if (!seen.insert(key).second) return Fail(path, "backing chain loops back to this image");
    const bool more = args->backing_chain && d->header && !d->full_backing_filename.empty();
    if (more) {
      overlay = path;
      path = d->full_backing_filename;
      format = d->header->backing_format.value_or("");
    }
    chain.push_back(*std::move(d));
    if (!more) break;
  }

  if (args->json) {
    std::string text;
    if (args->backing_chain) {
      Json arr = Json::Array();
      for (const ImageDescription& d : chain) arr.Push(ToJson(d));
      text = arr.Serialize();
    } else {
      text = ToJson(chain[0]).Serialize();
    }
    std::printf("%s\n", text.c_str());
  } else {
    for (size_t i = 0; i < chain.size(); ++i) {
      std::printf("%s%s", i ? "\n" : "", ToHuman(chain[i]).c_str());
    }
  }
  return 0;
}

}  // namespace

const Command kInfoCommand = {
    "info",
    RunInfo,
    "info [-f FMT] [--output=human|json] [--backing-chain] [-U] [--allow-devices] FILE",
    "Describes FILE (and with --backing-chain every image below it) as qemu-img info does.",
    kInfoOptions,
};

}  // namespace uq::tools
