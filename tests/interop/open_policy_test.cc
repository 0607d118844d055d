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
//  - backing_fmt=vmdk is an error naming vmdk.
//
// open_policy_devices_test.cc (same executable) holds the block device cases
// and the new options' --help; open_policy_util.h the helpers.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <string>
#include <vector>

#include "tests/interop/interop_util.h"
#include "tests/interop/open_policy_util.h"

namespace uq::interop::open_policy {
namespace {

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

}  // namespace
}  // namespace uq::interop::open_policy
