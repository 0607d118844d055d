#include "src/ublk/features.h"

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "src/ublk/ublk_uapi.h"

namespace uq::ublk {

namespace {

constexpr FeatureInfo kFeatures[] = {
    {"SUPPORT_ZERO_COPY", kFlagSupportZeroCopy, "6.15", Use::kNo,
     "not yet: the engine would have to do its file I/O on registered request buffers"},
    {"URING_CMD_COMP_IN_TASK", kFlagUringCmdCompInTask, "6.0", Use::kNo,
     "a kernel-side completion mode, nothing for a server to do"},
    {"NEED_GET_DATA", kFlagNeedGetData, "6.0", Use::kNo,
     "not needed: every tag has its buffer from the start"},
    {"USER_RECOVERY", kFlagUserRecovery, "6.0", Use::kAlways,
     "`recover` after the server died (the kernel drops it for unprivileged devices)"},
    {"USER_RECOVERY_REISSUE", kFlagUserRecoveryReissue, "6.0", Use::kOnRequest, "attach --reissue"},
    {"UNPRIVILEGED_DEV", kFlagUnprivilegedDev, "6.3", Use::kUnprivileged,
     "attach without CAP_SYS_ADMIN (or --unprivileged)"},
    {"CMD_IOCTL_ENCODE", kFlagCmdIoctlEncode, "6.4", Use::kAlways,
     "UBLK_U_* command numbers (the legacy ones only on kernels without it)"},
    {"USER_COPY", kFlagUserCopy, "6.5", Use::kDefault,
     "request data by pread/pwrite on /dev/ublkcN; --no-user-copy turns it off"},
    {"ZONED", kFlagZoned, "6.6", Use::kNo, "qcow2 images are not zoned"},
    {"USER_RECOVERY_FAIL_IO", kFlagUserRecoveryFailIo, "6.13", Use::kNo,
     "not yet: without a server, I/O waits for `recover`"},
    {"UPDATE_SIZE", kFlagUpdateSize, "6.16", Use::kNo, "not yet: no resize of an attached image"},
    {"AUTO_BUF_REG", kFlagAutoBufReg, "6.16", Use::kNo, "not yet: needs zero copy"},
    {"QUIESCE", kFlagQuiesce, "6.16", Use::kNo, "not yet: no server upgrade in place"},
    {"PER_IO_DAEMON", kFlagPerIoDaemon, "6.16", Use::kNo, "not yet: one thread per queue"},
};

const char* UseName(Use u) {
  switch (u) {
    case Use::kNo:
      return "no";
    case Use::kAlways:
      return "always";
    case Use::kDefault:
      return "default";
    case Use::kOnRequest:
      return "on-request";
    case Use::kUnprivileged:
      return "unprivileged";
  }
  return "?";
}

std::string Hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof(buf), "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

// The server would create an unprivileged device when run like this.
bool UnprivilegedMode(const KernelFeatures& k, bool privileged) {
  return !privileged && k.Has(kFlagUnprivilegedDev);
}

}  // namespace

std::span<const FeatureInfo> AllFeatures() { return kFeatures; }

const char* KernelHas(const KernelFeatures& k, const FeatureInfo& f) {
  if (k.probed) return k.Has(f.flag) ? "yes" : "no";
  if ((kBaselineFlags & f.flag) != 0) return "yes";
  if (f.flag == kFlagCmdIoctlEncode && k.ioctl_encoded) return "yes";
  if (f.flag == kFlagUnprivilegedDev || f.flag == kFlagCmdIoctlEncode) return "unknown";
  return "no";
}

bool UsedByDefault(const KernelFeatures& k, const FeatureInfo& f, bool privileged) {
  if (std::string(KernelHas(k, f)) != "yes") return false;
  switch (f.use) {
    case Use::kNo:
    case Use::kOnRequest:
      return false;
    case Use::kAlways:
      // The kernel drops user recovery from unprivileged devices.
      return !(f.flag == kFlagUserRecovery && UnprivilegedMode(k, privileged));
    case Use::kDefault:
      // User copy is refused for unprivileged devices.
      return !(f.flag == kFlagUserCopy && UnprivilegedMode(k, privileged));
    case Use::kUnprivileged:
      return !privileged;
  }
  return false;
}

std::string FlagNames(uint64_t flags) {
  std::string out;
  uint64_t known = 0;
  for (const FeatureInfo& f : kFeatures) {
    known |= f.flag;
    if ((flags & f.flag) != 0) absl::StrAppend(&out, out.empty() ? "" : "|", f.name);
  }
  if ((flags & ~known) != 0) absl::StrAppend(&out, out.empty() ? "" : "|", Hex(flags & ~known));
  return out.empty() ? "-" : out;
}

std::string FeaturesHuman(const KernelFeatures& k, bool privileged,
                          const std::string& kernel_release) {
  std::string out = absl::StrCat("kernel:           ", kernel_release, "\n");
  if (k.probed) {
    absl::StrAppend(&out, "GET_FEATURES:     yes (", Hex(k.flags), ")\n");
  } else {
    absl::StrAppend(&out, "GET_FEATURES:     no (kernel before 6.5: 6.1's features assumed)\n");
  }
  absl::StrAppend(&out, "control commands: ",
                  k.ioctl_encoded ? "ioctl-encoded (UBLK_U_CMD_*)" : "legacy numbers", "\n");
  absl::StrAppend(&out, "running as:       ",
                  privileged ? "CAP_SYS_ADMIN (privileged devices)" : "without CAP_SYS_ADMIN",
                  "\n\n");
  char line[160];
  std::snprintf(line, sizeof(line), "%-23s %-5s %-7s %-5s %s\n", "FEATURE", "SINCE", "KERNEL",
                "USED", "HOW");
  out += line;
  for (const FeatureInfo& f : kFeatures) {
    std::snprintf(line, sizeof(line), "%-23s %-5s %-7s %-5s ", f.name, f.since, KernelHas(k, f),
                  UsedByDefault(k, f, privileged) ? "yes" : "no");
    absl::StrAppend(&out, line, f.how, "\n");
  }
  return out;
}

std::string FeaturesJson(const KernelFeatures& k, bool privileged,
                         const std::string& kernel_release) {
  std::string release;
  for (char c : kernel_release) {
    if (c == '"' || c == '\\') release += '\\';
    if (static_cast<unsigned char>(c) >= 0x20) release += c;
  }
  std::string out = absl::StrCat(
      "{\"kernel\": \"", release, "\", \"get_features\": ", k.probed ? "true" : "false",
      ", \"flags\": \"", Hex(k.flags), "\", \"command_encoding\": \"",
      k.ioctl_encoded ? "ioctl" : "legacy", "\", \"privileged\": ", privileged ? "true" : "false",
      ", \"features\": [");
  bool first = true;
  for (const FeatureInfo& f : kFeatures) {
    absl::StrAppend(&out, first ? "" : ",", "\n  {\"name\": \"", f.name,
                    "\", \"bit\": ", __builtin_ctzll(f.flag), ", \"since\": \"", f.since,
                    "\", \"kernel\": \"", KernelHas(k, f),
                    "\", \"used\": ", UsedByDefault(k, f, privileged) ? "true" : "false",
                    ", \"use\": \"", UseName(f.use), "\"}");
    first = false;
  }
  absl::StrAppend(&out, "\n]}\n");
  return out;
}

}  // namespace uq::ublk
