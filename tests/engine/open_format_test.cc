// Issue 12 point 2 in the engine: the format a backing file is opened as, and
// the probed raw image's first sector.
//  - a backing format the overlay names is used as named; one the engine
//    does not have (vmdk) is an error naming it, before the file is opened;
//  - a backing file whose format is not named is probed, and a probed qcow2
//    does not lead on to its own backing or data file;
//  - a raw image found by probing refuses a write that would make its first
//    sector read as qcow2 (QEMU's raw driver guards probed images the same
//    way); a raw image named raw does not.
#include <gtest/gtest.h>

#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "format/create.h"
#include "format/endian.h"
#include "format/header.h"
#include "tests/engine/test_util.h"

namespace uq::engine {
namespace {

using testing::FileSet;
using testing::MakeImage;
using testing::OpenSync;
using testing::ReadSync;
using testing::WriteSync;

format::CreateOptions Image(uint64_t size_bytes) {
  format::CreateOptions o;
  o.size_bytes = size_bytes;
  o.cluster_bits = 16;
  return o;
}

// A FileSet opener that records every path it is asked for.
struct RecordingFiles {
  FileSet set;
  std::set<std::string> asked;
  FileOpener Opener() {
    FileOpener inner = set.Opener();
    return [this, inner](const std::string& path, bool writable) {
      asked.insert(path);
      return inner(path, writable);
    };
  }
};

// overlay -> "middle" (qcow2, which names "secret" as its own backing file).
struct Chain {
  std::unique_ptr<io::MemFile> overlay, middle, secret;
  RecordingFiles files;

  explicit Chain(std::optional<std::string> overlay_names_format) {
    format::CreateOptions m = Image(1 << 20);
    m.backing_file = "secret";
    m.backing_format = "raw";
    middle = MakeImage(m);
    secret = std::make_unique<io::MemFile>(io::MemFile::Mode::kImmediate,
                                           std::vector<std::byte>(1 << 20, std::byte{0x5e}));
    format::CreateOptions o = Image(1 << 20);
    o.backing_file = "middle";
    o.backing_format = std::move(overlay_names_format);
    overlay = MakeImage(o);
    files.set.files = {{"middle", middle.get()}, {"secret", secret.get()}};
  }

