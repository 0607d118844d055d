// Issue 12 point 5 (backing loops by file identity) and the open rules of
// map / compare / measure, through qcow2-img, with chains made by qemu-img:
//  - a -> b -> a, a self loop, and loops that come back through a symlink or
//    a hard link under another name each give one line naming the file and
//    saying the chain loops (not the depth limit), from io, map, compare and
//    measure;
//  - an image whose external data file is the image itself is refused (guest
//    data would land on its metadata), and the file is unchanged;
//  - map follows the engine's probing rule: a backing file whose format the
//    overlay does not name, and which looks like qcow2, does not lead on to
//    the host file it names;
//  - a FIFO named as backing file is refused by map and info --backing-chain
//    instead of blocking.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include "tests/interop/interop_util.h"

namespace uq::interop {
namespace {

std::string Qcow2Img() {
  const char* env = std::getenv("UQ_QCOW2_IMG");
  return env && *env ? env : QCOW2_IMG_PATH;
}

std::string Img(const std::string& args) { return "timeout 60 " + Quote(Qcow2Img()) + " " + args; }

int Lines(const std::string& text) {
  return static_cast<int>(std::count(text.begin(), text.end(), '\n'));
}

class UntrustedChainTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HaveTool("qemu-img")) GTEST_SKIP() << "qemu-img not installed";
  }
  std::string Path(const std::string& name) const { return dir_.File(name); }
  void Sh(const std::string& command) {
    const RunResult r = RunCommand("cd " + Quote(dir_.path()) + " && " + command);
    ASSERT_EQ(r.exit_code, 0) << command << "\n" << r.err;
  }
  // Runs each reading command on `image` and expects one line saying the
  // chain loops, naming `file` (and `same_as` when the loop comes back under
  // another name).
  void ExpectLoop(const std::string& image, const std::string& file,
                  const std::string& same_as = "") {
    const std::string img = Quote(Path(image));
    for (const std::string& cmd :
         {"io -r -c 'read 0 4k' " + img, "io -c 'write 0 4k' " + img, "map " + img,
          "compare " + img + " " + img, "measure -O qcow2 " + img}) {
      SCOPED_TRACE(cmd);
      const RunResult r = RunCommand(Img(cmd));
      // compare exits 2 on errors (1 means "different"), as qemu-img's.
      EXPECT_EQ(r.exit_code, cmd.starts_with("compare") ? 2 : 1) << r.out;
      EXPECT_EQ(Lines(r.err), 1) << r.err;
      EXPECT_NE(r.err.find("the backing chain loops"), std::string::npos) << r.err;
      EXPECT_EQ(r.err.find("too deep"), std::string::npos) << r.err;
      EXPECT_NE(r.err.find("backing file '" + Path(file) + "'"), std::string::npos) << r.err;
      if (!same_as.empty()) {
        EXPECT_NE(r.err.find("the same file as '" + Path(same_as) + "'"), std::string::npos)
            << r.err;
      }
    }
  }

  TempDir dir_;
};

TEST_F(UntrustedChainTest, TwoImageLoop) {
  Sh("qemu-img create -q -f qcow2 a.qcow2 1M");
  Sh("qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 b.qcow2");
  Sh("qemu-img rebase -u -b b.qcow2 -F qcow2 a.qcow2");
  ExpectLoop("b.qcow2", "b.qcow2");
  ExpectLoop("a.qcow2", "a.qcow2");
}

TEST_F(UntrustedChainTest, SelfLoop) {
  Sh("qemu-img create -q -f qcow2 self.qcow2 1M");
  Sh("qemu-img rebase -u -b self.qcow2 -F qcow2 self.qcow2");
  ExpectLoop("self.qcow2", "self.qcow2", "");
  const RunResult r = RunCommand(Img("map " + Quote(Path("self.qcow2"))));
  EXPECT_NE(r.err.find("is the image that names it"), std::string::npos) << r.err;
}

// b -> a -> (another name of b): the loop closes under a name no image
// above uses, so only the file's identity shows it.
TEST_F(UntrustedChainTest, LoopThroughSymlinkAndHardLink) {
  Sh("qemu-img create -q -f qcow2 a.qcow2 1M");
  Sh("qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 b.qcow2");
  Sh("ln -s b.qcow2 symlink-to-b.qcow2 && ln b.qcow2 hardlink-to-b.qcow2");
  for (const std::string name : {"symlink-to-b.qcow2", "hardlink-to-b.qcow2"}) {
    SCOPED_TRACE(name);
    Sh("qemu-img rebase -u -b " + name + " -F qcow2 a.qcow2");
    ExpectLoop("b.qcow2", name, "b.qcow2");
  }
}

