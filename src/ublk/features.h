// What the running kernel's ublk driver offers, and what this server takes
// from it (pure: the probe itself is Control::ProbeFeatures).
//
// Kernels from 6.5 answer UBLK_U_CMD_GET_FEATURES with their UBLK_F_* set.
// Older ones do not; they are taken as 6.1 (the oldest we support): legacy
// command numbers, user recovery, no user copy, no unprivileged devices.
// Features added in 6.3 / 6.4 (UNPRIVILEGED_DEV, CMD_IOCTL_ENCODE) cannot be
// told apart on a kernel without GET_FEATURES and show as unknown there.
#ifndef UQ_SRC_UBLK_FEATURES_H_
#define UQ_SRC_UBLK_FEATURES_H_

#include <cstdint>
#include <span>
#include <string>

namespace uq::ublk {

struct KernelFeatures {
  // GET_FEATURES answered; otherwise `flags` is the assumed 6.1 set.
  bool probed = false;
  uint64_t flags = 0;
  // Control commands in use: UBLK_U_CMD_* (true) or the legacy numbers.
  bool ioctl_encoded = false;

  bool Has(uint64_t flag) const { return (flags & flag) != 0; }
};

// The UBLK_F_* set a 6.1 driver accepts (what a kernel without GET_FEATURES
// is assumed to have).
inline constexpr uint64_t kBaselineFlags = (1ULL << 1) | (1ULL << 2) | (1ULL << 3) | (1ULL << 4);

// How this server uses a feature.
enum class Use {
  kNo,           // never (not implemented)
  kAlways,       // whenever the kernel has it
  kDefault,      // by default, an option turns it off
  kOnRequest,    // with an option
  kUnprivileged  // when run without CAP_SYS_ADMIN
};

struct FeatureInfo {
  const char* name;  // UBLK_F_<name>
  uint64_t flag;
  const char* since;  // kernel release that added it
  Use use;
  const char* how;  // one line: the option, or why not
};

// Every feature bit we know, lowest bit first.
std::span<const FeatureInfo> AllFeatures();

// "yes", "no" or "unknown" (no GET_FEATURES and added in 6.3 / 6.4).
const char* KernelHas(const KernelFeatures& k, const FeatureInfo& f);

// Whether this server, as invoked (`privileged`: has CAP_SYS_ADMIN), uses
// the feature with default options on this kernel.
bool UsedByDefault(const KernelFeatures& k, const FeatureInfo& f, bool privileged);

// The `ublk-qcow2 features` report (`kernel_release`: uname -r).
std::string FeaturesHuman(const KernelFeatures& k, bool privileged,
                          const std::string& kernel_release);
std::string FeaturesJson(const KernelFeatures& k, bool privileged,
                         const std::string& kernel_release);

// "USER_RECOVERY|CMD_IOCTL_ENCODE|..." for the known bits of `flags`, plus
// "0x..." for unknown ones; "-" when none.
std::string FlagNames(uint64_t flags);

}  // namespace uq::ublk

#endif  // UQ_SRC_UBLK_FEATURES_H_
