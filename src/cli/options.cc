#include "src/cli/options.h"

#include <cctype>
#include <limits>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "format/status_macros.h"
#include "src/common/options.h"

namespace uq::cli {

const char kUsage[] =
    "usage: ublk-qcow2 COMMAND ...\n"
    "       ublk-qcow2 --help | --version\n"
    "  attach [--read-only] [--snapshot NAME] [--queues N] [--depth D]\n"
    "         [--cache none|writeback] [--cache-size SIZE] [--format qcow2|raw|auto]\n"
    "         [--foreground] [--reissue] [--writethrough] [--user-copy | --no-user-copy]\n"
    "         [--unprivileged] [--data-file PATH] [--allow-devices] IMAGE\n"
    "      serve IMAGE as /dev/ublkbN (printed); runs in the background unless --foreground\n"
    "      N queue threads share the image (default: online CPUs, at most 4), each with\n"
    "      D requests in flight; --cache none (the default) bypasses the host page cache\n"
    "      (O_DIRECT) where the file system allows it\n"
    "      user copy is used where the kernel has it (6.5+), an unprivileged device is\n"
    "      made when run without CAP_SYS_ADMIN (6.3+); the --options insist on them\n"
    "      a data file the image names is written only if it lies in the image's\n"
    "      directory: --data-file PATH names it yourself; --allow-devices lets\n"
    "      the image name block devices as its backing or data file\n"
    "  detach /dev/ublkbN | -n N | --all\n"
    "      flush, close the image cleanly and remove the device\n"
    "  list [--output=json]\n"
    "  recover -n N [--foreground]\n"
    "      start a new server for device N after its server died\n"
    "  mount [--partition M] [--rw] [--format F] [--snapshot NAME] [--queues N]\n"
    "        [--cache none|writeback] [--data-file PATH] [--allow-devices] IMAGE DIR\n"
    "      attach (read-only unless --rw) and mount the disk or its partition M on DIR;\n"
    "      without --partition: the whole disk's file system, or the only partition\n"
    "      that holds one (else the partitions are listed and the exit status is 1)\n"
    "  partitions [--output=json] [--format F] [--snapshot NAME] [--data-file PATH]\n"
    "             [--allow-devices] IMAGE\n"
    "      the partition table (MBR or GPT) and file systems, read without attaching\n"
    "  unmount DIR\n"
    "      unmount DIR and detach its device\n"
    "  features [--output=json]\n"
    "      the kernel's ublk features and which ones ublk-qcow2 uses\n"
    "'ublk-qcow2 COMMAND --help' lists every option of COMMAND.\n";

const char* FormatName(Format f) {
  switch (f) {
    case Format::kQcow2:
      return "qcow2";
    case Format::kRaw:
      return "raw";
    case Format::kAuto:
      return "auto";
  }
  return "?";
}

absl::StatusOr<Format> ParseFormat(absl::string_view s) {
  if (s == "qcow2") return Format::kQcow2;
  if (s == "raw") return Format::kRaw;
  if (s == "auto") return Format::kAuto;
  return absl::InvalidArgumentError(absl::StrCat("unknown format '", s, "' (qcow2, raw or auto)"));
}

const char* CacheModeName(CacheMode m) { return m == CacheMode::kNone ? "none" : "writeback"; }

absl::StatusOr<CacheMode> ParseCacheMode(absl::string_view s) {
  if (s == "none") return CacheMode::kNone;
  if (s == "writeback") return CacheMode::kWriteback;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown --cache mode '", s, "' (none or writeback)"));
}

absl::StatusOr<uint64_t> ParseSize(absl::string_view s) {
  absl::string_view digits = s;
  uint64_t mult = 1;
  if (absl::EndsWithIgnoreCase(digits, "ib")) {
    digits.remove_suffix(2);
  } else if (digits.size() > 1 && (digits.back() == 'b' || digits.back() == 'B') &&
             !std::isdigit(static_cast<unsigned char>(digits[digits.size() - 2]))) {
    digits.remove_suffix(1);
  }
  if (!digits.empty()) {
    switch (std::toupper(static_cast<unsigned char>(digits.back()))) {
      case 'K':
        mult = 1ULL << 10;
        break;
      case 'M':
        mult = 1ULL << 20;
        break;
      case 'G':
        mult = 1ULL << 30;
        break;
      case 'T':
        mult = 1ULL << 40;
        break;
      default:
        break;
    }
    if (mult != 1) digits.remove_suffix(1);
  }
  uint64_t v;
  if (digits.empty() || !absl::SimpleAtoi(digits, &v) ||
      v > std::numeric_limits<uint64_t>::max() / mult) {
    return absl::InvalidArgumentError(absl::StrCat("bad size '", s, "'"));
  }
  return v * mult;
}

absl::StatusOr<uint32_t> DevIdFromPath(absl::string_view path) {
  constexpr absl::string_view kPrefix = "/dev/ublkb";
  if (!absl::StartsWith(path, kPrefix)) {
    return absl::InvalidArgumentError(absl::StrCat("'", path, "' is not a /dev/ublkbN device"));
  }
  absl::string_view rest = path.substr(kPrefix.size());
  size_t n = 0;
  while (n < rest.size() && std::isdigit(static_cast<unsigned char>(rest[n]))) ++n;
  uint32_t id;
  if (n == 0 || !absl::SimpleAtoi(rest.substr(0, n), &id) || (n < rest.size() && rest[n] != 'p')) {
    return absl::InvalidArgumentError(absl::StrCat("'", path, "' is not a /dev/ublkbN device"));
  }
  return id;
}

namespace {

enum OptionId : int {
  kReadOnly = common::kLongOnlyIdBase,
  kRw,
  kSnapshot,
  kQueues,
  kDepth,
  kCacheSize,
  kCacheMode,
  kForeground,
  kReissue,
  kWritethrough,
  kUserCopy,
  kNoUserCopy,
  kUnprivileged,
  kDataFile,
  kAllowDevices,
};

constexpr common::OptionSpec kHelpOption{'h', 'h', "help", "", "show the usage"};
constexpr common::OptionSpec kFormatOption{'f', 'f', "format", "qcow2|raw|auto", "image format"};
constexpr common::OptionSpec kSnapshotOption{kSnapshot, 0, "snapshot", "NAME",
                                             "serve internal snapshot NAME (read-only)"};
constexpr common::OptionSpec kQueuesOption{
    kQueues, 0, "queues", "N", "queue threads (1..64; default: online CPUs, at most 4)"};
constexpr common::OptionSpec kDepthOption{kDepth, 0, "depth", "D",
                                          "requests in flight per queue (1..4096)"};
constexpr common::OptionSpec kCacheModeOption{
    kCacheMode, 0, "cache", "none|writeback",
    "none (default): O_DIRECT, no host page cache copy; writeback: buffered"};
constexpr common::OptionSpec kCacheOption{kCacheSize, 0, "cache-size", "SIZE",
                                          "metadata cache size"};
constexpr common::OptionSpec kReadOnlyOption{kReadOnly, 0, "read-only", "", "serve read-only"};
constexpr common::OptionSpec kWritethroughOption{kWritethrough, 0, "writethrough", "",
                                                 "complete writes once durable"};
constexpr common::OptionSpec kForegroundOption{kForeground, 0, "foreground", "",
                                               "serve in the foreground"};
constexpr common::OptionSpec kIdOption{'n', 'n', "id", "N", "device id"};
constexpr common::OptionSpec kDataFileOption{
    kDataFile, 0, "data-file", "PATH",
    "the image's external data file (instead of the name in the image; may be written)"};
constexpr common::OptionSpec kAllowDevicesOption{
    kAllowDevices, 0, "allow-devices", "",
    "let the image name block devices as backing or data file"};
constexpr common::OptionSpec kOutputOption{'o', 'o', "output", "human|json", "output format"};

constexpr common::OptionSpec kAttachOptions[] = {
    kReadOnlyOption,
    kSnapshotOption,
    kQueuesOption,
    kDepthOption,
    kCacheModeOption,
    kCacheOption,
    kFormatOption,
    kForegroundOption,
    {kReissue, 0, "reissue", "", "re-issue in-flight requests on recovery"},
    kWritethroughOption,
    {kUserCopy, 0, "user-copy", "", "insist on ublk user copy (Linux 6.5+)"},
    {kNoUserCopy, 0, "no-user-copy", "", "do not use ublk user copy"},
    {kUnprivileged, 0, "unprivileged", "", "insist on an unprivileged device (Linux 6.3+)"},
    kDataFileOption,
    kAllowDevicesOption,
    kHelpOption};
constexpr common::OptionSpec kMountOptions[] = {
    kReadOnlyOption,     {kRw, 0, "rw", "", "mount read-write"},
    kSnapshotOption,     kQueuesOption,
    kDepthOption,        kCacheModeOption,
    kCacheOption,        kFormatOption,
    kWritethroughOption, {'p', 'p', "partition", "M", "mount partition M (0: the whole disk)"},
    kDataFileOption,     kAllowDevicesOption,
    kHelpOption};
constexpr common::OptionSpec kDetachOptions[] = {
    kIdOption, {'a', 'a', "all", "", "every device"}, kHelpOption};
constexpr common::OptionSpec kRecoverOptions[] = {kIdOption, kForegroundOption, kHelpOption};
constexpr common::OptionSpec kListOptions[] = {kOutputOption, kHelpOption};
constexpr common::OptionSpec kPartitionsOptions[] = {kOutputOption,       kFormatOption,
                                                     kSnapshotOption,     kDataFileOption,
                                                     kAllowDevicesOption, kHelpOption};
constexpr common::OptionSpec kUnmountOptions[] = {kHelpOption};

std::span<const common::OptionSpec> OptionsOf(Verb v) {
  switch (v) {
    case Verb::kAttach:
      return kAttachOptions;
    case Verb::kMount:
      return kMountOptions;
    case Verb::kDetach:
      return kDetachOptions;
    case Verb::kRecover:
      return kRecoverOptions;
    case Verb::kList:
    case Verb::kFeatures:
      return kListOptions;
    case Verb::kPartitions:
      return kPartitionsOptions;
    case Verb::kUnmount:
    case Verb::kHelp:
    case Verb::kVersion:
      break;
  }
  return kUnmountOptions;
}

// What follows the options on a command's usage line.
const char* OperandsOf(Verb v) {
  switch (v) {
    case Verb::kAttach:
    case Verb::kPartitions:
      return " IMAGE";
    case Verb::kMount:
      return " IMAGE DIR";
    case Verb::kDetach:
      return " /dev/ublkbN | -n N | --all";
    case Verb::kRecover:
      return " -n N";
    case Verb::kUnmount:
      return " DIR";
    case Verb::kList:
    case Verb::kFeatures:
    case Verb::kHelp:
    case Verb::kVersion:
      break;
  }
  return "";
}

absl::StatusOr<uint16_t> ParseCount(absl::string_view opt, const std::string& v, uint32_t max) {
  uint32_t n;
  if (!absl::SimpleAtoi(v, &n) || n == 0 || n > max) {
    return absl::InvalidArgumentError(absl::StrCat("bad ", opt, " '", v, "' (1..", max, ")"));
  }
  return static_cast<uint16_t>(n);
}

// Applies one parsed option to `cmd`.
absl::Status Apply(const common::ParsedOption& o, Command& cmd) {
  const std::string& value = o.value;
  switch (o.id) {
    case kReadOnly:
      cmd.spec.read_only = true;
      break;
    case kRw:
      cmd.spec.read_only = false;
      break;
    case kSnapshot:
      if (value.empty()) return absl::InvalidArgumentError("--snapshot needs a name");
      cmd.spec.snapshot = value;
      break;
    case kQueues: {
      UQ_ASSIGN_OR_RETURN(cmd.spec.queues, ParseCount("--queues", value, 64));
      break;
    }
    case kDepth: {
      UQ_ASSIGN_OR_RETURN(cmd.spec.depth, ParseCount("--depth", value, 4096));
      break;
    }
    case kCacheMode: {
      UQ_ASSIGN_OR_RETURN(cmd.spec.cache, ParseCacheMode(value));
      break;
    }
    case kCacheSize: {
      UQ_ASSIGN_OR_RETURN(cmd.spec.cache_size_bytes, ParseSize(value));
      break;
    }
    case 'f': {
      UQ_ASSIGN_OR_RETURN(cmd.spec.format, ParseFormat(value));
      break;
    }
    case kWritethrough:
      cmd.spec.writethrough = true;
      break;
    case kReissue:
      cmd.spec.reissue = true;
      break;
    case kUserCopy:
      cmd.user_copy = Toggle::kOn;
      break;
    case kNoUserCopy:
      cmd.user_copy = Toggle::kOff;
      break;
    case kUnprivileged:
      cmd.unprivileged = Toggle::kOn;
      break;
    case kForeground:
      cmd.foreground = true;
      break;
    case kDataFile:
      if (value.empty()) return absl::InvalidArgumentError("--data-file needs a path");
      cmd.spec.data_file = value;
      break;
    case kAllowDevices:
      cmd.spec.allow_devices = true;
      break;
    case 'n': {
      uint32_t id;
      if (!absl::SimpleAtoi(value, &id)) {
        return absl::InvalidArgumentError(absl::StrCat("bad device id '", value, "'"));
      }
      cmd.dev_id = id;
      break;
    }
    case 'a':
      cmd.all = true;
      break;
    case 'o':
      if (value == "json") {
        cmd.json = true;
      } else if (value == "human") {
        cmd.json = false;
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat("unknown output '", value, "' (json or human)"));
      }
      break;
    case 'p': {
      uint32_t n;
      if (!absl::SimpleAtoi(value, &n) || n > 256) {
        return absl::InvalidArgumentError(absl::StrCat("bad partition '", value, "'"));
      }
      cmd.partition = static_cast<int>(n);
      break;
    }
    default:
      return absl::InternalError(absl::StrCat("unhandled option id ", o.id));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Command> ParseCommandLine(std::span<const std::string> args) {
  Command cmd;
  if (args.empty()) return absl::InvalidArgumentError("missing command (try --help)");
  const std::string& verb = args[0];
  if (verb == "help" || verb == "--help" || verb == "-h") {
    cmd.verb = Verb::kHelp;
    return cmd;
  }
  if (verb == "--version" || verb == "-V") {
    if (args.size() > 1) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", args[1], "'"));
    }
    cmd.verb = Verb::kVersion;
    return cmd;
  }
  if (verb == "attach") {
    cmd.verb = Verb::kAttach;
  } else if (verb == "detach") {
    cmd.verb = Verb::kDetach;
  } else if (verb == "list") {
    cmd.verb = Verb::kList;
  } else if (verb == "recover") {
    cmd.verb = Verb::kRecover;
  } else if (verb == "mount") {
    cmd.verb = Verb::kMount;
    cmd.spec.read_only = true;
  } else if (verb == "unmount" || verb == "umount") {
    cmd.verb = Verb::kUnmount;
  } else if (verb == "features") {
    cmd.verb = Verb::kFeatures;
  } else if (verb == "partitions") {
    cmd.verb = Verb::kPartitions;
    cmd.spec.read_only = true;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("unknown command '", verb, "' (try --help)"));
  }