  absl::StatusOr<std::unique_ptr<Device>> Open() {
    OpenOptions opts;
    opts.read_only = true;
    opts.opener = files.Opener();
    return OpenSync(overlay.get(), std::move(opts));
  }
};

TEST(OpenFormatTest, NamedQcow2BackingFollowsItsOwnBacking) {
  Chain chain("qcow2");
  auto dev = chain.Open();
  ASSERT_TRUE(dev.ok()) << dev.status();
  std::vector<std::byte> got(4096);
  ASSERT_EQ(ReadSync(**dev, 0, got), 0);
  EXPECT_EQ(got[0], std::byte{0x5e});
  EXPECT_TRUE(chain.files.asked.count("secret"));
}

TEST(OpenFormatTest, ProbedQcow2BackingDoesNotLeadOn) {
  Chain chain(std::nullopt);
  auto dev = chain.Open();
  ASSERT_FALSE(dev.ok());
  const std::string msg(dev.status().message());
  EXPECT_EQ(dev.status().code(), absl::StatusCode::kFailedPrecondition) << msg;
  EXPECT_NE(msg.find("backing file 'secret'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("qemu-img rebase -u -b 'middle' -F qcow2"), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  EXPECT_FALSE(chain.files.asked.count("secret"));
}

TEST(OpenFormatTest, ProbedQcow2BackingWithDataFileDoesNotLeadOn) {
  format::CreateOptions m = Image(1 << 20);
  m.data_file = "secret";
  auto middle = MakeImage(m);
  io::MemFile secret;
  format::CreateOptions o = Image(1 << 20);
  o.backing_file = "middle";
  auto overlay = MakeImage(o);
  RecordingFiles files;
  files.set.files = {{"middle", middle.get()}, {"secret", &secret}};
  OpenOptions opts;
  opts.opener = files.Opener();
  auto dev = OpenSync(overlay.get(), std::move(opts));
  ASSERT_FALSE(dev.ok());
  EXPECT_NE(dev.status().message().find("an external data file"), absl::string_view::npos)
      << dev.status();
  EXPECT_FALSE(files.asked.count("secret"));
}

TEST(OpenFormatTest, ProbedRawBackingIsRead) {
  io::MemFile base(io::MemFile::Mode::kImmediate, std::vector<std::byte>(1 << 20, std::byte{0x42}));
  format::CreateOptions o = Image(1 << 20);
  o.backing_file = "base";
  auto overlay = MakeImage(o);
  FileSet files;
  files.files = {{"base", &base}};
  OpenOptions opts;
  opts.opener = files.Opener();
  auto dev = OpenSync(overlay.get(), std::move(opts));
  ASSERT_TRUE(dev.ok()) << dev.status();
  std::vector<std::byte> got(512);
  ASSERT_EQ(ReadSync(**dev, 4096, got), 0);
  EXPECT_EQ(got[0], std::byte{0x42});
  ASSERT_TRUE(io::RunSync(nullptr, (*dev)->Close()).ok());
}

TEST(OpenFormatTest, UnknownBackingFormatIsNamedAndNotOpened) {
  format::CreateOptions o = Image(1 << 20);
  o.backing_file = "base.vmdk";
  o.backing_format = "vmdk";
  auto overlay = MakeImage(o);
  io::MemFile base;
  RecordingFiles files;
  files.set.files = {{"base.vmdk", &base}};
  OpenOptions opts;
  opts.opener = files.Opener();
  auto dev = OpenSync(overlay.get(), std::move(opts));
  ASSERT_FALSE(dev.ok());
  EXPECT_NE(dev.status().message().find("'vmdk'"), absl::string_view::npos) << dev.status();
  EXPECT_TRUE(files.asked.empty());
}

// The qcow2 magic followed by noise: what a guest would write to make its
// disk look like an image.
std::vector<std::byte> QcowHead(size_t bytes) {
  std::vector<std::byte> b(bytes, std::byte{0x77});
  format::StoreBE32(b.data(), format::kQcowMagic);
  return b;
}

std::unique_ptr<io::MemFile> RawDisk() {
  return std::make_unique<io::MemFile>(io::MemFile::Mode::kImmediate,
                                       std::vector<std::byte>(1 << 20, std::byte{0}));
}

TEST(OpenFormatTest, ProbedRawRefusesTheQcow2MagicInSectorZero) {
  auto disk = RawDisk();
  auto dev = OpenSync(disk.get(), OpenOptions{});  // kAuto: probed
  ASSERT_TRUE(dev.ok()) << dev.status();
  const std::vector<std::byte> head = QcowHead(4096);
  EXPECT_EQ(WriteSync(**dev, 0, head), -EPERM);
  EXPECT_EQ(disk->data()[0], std::byte{0});

  // Split across iovecs: the check sees the sector, not the first buffer.
  std::vector<std::byte> copy = head;
  iovec v[2] = {{copy.data(), 2}, {copy.data() + 2, copy.size() - 2}};
  EXPECT_EQ(io::RunSync(nullptr, (*dev)->Write(0, std::span<const iovec>(v, 2), false)), -EPERM);
  EXPECT_EQ(disk->data()[0], std::byte{0});

  // Anything else in sector 0, and the magic anywhere else, is written.
  std::vector<std::byte> mbr(4096, std::byte{0x33});
  EXPECT_EQ(WriteSync(**dev, 0, mbr), 0);
  EXPECT_EQ(disk->data()[0], std::byte{0x33});
  EXPECT_EQ(disk->data()[4095], std::byte{0x33});
  EXPECT_EQ(WriteSync(**dev, 512, head), 0);
  EXPECT_EQ(format::LoadBE32(disk->data().data() + 512), format::kQcowMagic);
  ASSERT_TRUE(io::RunSync(nullptr, (*dev)->Close()).ok());

  // Reopened, it is still raw.
  auto again = OpenSync(disk.get(), OpenOptions{});
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ((*again)->granularity_bytes(), 4096u);
}

TEST(OpenFormatTest, NamedRawTakesAnySectorZero) {
  auto disk = RawDisk();
  OpenOptions o;
  o.format = ImageFormat::kRaw;
  auto dev = OpenSync(disk.get(), std::move(o));
  ASSERT_TRUE(dev.ok()) << dev.status();
  EXPECT_EQ(WriteSync(**dev, 0, QcowHead(512)), 0);
  EXPECT_EQ(format::LoadBE32(disk->data().data()), format::kQcowMagic);
}

}  // namespace
}  // namespace uq::engine
