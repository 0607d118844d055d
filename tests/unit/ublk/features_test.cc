#include "src/ublk/features.h"

#include <gtest/gtest.h>

#include <string>

#include "src/ublk/server.h"
#include "src/ublk/ublk_uapi.h"

namespace uq::ublk {
namespace {

// What 6.12's GET_FEATURES answers: every flag it knows but zero copy.
constexpr uint64_t k612 = kFlagUringCmdCompInTask | kFlagNeedGetData | kFlagUserRecovery |
                          kFlagUserRecoveryReissue | kFlagUnprivilegedDev | kFlagCmdIoctlEncode |
                          kFlagUserCopy | kFlagZoned;

KernelFeatures Kernel612() { return {.probed = true, .flags = k612, .ioctl_encoded = true}; }
KernelFeatures Kernel61() {
  return {.probed = false, .flags = kBaselineFlags, .ioctl_encoded = false};
}

const FeatureInfo& Find(const char* name) {
  for (const FeatureInfo& f : AllFeatures()) {
    if (std::string(f.name) == name) return f;
  }
  ADD_FAILURE() << name;
  return AllFeatures()[0];
}

TEST(UapiTest, UserCopyOffsets) {
  EXPECT_EQ(UserCopyOffset(0, 0, 0), 0x80000000ULL);
  EXPECT_EQ(UserCopyOffset(0, 1, 0), 0x80000000ULL + (1ULL << 25));
  EXPECT_EQ(UserCopyOffset(1, 0, 512), 0x80000000ULL + (1ULL << 41) + 512);
  EXPECT_EQ(UserCopyOffset(2, 3, 4096), 0x80000000ULL + (2ULL << 41) + (3ULL << 25) + 4096);
}

TEST(UapiTest, IoctlNumbers) {
  // UBLK_U_CMD_GET_FEATURES = _IOR('u', 0x13, struct ublksrv_ctrl_cmd).
  EXPECT_EQ(IoctlCtrl(kCmdGetFeatures), 0x80207513u);
  EXPECT_EQ(IoctlCtrl(kCmdGetDevInfo2), 0x80207512u);
  EXPECT_EQ(IoctlCtrl(kCmdAddDev), 0xc0207504u);
  EXPECT_EQ(IoctlIo(kIoFetchReq), 0xc0107520u);
}

TEST(FeaturesTest, BitsAreKnownAndOrdered) {
  uint64_t seen = 0;
  uint64_t last = 0;
  for (const FeatureInfo& f : AllFeatures()) {
    EXPECT_EQ(f.flag & seen, 0u) << f.name;
    EXPECT_GT(f.flag, last) << f.name;
    seen |= f.flag;
    last = f.flag;
  }
  EXPECT_EQ(seen, (1ULL << 14) - 1);
}

TEST(FeaturesTest, Kernel612) {
  KernelFeatures k = Kernel612();
  EXPECT_STREQ(KernelHas(k, Find("USER_COPY")), "yes");
  EXPECT_STREQ(KernelHas(k, Find("SUPPORT_ZERO_COPY")), "no");
  EXPECT_STREQ(KernelHas(k, Find("USER_RECOVERY_FAIL_IO")), "no");
  // Root: privileged devices, user copy.
  EXPECT_TRUE(UsedByDefault(k, Find("USER_COPY"), true));
  EXPECT_TRUE(UsedByDefault(k, Find("CMD_IOCTL_ENCODE"), true));
  EXPECT_TRUE(UsedByDefault(k, Find("USER_RECOVERY"), true));
  EXPECT_FALSE(UsedByDefault(k, Find("UNPRIVILEGED_DEV"), true));
  EXPECT_FALSE(UsedByDefault(k, Find("USER_RECOVERY_REISSUE"), true));
  EXPECT_FALSE(UsedByDefault(k, Find("ZONED"), true));
  // A user: unprivileged devices, which get neither user copy nor recovery.
  EXPECT_TRUE(UsedByDefault(k, Find("UNPRIVILEGED_DEV"), false));
  EXPECT_FALSE(UsedByDefault(k, Find("USER_COPY"), false));
  EXPECT_FALSE(UsedByDefault(k, Find("USER_RECOVERY"), false));
}

TEST(FeaturesTest, Kernel61Fallback) {
  KernelFeatures k = Kernel61();
  EXPECT_STREQ(KernelHas(k, Find("USER_RECOVERY")), "yes");
  EXPECT_STREQ(KernelHas(k, Find("USER_COPY")), "no");
  EXPECT_STREQ(KernelHas(k, Find("UNPRIVILEGED_DEV")), "unknown");
  EXPECT_STREQ(KernelHas(k, Find("CMD_IOCTL_ENCODE")), "unknown");
  EXPECT_FALSE(UsedByDefault(k, Find("UNPRIVILEGED_DEV"), false));
  EXPECT_FALSE(UsedByDefault(k, Find("CMD_IOCTL_ENCODE"), true));
  k.ioctl_encoded = true;  // a 6.4 kernel seen taking UBLK_U_* numbers
  EXPECT_STREQ(KernelHas(k, Find("CMD_IOCTL_ENCODE")), "yes");
}

TEST(FeaturesTest, Reports) {
  std::string human = FeaturesHuman(Kernel612(), true, "6.12.117");
  EXPECT_NE(human.find("GET_FEATURES:     yes (0x1fe)"), std::string::npos) << human;
  EXPECT_NE(human.find("ioctl-encoded"), std::string::npos);
  EXPECT_NE(human.find("\nUSER_COPY               6.5   yes     yes"), std::string::npos) << human;
  std::string json = FeaturesJson(Kernel61(), true, "6.1.0 \"x\"");
  EXPECT_NE(json.find("\"get_features\": false"), std::string::npos) << json;
  EXPECT_NE(json.find("\"command_encoding\": \"legacy\""), std::string::npos);
  EXPECT_NE(json.find("\"kernel\": \"6.1.0 \\\"x\\\"\""), std::string::npos) << json;
  EXPECT_NE(
      json.find("{\"name\": \"USER_COPY\", \"bit\": 7, \"since\": \"6.5\", \"kernel\": \"no\""),
      std::string::npos)
      << json;
  std::string no_gf = FeaturesHuman(Kernel61(), true, "6.1.0");
  EXPECT_NE(no_gf.find("GET_FEATURES:     no"), std::string::npos) << no_gf;
}

TEST(FeaturesTest, FlagNames) {
  EXPECT_EQ(FlagNames(0), "-");
  EXPECT_EQ(FlagNames(kFlagUserRecovery | kFlagUserCopy), "USER_RECOVERY|USER_COPY");
  EXPECT_EQ(FlagNames(1ULL << 40), "0x10000000000");
}

TEST(NewDeviceFlagsTest, Defaults) {
  ServerOptions o;
  auto root612 = NewDeviceFlags(o, Kernel612(), true);
  ASSERT_TRUE(root612.ok());
  EXPECT_EQ(*root612, kFlagUserRecovery | kFlagUserCopy);
  auto user612 = NewDeviceFlags(o, Kernel612(), false);
  ASSERT_TRUE(user612.ok());
  EXPECT_EQ(*user612, kFlagUnprivilegedDev);
  auto root61 = NewDeviceFlags(o, Kernel61(), true);
  ASSERT_TRUE(root61.ok());
  EXPECT_EQ(*root61, kFlagUserRecovery);
  o.reissue = true;
  o.user_copy = Want::kOff;
  EXPECT_EQ(*NewDeviceFlags(o, Kernel612(), true), kFlagUserRecovery | kFlagUserRecoveryReissue);
}

TEST(NewDeviceFlagsTest, Refusals) {
  ServerOptions uc;
  uc.user_copy = Want::kOn;
  EXPECT_TRUE(NewDeviceFlags(uc, Kernel612(), true).ok());
  auto no = NewDeviceFlags(uc, Kernel61(), true);
  ASSERT_FALSE(no.ok());
  EXPECT_NE(no.status().message().find("6.5"), absl::string_view::npos);
  auto unpriv = NewDeviceFlags(uc, Kernel612(), false);
  ASSERT_FALSE(unpriv.ok());
  EXPECT_NE(unpriv.status().message().find("unprivileged"), absl::string_view::npos);

  ServerOptions up;
  up.unprivileged = Want::kOn;
  EXPECT_EQ(*NewDeviceFlags(up, Kernel612(), false), kFlagUnprivilegedDev);
  auto old = NewDeviceFlags(up, Kernel61(), false);
  ASSERT_FALSE(old.ok());
  EXPECT_NE(old.status().message().find("6.3"), absl::string_view::npos);
  auto as_root = NewDeviceFlags(up, Kernel612(), true);
  ASSERT_FALSE(as_root.ok());
  EXPECT_NE(as_root.status().message().find("CAP_SYS_ADMIN"), absl::string_view::npos);
}

}  // namespace
}  // namespace uq::ublk
