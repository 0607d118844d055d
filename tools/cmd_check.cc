// qcow2-img check: qemu-img check's consistency check and repair
// (src/engine/check.h), with its human and JSON reports and exit codes:
// 0 clean, 1 the check could not run (or hit internal errors), 2
// corruptions, 3 leaked clusters only, 63 a format without checks (raw).
#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "format/status_macros.h"
#include "src/common/json.h"
#include "src/engine/check.h"
#include "src/io/uring_file.h"
#include "tools/commands.h"
#include "tools/engine_util.h"
#include "tools/image_lock.h"
#include "tools/util.h"

namespace uq::tools {
namespace {

constexpr int kExitUnsupportedFormat = 63;

constexpr common::OptionSpec kCheckOptions[] = {
    kFormatOption,
    {'r', 'r', "repair", "leaks|all",
     "repair: 'leaks' frees leaked clusters; 'all' also fixes refcounts that are too low, "
     "COPIED flags and misaligned preallocated clusters, rebuilding the refcount structure if "
     "needed"},
    kOutputOption,
    kQuietOption,
    kForceShareOption,
    kHelpOption,
};

struct CheckArgs {
  std::string file;
  std::string format;  // "" = probe
  engine::RepairMode repair = engine::RepairMode::kNone;
  bool json = false;
  bool quiet = false;
  bool force_share = false;
};

absl::StatusOr<CheckArgs> ParseArgs(const common::ParsedArgs& parsed) {
  CheckArgs a;
  if (const std::string* f = parsed.Last('f')) a.format = *f;
  if (const std::string* r = parsed.Last('r')) {
    if (*r == "leaks") {
      a.repair = engine::RepairMode::kLeaks;
    } else if (*r == "all") {
      a.repair = engine::RepairMode::kAll;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("Unknown option value for -r (expecting 'leaks' or 'all'): ", *r));
    }
  }
  UQ_ASSIGN_OR_RETURN(a.json, WantJson(parsed));
  a.quiet = parsed.Has('q');
  a.force_share = parsed.Has('U');
  UQ_ASSIGN_OR_RETURN(a.file, OneImage(parsed));
  return a;
}

// qemu-img's ImageCheck, members in QAPI order (optional ones only when
// non-zero, as qemu-img leaves them out).
common::Json ToJson(const CheckArgs& a, const engine::CheckResult& r) {
  using common::Json;
  Json j = Json::Object();
  j.Set("filename", Json::String(a.file));
  j.Set("format", Json::String("qcow2"));
  j.Set("check-errors", Json::Int(static_cast<int64_t>(r.check_errors)));
  const std::pair<const char*, uint64_t> optional[] = {
      {"image-end-offset", r.image_end_offset},
      {"corruptions", r.corruptions},
      {"leaks", r.leaks},
      {"corruptions-fixed", r.corruptions_fixed},
      {"leaks-fixed", r.leaks_fixed},
      {"total-clusters", r.total_clusters},
      {"allocated-clusters", r.allocated_clusters},
      {"fragmented-clusters", r.fragmented_clusters},
      {"compressed-clusters", r.compressed_clusters},
  };
  for (const auto& [key, value] : optional) {
    if (value != 0) j.Set(key, Json::Int(static_cast<int64_t>(value)));
  }
  return j;
}

std::string ToHuman(const engine::CheckResult& r) {
  std::string out;
  if (r.corruptions == 0 && r.leaks == 0 && r.check_errors == 0) {
    out = "No errors were found on the image.\n";
  } else {
    if (r.corruptions != 0) {
      absl::StrAppend(&out, "\n", r.corruptions,
                      " errors were found on the image.\nData may be corrupted, or further "
                      "writes to the image may corrupt it.\n");
    }
    if (r.leaks != 0) {
      absl::StrAppend(&out, "\n", r.leaks,
                      " leaked clusters were found on the image.\nThis means waste of disk "
                      "space, but no harm to data.\n");
    }
    if (r.check_errors != 0) {
      absl::StrAppend(&out, "\n", r.check_errors,
                      " internal errors have occurred during the check.\n");
    }
  }
  if (r.total_clusters != 0 && r.allocated_clusters != 0) {
    const double allocated = static_cast<double>(r.allocated_clusters);
    absl::StrAppend(
        &out, absl::StrFormat("%d/%d = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% compressed "
                              "clusters\n",
                              r.allocated_clusters, r.total_clusters,
                              allocated * 100.0 / static_cast<double>(r.total_clusters),
                              static_cast<double>(r.fragmented_clusters) * 100.0 / allocated,
                              static_cast<double>(r.compressed_clusters) * 100.0 / allocated));
  }
  if (r.image_end_offset != 0) {
    absl::StrAppend(&out, "Image end offset: ", r.image_end_offset, "\n");
  }
  return out;
}

// Problem lines go to stderr as they are found, as qemu-img prints them.
engine::CheckOptions Options(engine::RepairMode repair) {
  engine::CheckOptions o;
  o.repair = repair;
  o.on_message = [](const std::string& line) { std::fprintf(stderr, "%s\n", line.c_str()); };
  return o;
}

int RunCheck(const common::ParsedArgs& parsed) {
  absl::StatusOr<CheckArgs> args = ParseArgs(parsed);
  if (!args.ok()) return Fail("check", args.status());
  const bool writable = args->repair != engine::RepairMode::kNone;
  absl::StatusOr<LockMode> lock = LockModeFor(writable, args->force_share);
  if (!lock.ok()) return Fail(args->file, lock.status());

  absl::StatusOr<std::unique_ptr<io::EventLoop>> loop = io::EventLoop::Create(8);
  if (!loop.ok()) return Fail("check", loop.status());
  io::OpenFlags flags;
  flags.read_only = !writable;
  absl::StatusOr<std::unique_ptr<io::UringFile>> file =
      io::UringFile::Open(loop->get(), args->file, flags);
  if (!file.ok()) return Fail(args->file, file.status());
  if (absl::Status st = LockImageFile((*file)->fd(), *lock); !st.ok()) {
    return Fail(args->file, st);
  }
  absl::StatusOr<bool> qcow2 = IsQcow2(**loop, **file, args->format);
  if (!qcow2.ok()) return Fail(args->file, qcow2.status());
  if (!*qcow2) {
    std::fprintf(stderr, "qcow2-img: This image format does not support checks\n");
    return kExitUnsupportedFormat;
  }

  absl::StatusOr<engine::CheckResult> result =
      RunOnLoop(**loop, engine::CheckImage(**file, Options(args->repair)));
  if (!result.ok())
    return Fail(args->file, absl::StrCat("Check failed: ", result.status().message()));
  if (result->corruptions_fixed != 0 || result->leaks_fixed != 0) {
    if (!args->json && !args->quiet) {
      std::printf(
          "The following inconsistencies were found and repaired:\n\n    %llu leaked clusters\n"
          "    %llu corruptions\n\nDouble checking the fixed image now...\n",
          static_cast<unsigned long long>(result->leaks_fixed),
          static_cast<unsigned long long>(result->corruptions_fixed));
      std::fflush(stdout);
    }
    absl::StatusOr<engine::CheckResult> again =
        RunOnLoop(**loop, engine::CheckImage(**file, Options(engine::RepairMode::kNone)));
    if (!again.ok()) {
      return Fail(args->file, absl::StrCat("Check failed: ", again.status().message()));
    }
    again->corruptions_fixed = result->corruptions_fixed;
    again->leaks_fixed = result->leaks_fixed;
    result = std::move(again);
  }
  if (!args->quiet) {
    const std::string text =
        args->json ? ToJson(*args, *result).Serialize() + "\n" : ToHuman(*result);
    std::fputs(text.c_str(), stdout);
  }
  std::fflush(stdout);
  if (result->check_errors != 0) {
    std::fprintf(stderr, "qcow2-img: Check failed\n");
    return 1;
  }
  if (result->corruptions != 0) return 2;
  return result->leaks != 0 ? 3 : 0;
}

}  // namespace

const Command kCheckCommand = {
    "check",
    RunCheck,
    "check [-f FMT] [-r leaks|all] [--output=human|json] [-q] [-U] FILE",
    "Checks a qcow2 image for consistency (and repairs it with -r) as qemu-img check does.\n\n"
    "Exit status: 0 clean, 1 the check failed, 2 corruptions, 3 leaked clusters only, "
    "63 the format has no checks (raw).",
    kCheckOptions,
};

}  // namespace uq::tools
