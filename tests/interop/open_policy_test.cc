// Issue 12 points 1 and 2 through qcow2-img (engine::OpenPath), with crafted
// images made by qemu-img and qemu-img / qemu-io as the oracle:
//  - a data file the image names outside its own directory (absolute, "../",
//    or a symlink leading out) is not opened for writing: one error line,
//    the file unchanged; read-only opens work; --data-file PATH writes it;
//  - a FIFO or a character device (/dev/null) named as data file is refused
//    (--allow-devices admits block devices only);
//  - a raw backing file whose first bytes are a qcow2 header naming a host
//    file does not expose that file, whether its format is probed (refused
//    with one line) or named raw (read as raw);
//  - backing_fmt=vmdk is an error naming vmdk;
//  - a block device named as backing or data file is refused by every
//    command that opens a chain, in one line naming --allow-devices, and
//    opened with it (fake_block_device.cc stands in for the device);
//  - the --help of io and of ublk-qcow2 attach/mount lists the new options.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "tests/interop/interop_util.h"

namespace uq::interop {
namespace {

std::string Qcow2Img() {
  const char* env = std::getenv("UQ_QCOW2_IMG");
  return env && *env ? env : QCOW2_IMG_PATH;
}

RunResult Sh(const std::string& command) { return RunCommand(command); }

void MustSh(const std::string& command) {
  const RunResult r = RunCommand(command);
  ASSERT_EQ(r.exit_code, 0) << command << "\n" << r.err;
}

// qcow2-img with a time limit: a FIFO opened by mistake would block.
std::string Img(const std::string& args) { return "timeout 60 " + Quote(Qcow2Img()) + " " + args; }

int Lines(const std::string& text) {
  return static_cast<int>(std::count(text.begin(), text.end(), '\n'));
}

// Replaces the only occurrence of `from` in the file with `to` (same length).
void Patch(const std::string& path, const std::string& from, const std::string& to) {
  ASSERT_EQ(from.size(), to.size());
  std::string bytes = ReadFile(path);
  const size_t at = bytes.find(from);
  ASSERT_NE(at, std::string::npos) << from << " not in " << path;
  ASSERT_EQ(bytes.find(from, at + 1), std::string::npos);
  bytes.replace(at, from.size(), to);
  WriteFile(path, bytes);
}

// Removes the backing format header extension: its type becomes one no
// reader knows, which readers skip (the spec), so the image names no format.
void DropBackingFormat(const std::string& path) {
  Patch(path, std::string("\xe2\x79\x2a\xca", 4), std::string("\x75\x6e\x6b\x6e", 4));
}

class OpenPolicyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HaveTool("qemu-img") || !HaveTool("qemu-io")) GTEST_SKIP() << "QEMU tools not installed";
    MustSh("mkdir " + Quote(Dir("a")) + " " + Quote(Dir("b")));
  }
  std::string Dir(const std::string& name) const { return dir_.File(name); }
  std::string Path(const std::string& name) const { return dir_.File(name); }

  // a/<image> whose header names `data_file` (qemu-img resolves it from a/),
  // and b/victim with known contents.
  void MakeImageNaming(const std::string& image, const std::string& data_file) {
    MustSh("cd " + Quote(Dir("a")) + " && qemu-img create -q -f qcow2 -o data_file=" +
           Quote(data_file) + " " + Quote(image) + " 1M");
    WriteFile(Path("b/victim"), kVictim);
  }

  const std::string kVictim = std::string(1 << 20, 'V');
  TempDir dir_;
};