TEST_F(UntrustedChainTest, DataFileThatIsTheImageItselfIsRefused) {
  // Same-length names, so the header's data file name can be patched in place.
  Sh("qemu-img create -q -f qcow2 -o data_file=dd.data1 dd.qcow2 1M");
  std::string bytes = ReadFile(Path("dd.qcow2"));
  const size_t at = bytes.find("dd.data1");
  ASSERT_NE(at, std::string::npos);
  bytes.replace(at, 8, "dd.qcow2");
  WriteFile(Path("dd.qcow2"), bytes);
  for (const std::string mode : {"", "-r "}) {
    const RunResult r =
        RunCommand(Img("io " + mode + "-c 'write 0 64k' " + Quote(Path("dd.qcow2"))));
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(Lines(r.err), 1) << r.err;
    EXPECT_NE(r.err.find("data file '" + Path("dd.qcow2") + "'"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("guest data would overwrite the image's metadata"), std::string::npos)
        << r.err;
  }
  EXPECT_EQ(ReadFile(Path("dd.qcow2")), bytes);
  const RunResult m = RunCommand(Img("map " + Quote(Path("dd.qcow2"))));
  EXPECT_EQ(m.exit_code, 1);
  EXPECT_NE(m.err.find("guest data would overwrite the image's metadata"), std::string::npos)
      << m.err;
}

// A raw backing file (format not named by the overlay) whose first bytes are
// a qcow2 header naming a host file: map, like the engine, does not follow it.
TEST_F(UntrustedChainTest, MapDoesNotFollowAProbedImagesBackingFile) {
  Sh("qemu-img create -q -f qcow2 -b /etc/hostname -F raw evil.qcow2 64k");
  Sh("qemu-img create -q -f raw base.raw 1M");
  Sh("dd if=evil.qcow2 of=base.raw conv=notrunc status=none");
  Sh("qemu-img create -q -f qcow2 -b base.raw -F raw top.qcow2 1M");
  // Drop the backing format extension (its type becomes one readers skip).
  std::string bytes = ReadFile(Path("top.qcow2"));
  const size_t at = bytes.find(std::string("\xe2\x79\x2a\xca", 4));
  ASSERT_NE(at, std::string::npos);
  bytes.replace(at, 4, std::string("\x75\x6e\x6b\x6e", 4));
  WriteFile(Path("top.qcow2"), bytes);
  const RunResult r = RunCommand(Img("map --output=json " + Quote(Path("top.qcow2"))));
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_EQ(Lines(r.err), 1) << r.err;
  EXPECT_NE(r.err.find("does not name this file's format"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("-F qcow2"), std::string::npos) << r.err;
  EXPECT_EQ(r.out.find("hostname"), std::string::npos) << r.out;
  // Named raw, the same file is just data.
  Sh("qemu-img rebase -u -b base.raw -F raw top.qcow2");
  const RunResult ok = RunCommand(Img("map --output=json " + Quote(Path("top.qcow2"))));
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
}

TEST_F(UntrustedChainTest, MapRefusesAFifoBackingFile) {
  Sh("mkfifo pipe && qemu-img create -q -f qcow2 -b pipe -F raw -u top.qcow2 1M");
  const RunResult r = RunCommand(Img("map " + Quote(Path("top.qcow2"))));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(Lines(r.err), 1) << r.err;
  EXPECT_NE(r.err.find("is a FIFO"), std::string::npos) << r.err;
}

TEST_F(UntrustedChainTest, InfoBackingChainRefusesAFifoBackingFile) {
  Sh("mkfifo pipe && qemu-img create -q -f qcow2 -b pipe -F raw -u top.qcow2 1M");
  for (const char* options : {"--backing-chain ", "--backing-chain --allow-devices "}) {
    const RunResult r = RunCommand(Img(std::string("info ") + options + Quote(Path("top.qcow2"))));
    EXPECT_EQ(r.exit_code, 1) << options;
    EXPECT_EQ(Lines(r.err), 1) << r.err;
    EXPECT_NE(r.err.find("backing file '" + Path("pipe") + "' named by the image is a FIFO"),
              std::string::npos)
        << r.err;
    EXPECT_EQ(r.out, "");
  }
  // Without --backing-chain the backing file is named, not opened.
  const RunResult top = RunCommand(Img("info " + Quote(Path("top.qcow2"))));
  EXPECT_EQ(top.exit_code, 0) << top.err;
}

// commit walks the chain's headers itself to find the base: a FIFO there is
// refused by name, not opened (the open would block for ever), whether or
// not the format is named, with --allow-devices too.
TEST_F(UntrustedChainTest, CommitRefusesAFifoBackingFile) {
  Sh("mkfifo pipe && qemu-img create -q -f qcow2 -b pipe -F qcow2 -u named.qcow2 1M && "
     "cp named.qcow2 unnamed.qcow2");
  // qemu-img 7.2 insists on naming the format: the backing format header
  // extension (0xe2792aca) becomes an unknown one, which readers skip.
  std::string unnamed = ReadFile(Path("unnamed.qcow2"));
  const size_t ext = unnamed.find("\xe2\x79\x2a\xca");
  ASSERT_NE(ext, std::string::npos);
  unnamed.replace(ext, 4, std::string("\x00\x00\x0f\x0f", 4));
  WriteFile(Path("unnamed.qcow2"), unnamed);
  for (const char* image : {"named.qcow2", "unnamed.qcow2"}) {
    for (const char* options : {"", "--allow-devices "}) {
      SCOPED_TRACE(std::string(image) + " " + options);
      const std::string before = ReadFile(Path(image));
      const RunResult r =
          RunCommand("timeout 60 " + Img(std::string("commit ") + options + Quote(Path(image))));
      EXPECT_EQ(r.exit_code, 1);
      EXPECT_EQ(Lines(r.err), 1) << r.err;
      EXPECT_NE(r.err.find("backing file '" + Path("pipe") + "' named by the image is a FIFO"),
                std::string::npos)
          << r.err;
      EXPECT_EQ(r.out, "");
      EXPECT_TRUE(ReadFile(Path(image)) == before);
    }
  }
}

}  // namespace
}  // namespace uq::interop
