// Issue 12 through qcow2-img and ublk-qcow2, the cases of the open policy
// test (open_policy_test.cc, same executable) about the new options:
//  - a block device named as backing or data file is refused by every
//    command that opens a chain, in one line naming --allow-devices, and
//    opened with it (fake_block_device.cc stands in for the device);
//  - the --help of io and of ublk-qcow2 attach/mount lists the new options.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstddef>
#include <filesystem>
#include <functional>
#include <string>
#include <system_error>
#include <utility>

#include "tests/interop/interop_util.h"
#include "tests/interop/open_policy_util.h"

namespace uq::interop::open_policy {
namespace {

// --allow-devices in every command that opens a backing chain or data file.
// An image names a file that fake_block_device.cc (LD_PRELOAD) makes stat
// report as a block device, so no privileges, loop driver or disk are needed:
// the engine's check (a stat of the name) sees a block device, and a command
// let past it reads the regular file. Each command line runs three times on
// a fresh image: without the stand-in (the expected result), with it (one
// line naming the file and the option, exit 1, nothing changed), and with it
// and --allow-devices (the expected result again).
class AllowDevicesTest : public ::testing::Test {
 protected:
  enum class Kind { kBacking, kDataFile };

  void SetUp() override {
    if (!HaveTool("qemu-img")) GTEST_SKIP() << "qemu-img not installed";
  }
  std::string Path(const std::string& name) const { return dir_.File(name); }

  // {img} over a raw backing file, or with a raw external data file (the
  // file taken for a device), holding 64 KiB of 0x42 then zeros, as {plain}.
  void Fresh(Kind kind) {
    const std::string dir = Quote(dir_.path());
    MustSh("cd " + dir + " && rm -f img.qcow2 base.raw data.raw out");
    const std::string guest = std::string(64 << 10, '\x42') + std::string(960 << 10, '\0');
    WriteFile(Path("plain.raw"), guest);
    if (kind == Kind::kBacking) {
      WriteFile(Path("base.raw"), guest);
      MustSh("cd " + dir + " && qemu-img create -q -f qcow2 -b base.raw -F raw img.qcow2");
    } else {
      MustSh("cd " + dir +
             " && qemu-img convert -q -O qcow2 -o data_file=data.raw plain.raw img.qcow2");
    }
    if (prepare_) prepare_();
  }
  std::string Device(Kind kind) const {
    return Path(kind == Kind::kBacking ? "base.raw" : "data.raw");
  }

  std::string Expand(const std::string& args, Kind kind) const {
    const std::pair<std::string, std::string> names[] = {{"{img}", Path("img.qcow2")},
                                                         {"{plain}", Path("plain.raw")},
                                                         {"{dev}", Device(kind)},
                                                         {"{out}", Path("out")}};
    std::string out;
    for (size_t i = 0; i < args.size();) {
      bool replaced = false;
      for (const auto& [key, value] : names) {
        if (args.compare(i, key.size(), key) == 0) {
          out += Quote(value);
          i += key.size();
          replaced = true;
          break;
        }
      }
      if (!replaced) out += args[i++];
    }
    return out;
  }

  // qcow2-img with stat taking `device` for a block device. A sanitizer
  // runtime would insist on coming first in the preload list.
  std::string FakeImg(const std::string& device, const std::string& args) const {
    return "timeout 60 env LD_PRELOAD=" + Quote(FAKE_BLOCK_DEVICE_PATH) +
           " UQ_FAKE_BLOCK_DEVICES=" + Quote(device) +
           " ASAN_OPTIONS=\"${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0\" " +
           Quote(Qcow2Img()) + " " + args;
  }

