#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "src/cli/options.h"
#include "src/cli/state.h"
#include "src/common/json.h"

namespace uq::cli {
namespace {

absl::StatusOr<Command> Parse(std::vector<std::string> args) { return ParseCommandLine(args); }

TEST(CliParseTest, AttachWithEverything) {
  auto c = Parse({"attach", "--read-only", "--snapshot", "s1", "--queues=2", "--depth", "64",
                  "--cache-size", "32M", "--format", "qcow2", "--foreground", "--reissue",
                  "--writethrough", "disk.qcow2"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->verb, Verb::kAttach);
  EXPECT_TRUE(c->spec.read_only);
  EXPECT_EQ(c->spec.snapshot, "s1");
  EXPECT_EQ(c->spec.queues, 2);
  EXPECT_EQ(c->spec.depth, 64);
  EXPECT_EQ(c->spec.cache_size_bytes, 32u << 20);
  EXPECT_TRUE(c->foreground);
  EXPECT_TRUE(c->spec.reissue);
  EXPECT_TRUE(c->spec.writethrough);
  EXPECT_EQ(c->spec.image, "disk.qcow2");
}

// Defaults a qemu-nbd user expects: O_DIRECT, queues chosen at attach time.
TEST(CliParseTest, QueueAndCacheDefaults) {
  auto c = Parse({"attach", "d.qcow2"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->spec.queues, 0);  // resolved to online CPUs (at most 4) by attach
  EXPECT_EQ(c->spec.cache, CacheMode::kNone);
  auto w = Parse({"attach", "--cache", "writeback", "--queues", "4", "d.qcow2"});
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->spec.cache, CacheMode::kWriteback);
  EXPECT_EQ(w->spec.queues, 4);
  auto m = Parse({"mount", "--cache=none", "d.qcow2", "/mnt"});
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->spec.cache, CacheMode::kNone);
  auto bad = Parse({"attach", "--cache", "unsafe", "d.qcow2"});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(), "unknown --cache mode 'unsafe' (none or writeback)");
}

TEST(CliParseTest, Version) {
  for (const char* spelling : {"--version", "-V"}) {
    auto c = Parse({spelling});
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->verb, Verb::kVersion);
  }
  EXPECT_FALSE(Parse({"--version", "extra"}).ok());
}

TEST(CliParseTest, MountPartitionChoice) {
  auto automatic = Parse({"mount", "d.qcow2", "/mnt"});
  ASSERT_TRUE(automatic.ok()) << automatic.status();
  EXPECT_EQ(automatic->partition, -1);
  auto whole = Parse({"mount", "--partition", "0", "d.qcow2", "/mnt"});
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_EQ(whole->partition, 0);
  auto second = Parse({"mount", "-p", "2", "d.qcow2", "/mnt"});
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->partition, 2);
  EXPECT_FALSE(Parse({"mount", "--partition", "257", "d.qcow2", "/mnt"}).ok());
  EXPECT_FALSE(Parse({"mount", "--partition", "-1", "d.qcow2", "/mnt"}).ok());
}

