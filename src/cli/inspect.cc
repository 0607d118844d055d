#include "src/cli/inspect.h"

#include <cctype>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "format/status_macros.h"

namespace uq::cli {
namespace {

using common::Json;

// sfdisk's node name: "/dev/ublkb0p1", "disk.raw1".
std::string NodeName(absl::string_view device, uint32_t number) {
  const bool digit = !device.empty() && std::isdigit(static_cast<unsigned char>(device.back()));
  return absl::StrCat(device, digit ? "p" : "", number);
}

// Partitions that can hold a file system (not an extended container).
bool HoldsData(const Partition& p) { return !p.extended; }

}  // namespace

absl::StatusOr<DiskLayout> InspectDisk(const DiskReader& disk) {
  DiskLayout layout;
  layout.size_bytes = disk.size_bytes;
  UQ_ASSIGN_OR_RETURN(layout.whole, ProbeFileSystem(disk, 0, disk.size_bytes));
  if (layout.whole.type == "vfat" || layout.whole.type == "ntfs") return layout;
  UQ_ASSIGN_OR_RETURN(layout.table, ReadPartitionTable(disk));
  for (const Partition& p : layout.table.partitions) {
    FileSystem fs;
    // A partition reaching past the end of the disk is listed but not probed.
    if (HoldsData(p) && p.start_sectors <= disk.size_sectors() &&
        p.size_sectors <= disk.size_sectors() - p.start_sectors) {
      UQ_ASSIGN_OR_RETURN(
          fs, ProbeFileSystem(disk, p.start_sectors * kSectorBytes, p.size_sectors * kSectorBytes));
    }
    layout.fs.push_back(std::move(fs));
  }
  return layout;
}

absl::StatusOr<uint32_t> ChooseMountTarget(const DiskLayout& layout) {
  const std::vector<Partition>& parts = layout.table.partitions;
  if (parts.empty()) {
    if (layout.whole.mountable()) return 0;
    if (!layout.whole.type.empty()) {
      return absl::NotFoundError(
          absl::StrCat("the disk holds ", layout.whole.type, ", which cannot be mounted"));
    }
    return absl::NotFoundError(
        "the disk holds neither a partition table nor a file system that ublk-qcow2 recognises");
  }
  std::vector<uint32_t> mountable;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (layout.fs[i].mountable()) mountable.push_back(parts[i].number);
  }
  if (mountable.size() == 1) return mountable[0];
  if (mountable.empty()) {
    return absl::FailedPreconditionError(
        "no partition holds a file system that ublk-qcow2 recognises: choose one with "
        "--partition N");
  }
  return absl::FailedPreconditionError(absl::StrCat(
      mountable.size(), " partitions hold file systems: choose one with --partition N"));
}

std::string HumanSize(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int unit = 0;
  while (unit < 6 && bytes >= (uint64_t{1024} << (10 * unit))) ++unit;
  if (unit == 0) return absl::StrCat(bytes, " B");
  const uint64_t scale = uint64_t{1} << (10 * unit);
  if (bytes % scale == 0) return absl::StrCat(bytes / scale, " ", kUnits[unit]);
  return absl::StrFormat("%.1f %s", static_cast<double>(bytes) / static_cast<double>(scale),
                         kUnits[unit]);
}

std::string LayoutText(const DiskLayout& layout, absl::string_view image) {
  std::string out = absl::StrCat(image, ": ", HumanSize(layout.size_bytes));
  const PartitionTable& t = layout.table;
  if (t.kind == TableKind::kNone) {
    absl::StrAppend(&out, ", no partition table");
    if (!layout.whole.type.empty()) {
      absl::StrAppend(&out, ", ", layout.whole.type, " file system on the whole disk");
      if (!layout.whole.label.empty())
        absl::StrAppend(&out, " labelled '", layout.whole.label, "'");
    }
    return absl::StrCat(out, "\n");
  }
  absl::StrAppend(&out, ", ", TableKindName(t.kind), " partition table, id ", t.id, "\n");
  if (t.partitions.empty()) return absl::StrCat(out, "no partitions\n");
  absl::StrAppendFormat(&out, "%3s %12s %12s %10s  %-22s %-6s %s\n", "NR", "START", "SECTORS",
                        "SIZE", "TYPE", "FS", "LABEL");
  for (size_t i = 0; i < t.partitions.size(); ++i) {
    const Partition& p = t.partitions[i];
    const FileSystem& fs = layout.fs[i];
    std::string line =
        absl::StrFormat("%3u %12u %12u %10s  %-22s %-6s %s", p.number, p.start_sectors,
                        p.size_sectors, HumanSize(p.size_sectors * kSectorBytes),
                        PartitionTypeName(t.kind, p), fs.type.empty() ? "-" : fs.type, fs.label);
    absl::StrAppend(&out, absl::StripTrailingAsciiWhitespace(line), "\n");
  }
  return out;
}

Json LayoutJson(const DiskLayout& layout, absl::string_view device) {
  Json root = Json::Object();
  const PartitionTable& t = layout.table;
  Json filesystems = Json::Array();
  auto add_fs = [&](const FileSystem& fs, uint32_t number) {
    if (fs.type.empty()) return;
    Json o = Json::Object();
    o.Set("node", Json::String(number == 0 ? std::string(device) : NodeName(device, number)));
    o.Set("partition", Json::Int(number));
    o.Set("type", Json::String(fs.type));
    o.Set("label", Json::String(fs.label));
    filesystems.Push(std::move(o));
  };
  add_fs(layout.whole, 0);
  if (t.kind != TableKind::kNone) {
    Json table = Json::Object();
    table.Set("label", Json::String(TableKindName(t.kind)));
    table.Set("id", Json::String(t.id));
    table.Set("device", Json::String(std::string(device)));
    table.Set("unit", Json::String("sectors"));
    if (t.kind == TableKind::kGpt) {
      table.Set("firstlba", Json::Int(static_cast<int64_t>(t.first_lba)));
      table.Set("lastlba", Json::Int(static_cast<int64_t>(t.last_lba)));
    }
    table.Set("sectorsize", Json::Int(kSectorBytes));
    Json parts = Json::Array();
    for (size_t i = 0; i < t.partitions.size(); ++i) {
      const Partition& p = t.partitions[i];
      Json o = Json::Object();
      o.Set("node", Json::String(NodeName(device, p.number)));
      o.Set("start", Json::Int(static_cast<int64_t>(p.start_sectors)));
      o.Set("size", Json::Int(static_cast<int64_t>(p.size_sectors)));
      o.Set("type", Json::String(p.type));
      if (t.kind == TableKind::kGpt) {
        o.Set("uuid", Json::String(p.uuid));
        if (!p.name.empty()) o.Set("name", Json::String(p.name));
        if (std::string attrs = GptAttrsString(p.attr_bits); !attrs.empty()) {
          o.Set("attrs", Json::String(attrs));
        }
      }
      if (p.bootable) o.Set("bootable", Json::Bool(true));
      parts.Push(std::move(o));
      add_fs(layout.fs[i], p.number);
    }
    if (!t.partitions.empty()) table.Set("partitions", std::move(parts));
    root.Set("partitiontable", std::move(table));
  }
  root.Set("filesystems", std::move(filesystems));
  return root;
}

}  // namespace uq::cli