  // Runs `command_line` (qcow2-img's arguments: {img} is the image, {plain}
  // a raw file of the same guest contents, {dev} the file taken for a block
  // device, {out} a file the command creates) three times, as the class
  // comment says, on an image with a backing file and, unless
  // `backing_only`, on one with an external data file. The image's bytes
  // must come out as without the stand-in, or if the command writes a date
  // in them, the output of `after` (a command run without the stand-in).
  void Expect(const std::string& command_line, bool backing_only = false,
              const std::string& after_command = "") {
    for (const Kind kind : {Kind::kBacking, Kind::kDataFile}) {
      if (kind == Kind::kDataFile && backing_only) continue;
      SCOPED_TRACE(kind == Kind::kBacking ? "backing file" : "data file");
      const std::string args = Expand(command_line, kind);
      const std::string verb = command_line.substr(0, command_line.find(' '));
      const std::string allowed = verb + " --allow-devices" + args.substr(verb.size());
      const std::string after = "cd " + Quote(dir_.path()) + " && " + Expand(after_command, kind);

      Fresh(kind);
      const RunResult want = Sh(Img(args));
      ASSERT_EQ(want.exit_code, 0) << args << "\n" << want.err;
      const std::string want_image = ReadFile(Path("img.qcow2"));
      const std::string want_out = ReadFile(Path("out"));
      const std::string want_after = after_command.empty() ? "" : Sh(after).out;

      Fresh(kind);
      const std::string before = ReadFile(Path("img.qcow2"));
      const RunResult refused = Sh(FakeImg(Device(kind), args));
      // compare exits 2 when an image cannot be opened, as qemu-img's.
      EXPECT_EQ(refused.exit_code, verb == "compare" ? 2 : 1) << args;
      EXPECT_EQ(Lines(refused.err), 1) << refused.err;
      EXPECT_NE(refused.err.find("'" + Device(kind) +
                                 "' named by the image is a block device, not a regular file; "
                                 "pass --allow-devices to open it"),
                std::string::npos)
          << args << "\n"
          << refused.err;
      EXPECT_TRUE(ReadFile(Path("img.qcow2")) == before) << "the refused command changed the image";
      EXPECT_EQ(Sh("test -e " + Quote(Path("out"))).exit_code, 1) << "a refused command made out";

      Fresh(kind);
      const RunResult got = Sh(FakeImg(Device(kind), allowed));
      ASSERT_EQ(got.exit_code, 0) << allowed << "\n" << got.err;
      EXPECT_EQ(got.out, want.out);
      if (after_command.empty()) {
        EXPECT_TRUE(ReadFile(Path("img.qcow2")) == want_image) << "the image differs";
      } else {
        EXPECT_EQ(Sh(after).out, want_after);
      }
      EXPECT_TRUE(ReadFile(Path("out")) == want_out) << "out differs";
    }
  }