TEST(CliParseTest, Partitions) {
  auto c = Parse({"partitions", "--output=json", "--format", "raw", "d.img"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->verb, Verb::kPartitions);
  EXPECT_TRUE(c->json);
  EXPECT_TRUE(c->spec.read_only);
  EXPECT_EQ(c->spec.format, Format::kRaw);
  EXPECT_EQ(c->spec.image, "d.img");
  EXPECT_FALSE(Parse({"partitions"}).ok());
  EXPECT_FALSE(Parse({"partitions", "a", "b"}).ok());
  EXPECT_FALSE(Parse({"partitions", "--rw", "a"}).ok());
}

TEST(CliParseTest, CommandHelpListsItsOptions) {
  auto c = Parse({"mount", "--help"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->verb, Verb::kHelp);
  EXPECT_NE(c->help.find("usage: ublk-qcow2 mount [OPTIONS] IMAGE DIR"), std::string::npos)
      << c->help;
  for (const char* option : {"--partition=M", "--rw", "--snapshot=NAME", "--format="}) {
    EXPECT_NE(c->help.find(option), std::string::npos) << option << " in " << c->help;
  }
  auto overview = Parse({"--help"});
  ASSERT_TRUE(overview.ok());
  EXPECT_TRUE(overview->help.empty());
}

TEST(CliParseTest, SnapshotImpliesReadOnly) {
  auto c = Parse({"attach", "--snapshot", "s", "d.qcow2"});
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(c->spec.read_only);
  EXPECT_FALSE(Parse({"mount", "--rw", "--snapshot", "s", "d.qcow2", "/mnt"}).ok());
}

TEST(CliParseTest, Errors) {
  EXPECT_FALSE(Parse({}).ok());
  EXPECT_FALSE(Parse({"frobnicate"}).ok());
  EXPECT_FALSE(Parse({"attach"}).ok());
  EXPECT_FALSE(Parse({"attach", "a", "b"}).ok());
  EXPECT_FALSE(Parse({"attach", "--queues", "0", "a"}).ok());
  EXPECT_FALSE(Parse({"attach", "--depth", "5000", "a"}).ok());
  EXPECT_FALSE(Parse({"attach", "--format", "vmdk", "a"}).ok());
  EXPECT_FALSE(Parse({"attach", "--bogus", "a"}).ok());
  EXPECT_FALSE(Parse({"detach"}).ok());
  EXPECT_FALSE(Parse({"detach", "-n", "1", "--all"}).ok());
  EXPECT_FALSE(Parse({"detach", "/dev/sda"}).ok());
  EXPECT_FALSE(Parse({"recover"}).ok());
  EXPECT_FALSE(Parse({"mount", "img"}).ok());
  EXPECT_FALSE(Parse({"list", "--output", "xml"}).ok());
}

TEST(CliParseTest, DetachForms) {
  auto a = Parse({"detach", "/dev/ublkb7"});
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->dev_id, 7);
  auto b = Parse({"detach", "-n", "3"});
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->dev_id, 3);
  auto c = Parse({"detach", "--all"});
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(c->all);
}

TEST(CliParseTest, MountDefaultsReadOnly) {
  auto c = Parse({"mount", "--partition", "2", "d.qcow2", "/mnt"});
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(c->spec.read_only);
  EXPECT_EQ(c->partition, 2);
  EXPECT_EQ(c->dir, "/mnt");
  auto rw = Parse({"mount", "--rw", "d.qcow2", "/mnt"});
  ASSERT_TRUE(rw.ok());
  EXPECT_FALSE(rw->spec.read_only);
}

TEST(CliParseTest, ListJson) {
  auto c = Parse({"list", "--output=json"});
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(c->json);
}

TEST(CliParseTest, KernelFeatureOptions) {
  auto d = Parse({"attach", "d.qcow2"});
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->user_copy, Toggle::kAuto);
  EXPECT_EQ(d->unprivileged, Toggle::kAuto);
  auto on = Parse({"attach", "--user-copy", "--unprivileged", "d.qcow2"});
  ASSERT_TRUE(on.ok());
  EXPECT_EQ(on->user_copy, Toggle::kOn);
  EXPECT_EQ(on->unprivileged, Toggle::kOn);
  auto off = Parse({"attach", "--no-user-copy", "d.qcow2"});
  ASSERT_TRUE(off.ok());
  EXPECT_EQ(off->user_copy, Toggle::kOff);
  EXPECT_FALSE(Parse({"attach", "--user-copy=yes", "d.qcow2"}).ok());
  EXPECT_FALSE(Parse({"list", "--user-copy"}).ok());
  EXPECT_FALSE(Parse({"recover", "-n", "1", "--unprivileged"}).ok());
}

