// ublk-qcow2's options for the host files an image names (issue 12):
// --data-file PATH and --allow-devices on attach and mount, their --help, and
// the state file that `recover` serves them from again.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "src/cli/options.h"
#include "src/cli/state.h"

namespace uq::cli {
namespace {

absl::StatusOr<Command> Parse(std::vector<std::string> args) { return ParseCommandLine(args); }

TEST(CliOpenOptionsTest, AttachAndMountTakeDataFileAndAllowDevices) {
  auto a = Parse({"attach", "--data-file", "/srv/disk.data", "--allow-devices", "disk.qcow2"});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->spec.data_file, "/srv/disk.data");
  EXPECT_TRUE(a->spec.allow_devices);
  auto m = Parse({"mount", "--data-file=d.data", "--allow-devices", "disk.qcow2", "/mnt"});
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->spec.data_file, "d.data");
  EXPECT_TRUE(m->spec.allow_devices);
  auto plain = Parse({"attach", "disk.qcow2"});
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(plain->spec.data_file, "");
  EXPECT_FALSE(plain->spec.allow_devices);
}

TEST(CliOpenOptionsTest, Errors) {
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"attach", "disk.qcow2", "--data-file"},
           {"attach", "--data-file=", "disk.qcow2"},
           {"attach", "--format", "raw", "--data-file", "d", "disk.raw"},
           {"detach", "--allow-devices", "-n", "1"},
       }) {
    auto c = Parse(args);
    EXPECT_FALSE(c.ok()) << args[1];
    if (!c.ok()) {
      EXPECT_EQ(c.status().message().find('\n'), absl::string_view::npos);
    }
  }
}

TEST(CliOpenOptionsTest, HelpNamesBothOptionsForAttachAndMount) {
  const std::string usage = kUsage;
  const size_t attach = usage.find("  attach ");
  const size_t detach = usage.find("  detach ");
  const size_t mount = usage.find("  mount ");
  const size_t unmount = usage.find("  unmount ");
  ASSERT_NE(attach, std::string::npos);
  ASSERT_NE(mount, std::string::npos);
  const std::string attach_text = usage.substr(attach, detach - attach);
  const std::string mount_text = usage.substr(mount, unmount - mount);
  for (const std::string& text : {attach_text, mount_text}) {
    EXPECT_NE(text.find("[--data-file PATH] [--allow-devices]"), std::string::npos) << text;
  }
  EXPECT_NE(attach_text.find("--data-file PATH names it yourself"), std::string::npos);
  EXPECT_NE(attach_text.find("--allow-devices lets"), std::string::npos);
}

TEST(CliOpenOptionsTest, StateKeepsThemForRecover) {
  DeviceState s;
  s.spec.image = "/srv/disk.qcow2";
  s.spec.data_file = "/srv/other/disk.data";
  s.spec.allow_devices = true;
  auto d = DecodeState(EncodeState(s));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->spec.data_file, "/srv/other/disk.data");
  EXPECT_TRUE(d->spec.allow_devices);
  // A state file written before these options existed: neither is set.
  s.spec.data_file.clear();
  s.spec.allow_devices = false;
  std::string old = EncodeState(s);
  for (const char* key : {", \"data_file\": \"\"", ", \"allow_devices\": false"}) {
    const size_t at = old.find(key);
    ASSERT_NE(at, std::string::npos) << old;
    old.erase(at, std::string(key).size());
  }
  auto o = DecodeState(old);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->spec.data_file, "");
  EXPECT_FALSE(o->spec.allow_devices);
}

}  // namespace
}  // namespace uq::cli