  TempDir dir_;
  std::function<void()> prepare_;  // run after each Fresh, if set
};

TEST_F(AllowDevicesTest, Io) {
  Expect("io -r -c 'read -q -P 0x42 0 64k' {img}");
  Expect("io -c 'write -q -P 0x43 64k 64k' {img}");
}

TEST_F(AllowDevicesTest, Map) {
  Expect("map --output=json {img}");
  Expect("map {img}");
}

TEST_F(AllowDevicesTest, Measure) { Expect("measure -O qcow2 {img}"); }

TEST_F(AllowDevicesTest, CompareEitherImage) {
  Expect("compare {img} {plain}");
  Expect("compare {plain} {img}");
  Expect("compare -s {img} {img}");
}

// The source's chain, through the engine and through the block status that
// picks the chunks to copy (-B, -C and the zero chunks); -B's backing file,
// opened with DST (a refused DST is removed).
TEST_F(AllowDevicesTest, Convert) {
  Expect("convert -O raw {img} {out}");
  Expect("convert -O qcow2 -c {img} {out}");
  Expect("convert -C -O raw {img} {out}");
  Expect("convert -O qcow2 -B {dev} -F raw {img} {out}", /*backing_only=*/true);
  Expect("convert -O qcow2 -B {dev} -F raw {plain} {out}", /*backing_only=*/true);
}

TEST_F(AllowDevicesTest, Dd) {
  Expect("dd if={img} of={out}");
  Expect("dd -O qcow2 bs=4k skip=8 if={img} of={out}");
}

TEST_F(AllowDevicesTest, Bench) {
  Expect("bench -q -c 16 {img}");
  Expect("bench -q -w -c 16 -S 64k {img}");
}

TEST_F(AllowDevicesTest, Resize) {
  Expect("resize {img} +1M");
  Expect("resize --shrink {img} 512k");
}

// size= resizes through the engine; an image that was not closed cleanly is
// opened through the engine to be repaired first.
TEST_F(AllowDevicesTest, Amend) {
  Expect("amend -o size=2M {img}");
  // The dirty bit: the last byte of incompatible_features (header bytes
  // 72-79).
  prepare_ = [this] {
    std::string bytes = ReadFile(Path("img.qcow2"));
    bytes[79] = static_cast<char>(bytes[79] | 1);
    WriteFile(Path("img.qcow2"), bytes);
  };
  Expect("amend -o lazy_refcounts=on {img}");
}

// The changing actions open the image through the engine (an image with a
// data file is refused by snapshot anyway); the snapshot table holds dates.
TEST_F(AllowDevicesTest, Snapshot) {
  const std::string after =
      "qemu-img snapshot -l {img} | awk 'NR > 2 {print $1, $2}'; "
      "qemu-img check -q {img} && echo clean";
  Expect("snapshot -c s1 {img}", /*backing_only=*/true, after);
  prepare_ = [this] {
    MustSh("cd " + Quote(dir_.path()) + " && qemu-img snapshot -c s1 img.qcow2");
  };
  Expect("snapshot -a s1 {img}", /*backing_only=*/true, after);
  Expect("snapshot -d s1 {img}", /*backing_only=*/true, after);
}

// commit reads the chain above the base and writes the base (the backing
// file taken for a device): the base's bytes must come out the same.
TEST_F(AllowDevicesTest, Commit) {
  prepare_ = [this] {
    MustSh("cd " + Quote(dir_.path()) +
           " && qemu-io -c 'write -q -P 0x55 128k 64k' img.qcow2 >/dev/null");
  };
  Expect("commit -q {img}", /*backing_only=*/true, "cksum < {dev}");
  Expect("commit -q -d -t none {img}", /*backing_only=*/true, "cksum < {dev}");
}

// rebase opens FILE (its data file), its old chain and the new backing file.
TEST_F(AllowDevicesTest, Rebase) {
  Expect("rebase -q -b {plain} -F raw {img}", /*backing_only=*/true);
  Expect("rebase -q -b '' {img}", /*backing_only=*/true);
}

// info opens backing files only with --backing-chain (and data files never).
TEST_F(AllowDevicesTest, Info) {
  Expect("info --backing-chain {img}", /*backing_only=*/true);
  Expect("info --backing-chain --output=json {img}", /*backing_only=*/true);
  Fresh(Kind::kBacking);
  const RunResult top = Sh(FakeImg(Device(Kind::kBacking), "info " + Quote(Path("img.qcow2"))));
  EXPECT_EQ(top.exit_code, 0) << top.err;
}

// A real block device, where /dev has one the test can stat: refused the
// same way, and --allow-devices lets map past the check (whether the device
// then opens depends on the user running the test).
TEST_F(AllowDevicesTest, RealBlockDevice) {
  std::string device;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/dev", ec)) {
    struct stat st;
    if (stat(entry.path().c_str(), &st) == 0 && S_ISBLK(st.st_mode)) {
      device = entry.path().string();
      break;
    }
  }
  if (device.empty()) GTEST_SKIP() << "no block device in /dev";
  MustSh("cd " + Quote(dir_.path()) + " && qemu-img create -q -f qcow2 -u -b " + Quote(device) +
         " -F raw img.qcow2 1M");
  const std::string before = ReadFile(Path("img.qcow2"));
  const RunResult refused = Sh(Img("map " + Quote(Path("img.qcow2"))));
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_EQ(Lines(refused.err), 1) << refused.err;
  EXPECT_NE(refused.err.find("backing file '" + device +
                             "' named by the image is a block device, not a regular file; pass "
                             "--allow-devices to open it"),
            std::string::npos)
      << refused.err;
  const RunResult allowed = Sh(Img("map --allow-devices " + Quote(Path("img.qcow2"))));
  EXPECT_EQ(allowed.err.find("is a block device"), std::string::npos) << allowed.err;
  EXPECT_TRUE(ReadFile(Path("img.qcow2")) == before) << "map changed the image";
}

TEST(OpenPolicyHelpTest, IoAndAttachListTheNewOptions) {
  const RunResult io = RunCommand(Quote(Qcow2Img()) + " io --help");
  ASSERT_EQ(io.exit_code, 0) << io.err;
  EXPECT_NE(io.out.find("[--data-file PATH] [--allow-devices]"), std::string::npos) << io.out;
  EXPECT_NE(io.out.find("--data-file=PATH"), std::string::npos) << io.out;
  EXPECT_NE(io.out.find("--allow-devices"), std::string::npos) << io.out;

  // The overall usage explains when the options are needed; each verb's
  // --help lists them.
  const RunResult usage = RunCommand(Quote(UBLK_QCOW2_PATH) + " --help");
  ASSERT_EQ(usage.exit_code, 0) << usage.err;
  EXPECT_NE(usage.out.find("[--data-file PATH] [--allow-devices]"), std::string::npos) << usage.out;
  EXPECT_NE(usage.out.find("--data-file PATH names it yourself"), std::string::npos) << usage.out;
  for (const char* verb : {"attach", "mount"}) {
    SCOPED_TRACE(verb);
    const RunResult help = RunCommand(Quote(UBLK_QCOW2_PATH) + " " + verb + " --help");
    ASSERT_EQ(help.exit_code, 0) << help.err;
    EXPECT_NE(help.out.find("--data-file=PATH"), std::string::npos) << help.out;
    EXPECT_NE(help.out.find("--allow-devices"), std::string::npos) << help.out;
    const RunResult missing = RunCommand(Quote(UBLK_QCOW2_PATH) + " " + verb + " --data-file");
    EXPECT_NE(missing.exit_code, 0);
    EXPECT_NE(missing.err.find("data-file"), std::string::npos) << missing.err;
  }
}

}  // namespace
}  // namespace uq::interop::open_policy