  absl::StatusOr<common::ParsedArgs> parsed =
      common::ParseOptions(args.subspan(1), OptionsOf(cmd.verb));
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(verb, ": ", parsed.status().message(), " (try --help)"));
  }
  if (parsed->Has('h')) {
    cmd.help =
        common::FormatHelp(absl::StrCat("ublk-qcow2 ", verb, " [OPTIONS]", OperandsOf(cmd.verb)),
                           "", OptionsOf(cmd.verb));
    cmd.verb = Verb::kHelp;
    return cmd;
  }
  for (const common::ParsedOption& o : parsed->options) {
    UQ_RETURN_IF_ERROR(Apply(o, cmd));
  }
  const std::vector<std::string>& positional = parsed->operands;

  auto want = [&](size_t n, const char* what) -> absl::Status {
    if (positional.size() < n) return absl::InvalidArgumentError(absl::StrCat("missing ", what));
    if (positional.size() > n) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", positional[n], "'"));
    }
    return absl::OkStatus();
  };
  switch (cmd.verb) {
    case Verb::kAttach:
      if (auto st = want(1, "image"); !st.ok()) return st;
      cmd.spec.image = positional[0];
      break;
    case Verb::kMount:
      if (auto st = want(2, "image and directory"); !st.ok()) return st;
      cmd.spec.image = positional[0];
      cmd.dir = positional[1];
      break;
    case Verb::kPartitions:
      if (auto st = want(1, "image"); !st.ok()) return st;
      cmd.spec.image = positional[0];
      break;
    case Verb::kUnmount:
      if (auto st = want(1, "directory"); !st.ok()) return st;
      cmd.dir = positional[0];
      break;
    case Verb::kList:
    case Verb::kFeatures:
      if (auto st = want(0, ""); !st.ok()) return st;
      break;
    case Verb::kRecover:
      if (auto st = want(0, ""); !st.ok()) return st;
      if (cmd.dev_id < 0) return absl::InvalidArgumentError("recover needs -n N");
      break;
    case Verb::kDetach: {
      int ways = (cmd.all ? 1 : 0) + (cmd.dev_id >= 0 ? 1 : 0) + (positional.empty() ? 0 : 1);
      if (positional.size() > 1) {
        return absl::InvalidArgumentError(
            absl::StrCat("unexpected argument '", positional[1], "'"));
      }
      if (ways != 1) {
        return absl::InvalidArgumentError("detach needs exactly one of /dev/ublkbN, -n N, --all");
      }
      if (!positional.empty()) {
        auto id = DevIdFromPath(positional[0]);
        if (!id.ok()) return id.status();
        cmd.device = positional[0];
        cmd.dev_id = *id;
      }
      break;
    }
    case Verb::kHelp:
    case Verb::kVersion:
      break;
  }
  if (!cmd.spec.snapshot.empty()) {
    if (cmd.verb == Verb::kMount && !cmd.spec.read_only) {
      return absl::InvalidArgumentError("--snapshot is read-only: drop --rw");
    }
    cmd.spec.read_only = true;
  }
  if (!cmd.spec.snapshot.empty() && cmd.spec.format == Format::kRaw) {
    return absl::InvalidArgumentError("--snapshot needs a qcow2 image");
  }
  if (!cmd.spec.data_file.empty() && cmd.spec.format == Format::kRaw) {
    return absl::InvalidArgumentError("--data-file needs a qcow2 image");
  }
  return cmd;
}

}  // namespace uq::cli
