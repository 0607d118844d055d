#include "src/cli/options.h"

#include <cctype>
#include <limits>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace uq::cli {

const char kUsage[] =
    "usage: ublk-qcow2 COMMAND ...\n"
    "  attach [--read-only] [--snapshot NAME] [--queues N] [--depth D]\n"
    "         [--cache-size SIZE] [--format qcow2|raw|auto] [--foreground] [--reissue]\n"
    "         [--writethrough] IMAGE\n"
    "      serve IMAGE as /dev/ublkbN (printed); runs in the background unless --foreground\n"
    "  detach /dev/ublkbN | -n N | --all\n"
    "      flush, close the image cleanly and remove the device\n"
    "  list [--output=json]\n"
    "  recover -n N [--foreground]\n"
    "      start a new server for device N after its server died\n"
    "  mount [--partition M] [--rw] [--format F] [--snapshot NAME] IMAGE DIR\n"
    "      attach (read-only unless --rw) and mount the disk or its partition M on DIR\n"
    "  unmount DIR\n"
    "      unmount DIR and detach its device\n";

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

// Walks the arguments; supports "--opt value" and "--opt=value".
class ArgReader {
 public:
  explicit ArgReader(std::span<const std::string> args) : args_(args) {}
  bool done() const { return i_ >= args_.size(); }
  const std::string& Next() { return args_[i_++]; }
  absl::StatusOr<std::string> Value(const std::string& opt, absl::string_view inline_value,
                                    bool has_inline) {
    if (has_inline) return std::string(inline_value);
    if (done()) return absl::InvalidArgumentError(absl::StrCat(opt, " needs a value"));
    return Next();
  }

 private:
  std::span<const std::string> args_;
  size_t i_ = 0;
};

absl::StatusOr<uint16_t> ParseCount(const std::string& opt, const std::string& v, uint32_t max) {
  uint32_t n;
  if (!absl::SimpleAtoi(v, &n) || n == 0 || n > max) {
    return absl::InvalidArgumentError(absl::StrCat("bad ", opt, " '", v, "' (1..", max, ")"));
  }
  return static_cast<uint16_t>(n);
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
  } else {
    return absl::InvalidArgumentError(absl::StrCat("unknown command '", verb, "' (try --help)"));
  }

  std::vector<std::string> positional;
  ArgReader r(args.subspan(1));
  const Verb v = cmd.verb;
  const bool image_opts = v == Verb::kAttach || v == Verb::kMount;
  while (!r.done()) {
    std::string arg = r.Next();
    if (arg.size() < 2 || arg[0] != '-' || arg == "--") {
      if (arg == "--") {
        while (!r.done()) positional.push_back(r.Next());
        break;
      }
      positional.push_back(arg);
      continue;
    }
    std::string opt = arg;
    std::string inline_value;
    bool has_inline = false;
    if (size_t eq = arg.find('='); arg.rfind("--", 0) == 0 && eq != std::string::npos) {
      opt = arg.substr(0, eq);
      inline_value = arg.substr(eq + 1);
      has_inline = true;
    }
    auto value = [&]() { return r.Value(opt, inline_value, has_inline); };
    auto flag_ok = [&]() -> absl::Status {
      if (has_inline) return absl::InvalidArgumentError(absl::StrCat(opt, " takes no value"));
      return absl::OkStatus();
    };

    if (opt == "--help" || opt == "-h") {
      cmd.verb = Verb::kHelp;
      return cmd;
    } else if (image_opts && opt == "--read-only") {
      if (auto st = flag_ok(); !st.ok()) return st;
      cmd.spec.read_only = true;
    } else if (v == Verb::kMount && opt == "--rw") {
      if (auto st = flag_ok(); !st.ok()) return st;
      cmd.spec.read_only = false;
    } else if (image_opts && opt == "--snapshot") {
      auto s = value();
      if (!s.ok()) return s.status();
      if (s->empty()) return absl::InvalidArgumentError("--snapshot needs a name");
      cmd.spec.snapshot = *s;
    } else if (image_opts && opt == "--queues") {
      auto s = value();
      if (!s.ok()) return s.status();
      auto n = ParseCount(opt, *s, 64);
      if (!n.ok()) return n.status();
      cmd.spec.queues = *n;
    } else if (image_opts && opt == "--depth") {
      auto s = value();
      if (!s.ok()) return s.status();
      auto n = ParseCount(opt, *s, 4096);
      if (!n.ok()) return n.status();
      cmd.spec.depth = *n;
    } else if (image_opts && opt == "--cache-size") {
      auto s = value();
      if (!s.ok()) return s.status();
      auto n = ParseSize(*s);
      if (!n.ok()) return n.status();
      cmd.spec.cache_size_bytes = *n;
    } else if (image_opts && (opt == "--format" || opt == "-f")) {
      auto s = value();
      if (!s.ok()) return s.status();
      auto f = ParseFormat(*s);
      if (!f.ok()) return f.status();
      cmd.spec.format = *f;
    } else if (image_opts && opt == "--writethrough") {
      if (auto st = flag_ok(); !st.ok()) return st;
      cmd.spec.writethrough = true;
    } else if (v == Verb::kAttach && opt == "--reissue") {
      if (auto st = flag_ok(); !st.ok()) return st;
      cmd.spec.reissue = true;
    } else if ((v == Verb::kAttach || v == Verb::kRecover) && opt == "--foreground") {
      if (auto st = flag_ok(); !st.ok()) return st;
      cmd.foreground = true;
    } else if ((v == Verb::kDetach || v == Verb::kRecover) && (opt == "-n" || opt == "--id")) {
      auto s = value();
      if (!s.ok()) return s.status();
      uint32_t id;
      if (!absl::SimpleAtoi(*s, &id)) {
        return absl::InvalidArgumentError(absl::StrCat("bad device id '", *s, "'"));
      }
      cmd.dev_id = id;
    } else if (v == Verb::kDetach && (opt == "--all" || opt == "-a")) {
      if (auto st = flag_ok(); !st.ok()) return st;
      cmd.all = true;
    } else if (v == Verb::kList && (opt == "--output" || opt == "-o")) {
      auto s = value();
      if (!s.ok()) return s.status();
      if (*s == "json") {
        cmd.json = true;
      } else if (*s != "human") {
        return absl::InvalidArgumentError(
            absl::StrCat("unknown output '", *s, "' (json or human)"));
      }
    } else if (v == Verb::kMount && (opt == "--partition" || opt == "-p")) {
      auto s = value();
      if (!s.ok()) return s.status();
      uint32_t n;
      if (!absl::SimpleAtoi(*s, &n) || n == 0 || n > 256) {
        return absl::InvalidArgumentError(absl::StrCat("bad partition '", *s, "'"));
      }
      cmd.partition = static_cast<int>(n);
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown option '", opt, "' for ", verb, " (try --help)"));
    }
  }

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
    case Verb::kUnmount:
      if (auto st = want(1, "directory"); !st.ok()) return st;
      cmd.dir = positional[0];
      break;
    case Verb::kList:
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
  return cmd;
}

}  // namespace uq::cli