TEST_F(OpenPolicyTest, DataFileOutsideTheDirectoryIsNotWritten) {
  MakeImageNaming("img.qcow2", Path("b/victim"));
  const std::string image = Path("a/img.qcow2");
  const RunResult w = Sh(Img("io -c 'write -P 0xaa 0 4k' " + Quote(image)));
  EXPECT_EQ(w.exit_code, 1);
  EXPECT_EQ(Lines(w.err), 1) << w.err;
  EXPECT_NE(w.err.find("outside the image's directory"), std::string::npos) << w.err;
  EXPECT_NE(w.err.find("--data-file PATH"), std::string::npos) << w.err;
  EXPECT_EQ(ReadFile(Path("b/victim")), kVictim);
  EXPECT_EQ(Sh("qemu-img check -q " + Quote(image)).exit_code, 0);
  // Reading is what inspection needs: allowed.
  const RunResult r = Sh(Img("io -r -c 'read -P 0 0 4k' " + Quote(image)));
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

TEST_F(OpenPolicyTest, DataFileNamedByTheUserIsWritten) {
  MakeImageNaming("img.qcow2", Path("b/victim"));
  const std::string image = Path("a/img.qcow2");
  const RunResult w = Sh(Img("io --data-file " + Quote(Path("b/victim")) +
                             " -c 'write -P 0xaa 0 4k' " + Quote(image)));
  ASSERT_EQ(w.exit_code, 0) << w.err;
  const RunResult q = Sh("qemu-io -r -c 'read -P 0xaa 0 4k' " + Quote(image));
  EXPECT_EQ(q.exit_code, 0) << q.err;
  EXPECT_EQ(q.out.find("Pattern verification failed"), std::string::npos) << q.out;
  EXPECT_EQ(Sh("qemu-img check -q " + Quote(image)).exit_code, 0);
  EXPECT_NE(ReadFile(Path("b/victim")), kVictim);
}

TEST_F(OpenPolicyTest, DotDotAndSymlinkEscapesAreRefused) {
  MakeImageNaming("dotdot.qcow2", "../b/victim");
  MustSh("cd " + Quote(Dir("a")) + " && ln -s ../b/victim link");
  MakeImageNaming("symlink.qcow2", "link");
  for (const char* name : {"dotdot.qcow2", "symlink.qcow2"}) {
    SCOPED_TRACE(name);
    const RunResult w = Sh(Img("io -c 'write -P 0xaa 0 4k' " + Quote(Path("a/") + name)));
    EXPECT_EQ(w.exit_code, 1);
    EXPECT_EQ(Lines(w.err), 1) << w.err;
    EXPECT_NE(w.err.find("resolves to '"), std::string::npos) << w.err;
    EXPECT_NE(w.err.find("outside the image's directory"), std::string::npos) << w.err;
    EXPECT_EQ(ReadFile(Path("b/victim")), kVictim);
  }
  // A data file in the image's directory is written as before.
  MakeImageNaming("inside.qcow2", "inside.data");
  const RunResult ok = Sh(Img("io -c 'write -P 0xaa 0 4k' " + Quote(Path("a/inside.qcow2"))));
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
}

TEST_F(OpenPolicyTest, FifoDataFileIsRefusedWithoutAllowDevices) {
  MakeImageNaming("img.qcow2", "pipe.data");
  MustSh("cd " + Quote(Dir("a")) + " && rm pipe.data && mkfifo pipe.data");
  for (const char* mode : {"-r ", ""}) {
    const RunResult r =
        Sh(Img(std::string("io ") + mode + "-c 'read 0 4k' " + Quote(Path("a/img.qcow2"))));
    EXPECT_EQ(r.exit_code, 1) << mode;
    EXPECT_EQ(Lines(r.err), 1) << r.err;
    EXPECT_NE(r.err.find("is a FIFO"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("is never opened"), std::string::npos) << r.err;
  }
}

TEST_F(OpenPolicyTest, DevNullDataFileIsRefusedWithoutAllowDevices) {
  MakeImageNaming("img.qcow2", "zzzzzzzzz");
  const std::string image = Path("a/img.qcow2");
  Patch(image, "zzzzzzzzz", "/dev/null");
  const RunResult refused = Sh(Img("io -r -c 'read 0 4k' " + Quote(image)));
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_EQ(Lines(refused.err), 1) << refused.err;
  EXPECT_NE(refused.err.find("'/dev/null' named by the image is a character device"),
            std::string::npos)
      << refused.err;
  // --allow-devices is for block devices: a character device cannot hold an
  // image and stays refused, read-only or writable.
  for (const char* mode : {"-r ", ""}) {
    const RunResult r = Sh(
        Img(std::string("io --allow-devices ") + mode + "-c 'write -P 0xaa 0 4k' " + Quote(image)));
    EXPECT_EQ(r.exit_code, 1) << mode;
    EXPECT_EQ(Lines(r.err), 1) << r.err;
    EXPECT_NE(r.err.find("is never opened"), std::string::npos) << r.err;
  }
}

TEST_F(OpenPolicyTest, RawBackingWithAQcow2HeaderDoesNotExposeHostFiles) {
  WriteFile(Path("b/secret"), std::string(65536, 'S'));
  std::vector<std::string> targets = {Path("b/secret")};
  struct stat st;
  if (stat("/etc/hostname", &st) == 0 && S_ISREG(st.st_mode)) targets.push_back("/etc/hostname");
  for (const std::string& target : targets) {
    SCOPED_TRACE(target);
    const std::string secret = ReadFile(target);
    // evil.raw: a raw disk whose guest wrote a qcow2 header naming `target`.
    MustSh("cd " + Quote(Dir("a")) + " && rm -f evil.raw top.qcow2 named.qcow2 out.raw && " +
           "qemu-img create -q -f qcow2 -b " + Quote(target) + " -F raw evil.raw 1M && " +
           "qemu-img create -q -f qcow2 -b evil.raw -F qcow2 top.qcow2 && " +
           "qemu-img create -q -f qcow2 -b evil.raw -F raw named.qcow2 1M");
    DropBackingFormat(Path("a/top.qcow2"));

    // Probed: refused, with how to name the format.
    for (const char* mode : {"-r ", ""}) {
      const RunResult r =
          Sh(Img(std::string("io ") + mode + "-c 'read -v 0 64k' " + Quote(Path("a/top.qcow2"))));
      EXPECT_EQ(r.exit_code, 1) << mode;
      EXPECT_EQ(Lines(r.err), 1) << r.err;
      EXPECT_NE(r.err.find("is not followed"), std::string::npos) << r.err;
      EXPECT_NE(r.err.find("qemu-img rebase -u -b 'evil.raw' -F qcow2"), std::string::npos)
          << r.err;
      EXPECT_EQ(r.out, "");
    }
    const RunResult convert =
        Sh(Img("convert -O raw " + Quote(Path("a/top.qcow2")) + " " + Quote(Path("a/out.raw"))));
    EXPECT_EQ(convert.exit_code, 1);
    if (!secret.empty()) {
      EXPECT_EQ(ReadFile(Path("a/out.raw")).find(secret), std::string::npos);
    }

    // Named raw: read as raw, the header bytes and not the file they name;
    // qemu-img agrees byte for byte.
    MustSh(Img("convert -O raw " + Quote(Path("a/named.qcow2")) + " " + Quote(Path("a/out.raw"))));
    MustSh("qemu-img convert -f qcow2 -O raw " + Quote(Path("a/named.qcow2")) + " " +
           Quote(Path("a/oracle.raw")));
    const std::string out = ReadFile(Path("a/out.raw"));
    EXPECT_EQ(out, ReadFile(Path("a/oracle.raw")));
    EXPECT_EQ(out.substr(0, 4), "QFI\xfb");
    if (!secret.empty()) {
      EXPECT_EQ(out.find(secret), std::string::npos);
    }
  }
}

TEST_F(OpenPolicyTest, UnknownBackingFormatIsNamed) {
  MustSh("cd " + Quote(Dir("a")) + " && qemu-img create -q -f vmdk base.vmdk 1M && " +
         "qemu-img create -q -f qcow2 -b base.vmdk -F vmdk top.qcow2");
  const RunResult r = Sh(Img("io -r -c 'read 0 4k' " + Quote(Path("a/top.qcow2"))));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(Lines(r.err), 1) << r.err;
  EXPECT_NE(r.err.find("format 'vmdk'"), std::string::npos) << r.err;
}

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
}  // namespace uq::interop