TEST(CliParseTest, Features) {
  auto h = Parse({"features"});
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->verb, Verb::kFeatures);
  EXPECT_FALSE(h->json);
  auto j = Parse({"features", "--output=json"});
  ASSERT_TRUE(j.ok());
  EXPECT_TRUE(j->json);
  EXPECT_FALSE(Parse({"features", "extra"}).ok());
  EXPECT_FALSE(Parse({"features", "--output", "xml"}).ok());
}

TEST(CliParseTest, Sizes) {
  EXPECT_EQ(*ParseSize("4096"), 4096u);
  EXPECT_EQ(*ParseSize("64K"), 65536u);
  EXPECT_EQ(*ParseSize("8MiB"), 8u << 20);
  EXPECT_EQ(*ParseSize("1g"), 1u << 30);
  EXPECT_FALSE(ParseSize("").ok());
  EXPECT_FALSE(ParseSize("x").ok());
  EXPECT_FALSE(ParseSize("99999999999999999999").ok());
}

TEST(CliParseTest, DevIdFromPath) {
  EXPECT_EQ(*DevIdFromPath("/dev/ublkb0"), 0u);
  EXPECT_EQ(*DevIdFromPath("/dev/ublkb12p3"), 12u);
  EXPECT_FALSE(DevIdFromPath("/dev/ublkc1").ok());
  EXPECT_FALSE(DevIdFromPath("/dev/ublkb").ok());
  EXPECT_FALSE(DevIdFromPath("/dev/ublkb1x").ok());
}

TEST(StateTest, RoundTrip) {
  DeviceState s;
  s.dev_id = 4;
  s.pid = 1234;
  s.spec.image = "/tmp/a \"quoted\"\\dir/disk.qcow2";
  s.spec.format = Format::kRaw;
  s.spec.read_only = true;
  s.spec.snapshot = "snap";
  s.spec.queues = 2;
  s.spec.depth = 64;
  s.spec.cache_size_bytes = 1 << 20;
  s.spec.reissue = true;
  s.spec.writethrough = true;
  s.spec.cache = CacheMode::kWriteback;
  auto d = DecodeState(EncodeState(s));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->spec.cache, CacheMode::kWriteback);
  EXPECT_EQ(d->dev_id, 4u);
  EXPECT_EQ(d->pid, 1234);
  EXPECT_EQ(d->spec.image, s.spec.image);
  EXPECT_EQ(d->spec.format, Format::kRaw);
  EXPECT_TRUE(d->spec.read_only);
  EXPECT_EQ(d->spec.snapshot, "snap");
  EXPECT_EQ(d->spec.queues, 2);
  EXPECT_EQ(d->spec.depth, 64);
  EXPECT_EQ(d->spec.cache_size_bytes, 1u << 20);
  EXPECT_TRUE(d->spec.reissue);
  EXPECT_TRUE(d->spec.writethrough);
}

// Image paths are bytes: UTF-8 names and control characters must survive the
// state file that `recover` reads back, and `list --output=json` must stay
// valid JSON (bytes >= 0x80 pass through, controls become \u00XX).
TEST(StateTest, NonAsciiAndControlBytesRoundTrip) {
  const std::string image = "/tmp/d\xc3\xa9j\xc3\xa0 vu/\x01\r\x1f.qcow2";
  EXPECT_EQ(common::JsonQuote("\xc3\xa9\x01\r", common::JsonLayout::kLine),
            "\"\xc3\xa9\\u0001\\u000d\"");
  DeviceState s;
  s.dev_id = 7;
  s.pid = 99;
  s.spec.image = image;
  auto d = DecodeState(EncodeState(s));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->spec.image, image);
}

TEST(StateTest, RejectsGarbage) {
  EXPECT_FALSE(DecodeState("").ok());
  EXPECT_FALSE(DecodeState("{\"dev_id\": 1").ok());
  EXPECT_FALSE(DecodeState("{\"dev_id\": 1}").ok());
}

}  // namespace
}  // namespace uq::cli
