// qcow2-img snapshot against qemu-img 7.2: on QEMU-made images of several
// kinds, the same sequence of -c / random writes (qemu-io) / -a / -d done by
// qemu-img on one copy and by qcow2-img on another gives `qemu-img compare`
// exit 0 after every step (and after applying every snapshot), a clean
// `qemu-img check` of ours, the same `-l` table apart from the dates, and
// snapshots either tool made apply with the other. Bad input is one line,
// exit 1, and leaves the image byte-identical.
//
// Environment: UQ_SNAPSHOT_SEED (default random, printed) seeds the writes.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <regex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/interop/image_kinds.h"
#include "tests/interop/interop_util.h"
#include "tests/interop/qcow2_img_under_test.h"

namespace uq::interop {
namespace {

std::string KindSetup(const std::string& name) {
  for (const ImageKind& k : ImageKinds()) {
    if (k.name == name) return k.setup;
  }
  ADD_FAILURE() << "no image kind " << name;
  return "false";
}

uint64_t Seed() {
  const char* env = std::getenv("UQ_SNAPSHOT_SEED");
  return env && *env ? std::strtoull(env, nullptr, 10) : std::random_device{}();
}

// The dates (and only they) may differ between two tools' tables.
std::string WithoutDates(const std::string& list) {
  static const std::regex kDate("[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}");
  return std::regex_replace(list, kDate, "DATE");
}

// `qemu-img info --output=json` without what may differ between two copies
// made by different tools: file name, allocated size, snapshot dates.
std::string ComparableInfo(const std::string& json) {
  static const std::regex kVarying(R"x("(date-sec|date-nsec|actual-size)": [0-9]+)x");
  static const std::regex kName(R"x("filename": "[^"]*")x");
  return std::regex_replace(std::regex_replace(json, kVarying, "\"$1\": 0"), kName,
                            "\"filename\": \"\"");
}

// Two copies of one image: ours.img changed by qcow2-img, theirs.img by
// qemu-img, the same guest writes going to both.
class Pair {
 public:
  Pair(std::string dir, uint64_t seed) : dir_(std::move(dir)), rng_(seed) {
    EXPECT_EQ(In(dir_, "cp img.qcow2 ours.img && cp img.qcow2 theirs.img").exit_code, 0);
  }

  // The current virtual size of `file` (an apply may change it).
  uint64_t Size(const std::string& file = "theirs.img") {
    const RunResult r = In(dir_, "qemu-img info -U --output=json " + file);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    const common::Json* v = ParseOrDie(r.out).Find("virtual-size");
    return v == nullptr ? 0 : static_cast<uint64_t>(v->AsInt());
  }

  // The length of `file` in bytes.
  uint64_t FileBytes(const std::string& file) {
    const RunResult r = In(dir_, "stat -c %s " + file);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return std::strtoull(r.out.c_str(), nullptr, 10);
  }

  // A few random writes (512-byte aligned, up to 192 KiB) to both copies.
  void Write() {
    std::string cmds;
    const uint64_t size = Size();
    for (int i = 0; i < 6; ++i) {
      const uint64_t len = 512 * (1 + rng_() % 384);
      const uint64_t off = (rng_() % ((size - len) / 512 + 1)) * 512;
      absl::StrAppend(&cmds, " -c 'write -P ", rng_() % 256, " ", off, " ", len, "'");
      if (rng_() % 4 == 0) absl::StrAppend(&cmds, " -c 'write -z ", off / 2 / 512 * 512, " 4k'");
    }
    for (const char* f : {"ours.img", "theirs.img"}) {
      const RunResult r = In(dir_, "qemu-io" + cmds + " " + f + " >/dev/null");
      ASSERT_EQ(r.exit_code, 0) << cmds << "\n" << r.err;
    }
  }

  // Grows both copies by 1 MiB with qemu-img (so that applying an older
  // snapshot changes the disk size back), unless qemu-img refuses (a version
  // 2 image with snapshots).
  void Grow() {
    const RunResult r = In(dir_, "qemu-img resize -q theirs.img +1M");
    if (r.exit_code != 0) return;
    ASSERT_EQ(In(dir_, "qemu-img resize -q ours.img +1M").exit_code, 0);
  }

  // `args` (an action) by each tool on its copy, then the comparison.
  void Both(const std::string& args) {
    SCOPED_TRACE("snapshot " + args);
    const RunResult theirs = In(dir_, "qemu-img snapshot " + args + " theirs.img");
    const RunResult ours = In(dir_, Ours() + " snapshot " + args + " ours.img");
    ASSERT_EQ(theirs.exit_code, 0) << theirs.err;
    ASSERT_EQ(ours.exit_code, 0) << ours.err;
    EXPECT_EQ(ours.out, "");
    EXPECT_EQ(ours.err, "");
    Compare("ours.img", "theirs.img");
  }

  // Same guest disk, a clean check of `ours`, the same table.
  void Compare(const std::string& ours, const std::string& theirs) {
    const RunResult compare = In(dir_, "qemu-img compare " + ours + " " + theirs);
    EXPECT_EQ(compare.exit_code, 0) << compare.out << compare.err;
    // compare reads past the end of the shorter image as zeros.
    EXPECT_EQ(Size(ours), Size(theirs));
    const RunResult info_ours = In(dir_, "qemu-img info -U --output=json " + ours);
    const RunResult info_theirs = In(dir_, "qemu-img info -U --output=json " + theirs);
    EXPECT_EQ(ComparableInfo(info_ours.out), ComparableInfo(info_theirs.out));
    const RunResult check = In(dir_, "qemu-img check " + ours);
    EXPECT_EQ(check.exit_code, 0) << check.out << check.err;
    const RunResult list_ours = In(dir_, Ours() + " snapshot -l " + ours);
    const RunResult list_qemu = In(dir_, "qemu-img snapshot -l " + ours);
    const RunResult list_theirs = In(dir_, "qemu-img snapshot -l " + theirs);
    EXPECT_EQ(list_ours.exit_code, 0) << list_ours.err;
    // Our listing of our image is qemu-img's exactly, dates included.
    EXPECT_EQ(list_ours.out, list_qemu.out);
    EXPECT_EQ(WithoutDates(list_ours.out), WithoutDates(list_theirs.out));
  }

  // Every snapshot, applied by each tool to copies of both images: all four
  // agree with qemu-img applying qemu-img's.
  void ApplyEach() {
    const RunResult list = In(dir_, "qemu-img snapshot -l theirs.img | tail -n +3 | cut -c1-9");
    ASSERT_EQ(list.exit_code, 0);
    std::vector<std::string> ids;
    for (size_t at = 0; at < list.out.size();) {
      const size_t nl = list.out.find('\n', at);
      std::string id = list.out.substr(at, nl - at);
      id.erase(id.find_last_not_of(' ') + 1);
      ids.push_back(id);
      at = nl == std::string::npos ? list.out.size() : nl + 1;
    }
    ASSERT_FALSE(ids.empty());
    for (const std::string& id : ids) {
      SCOPED_TRACE("apply " + id);
      const std::string cmd =
          "cp ours.img o1 && cp ours.img o2 && cp theirs.img t1 && cp theirs.img t2 && " + Ours() +
          " snapshot -a " + id + " o1 && qemu-img snapshot -a " + id + " o2 && " + Ours() +
          " snapshot -a " + id + " t1 && qemu-img snapshot -a " + id + " t2";
      const RunResult r = In(dir_, cmd);
      ASSERT_EQ(r.exit_code, 0) << r.err;
      Compare("o1", "t2");  // ours on ours
      Compare("o2", "t2");  // qemu-img on ours
      Compare("t1", "t2");  // ours on qemu-img's
    }
  }

 private:
  std::string dir_;
  std::mt19937_64 rng_;
};

struct SnapshotCase {
  std::string name;
  std::string setup;  // leaves img.qcow2 (and its backing files)
};

void PrintTo(const SnapshotCase& c, std::ostream* os) { *os << c.name; }

std::vector<SnapshotCase> Cases() {
  std::vector<SnapshotCase> v;
  for (const char* kind :
       {"plain_64k", "cluster_4k", "cluster_512", "compat_0_10", "compressed_zstd",
        "compressed_zlib", "extended_l2", "extended_l2_backing", "backing_qcow2", "snapshots",
        "refcount_bits_64", "lazy_refcounts_dirty", "prealloc_metadata"}) {
    v.push_back({kind, KindSetup(kind)});
  }
  return v;
}

class SnapshotKindsTest : public ::testing::TestWithParam<SnapshotCase> {};

TEST_P(SnapshotKindsTest, SameResultAsQemuImg) {
  const SnapshotCase& c = GetParam();
  if (!HaveTool("qemu-img") || !HaveTool("qemu-io")) GTEST_SKIP() << "qemu-img or qemu-io missing";
  TempDir dir;
  const RunResult setup = In(dir.path(), c.setup);
  ASSERT_EQ(setup.exit_code, 0) << setup.err;
  const uint64_t seed = Seed();
  std::printf("snapshot interop: %s, UQ_SNAPSHOT_SEED=%llu\n", c.name.c_str(),
              static_cast<unsigned long long>(seed));
  Pair p(dir.path(), seed);
  p.Write();
  p.Both("-c first");
  p.Write();
  p.Both("-c second");
  p.Grow();
  p.Write();
  p.Both("-c first");  // a repeated name, as qemu-img allows
  p.Write();
  p.Both("-a first");  // the first of the two by that name
  p.Write();
  p.Both("-d second");
  p.Write();
  p.Both("-a 1");  // by id
  p.Both("-d first");
  p.Write();
  p.Both("-c third");
  if (HasFailure()) return;
  p.ApplyEach();
}

INSTANTIATE_TEST_SUITE_P(Kinds, SnapshotKindsTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<SnapshotCase>& info) {
                           return info.param.name;
                         });

// On a version 2 image each snapshot change is written out of place
// (src/engine/snapshot.h), into the holes earlier ones freed: the file needs
// room for a second copy of the changed metadata (here L1 and L2 table,
// snapshot table, refcount block and table: 5 clusters, so at most 10 beyond
// qemu-img's), and stops growing there however many changes follow.
TEST(SnapshotTest, Version2ChangesReuseTheSpaceTheyFree) {
  if (!HaveTool("qemu-img") || !HaveTool("qemu-io")) GTEST_SKIP() << "qemu-img or qemu-io missing";
  TempDir dir;
  const RunResult setup = In(dir.path(), KindSetup("compat_0_10"));
  ASSERT_EQ(setup.exit_code, 0) << setup.err;
  const uint64_t seed = Seed();
  std::printf("version 2 cycles: UQ_SNAPSHOT_SEED=%llu\n", static_cast<unsigned long long>(seed));
  Pair p(dir.path(), seed);
  p.Write();
  // No guest writes in between, which would fill holes whatever the
  // snapshot code leaves.
  auto cycles = [&](int n) {
    for (int i = 0; i < n && !HasFailure(); ++i) {
      p.Both("-c s");
      p.Both("-d s");
    }
  };
  cycles(5);
  const uint64_t after5 = p.FileBytes("ours.img");
  cycles(5);
  const uint64_t ours = p.FileBytes("ours.img");
  const uint64_t theirs = p.FileBytes("theirs.img");
  std::printf("version 2 cycles: ours %llu bytes after 5, %llu after 10; qemu-img's %llu\n",
              static_cast<unsigned long long>(after5), static_cast<unsigned long long>(ours),
              static_cast<unsigned long long>(theirs));
  EXPECT_EQ(ours, after5);
  EXPECT_LE(ours, theirs + 10 * 65536);
}

// Refusals: one line naming the problem (qemu-img's, with our program
// name), exit 1, the image byte-identical.
TEST(SnapshotTest, BadInputLeavesTheImageUnchanged) {
  if (!HaveTool("qemu-img") || !HaveTool("qemu-io")) GTEST_SKIP() << "qemu-img or qemu-io missing";
  TempDir dir;
  const std::string setup = KindSetup("snapshots") +
                            " && qemu-img create -q -f raw raw.img 1M && " +
                            "qemu-img create -q -f qcow2 -o refcount_bits=1 rb1.qcow2 1M && " +
                            "qemu-io -c 'write 0 64k' rb1.qcow2 >/dev/null && " +
                            "mkdir df && cd df && " + KindSetup("data_file");
  const RunResult r = In(dir.path(), setup);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  struct Bad {
    std::string args;
    std::string file;
    bool same_as_qemu;      // qemu-img prints the same line (its name aside)
    std::string cwd = ".";  // where both tools run
  };
  const std::vector<Bad> cases = {
      {"-d nope", "img.qcow2", true},      {"-a nope", "img.qcow2", true},
      {"-d 1", "img.qcow2", true},  // -d takes a name only
      {"-U -c x", "img.qcow2", true},      {"-c x", "raw.img", true},
      {"-a x", "raw.img", true},           {"-d x", "raw.img", true},
      {"-c x", "img.qcow2", true, "df"},  // an external data file
      {"-c x", "rb1.qcow2", true},        // qemu-img: EINVAL, after leaking a cluster
      {"-c x -d one", "img.qcow2", false}, {"-l -l", "img.qcow2", false},
      {"-c", "img.qcow2", false},          {"-x", "img.qcow2", false},
      {"-c x", "missing.qcow2", false},    {"-c x", "img.qcow2 raw.img", false},
  };
  for (const Bad& b : cases) {
    SCOPED_TRACE(b.args + " " + b.file);
    const std::string where = dir.File(b.cwd);
    const std::string path = where + "/" + b.file.substr(0, b.file.find(' '));
    const std::string before = ReadFile(path);
    const RunResult ours = In(where, Ours() + " snapshot " + b.args + " " + b.file);
    EXPECT_EQ(ours.exit_code, 1);
    EXPECT_EQ(ours.out, "");
    ASSERT_FALSE(ours.err.empty());
    EXPECT_EQ(ours.err.find('\n'), ours.err.size() - 1) << ours.err;
    EXPECT_EQ(ours.err.rfind("qcow2-img: ", 0), 0u) << ours.err;
    EXPECT_EQ(ReadFile(path), before);
    if (b.same_as_qemu) {
      const RunResult qemu =
          In(where, "qemu-img snapshot " + b.args + " " + b.file + " 2>&1 | tail -1");
      EXPECT_EQ(ours.err.substr(std::string("qcow2-img").size()),
                qemu.out.substr(std::string("qemu-img").size()));
    }
  }
  // The image stayed usable and untouched by all of that.
  EXPECT_EQ(In(dir.path(), "qemu-img check img.qcow2").exit_code, 0);
}

// Big-endian 32-bit field of the header (l1_size is at byte 36).
uint32_t HeaderField32(const std::string& image, size_t at) {
  uint32_t v = 0;
  for (size_t i = 0; i < 4 && at + i < image.size(); ++i) {
    v = (v << 8) | static_cast<uint8_t>(image[at + i]);
  }
  return v;
}

// A snapshot whose L1 table is longer than the active one: QEMU makes it by
// shrinking (its L1 table keeps its length, and so does the snapshot's),
// and another tool's shorter active table is made here by rewriting the
// header's l1_size (the entries past it are zero, so the image stays
// clean). -a grows the active table to the snapshot's length, as qemu-img
// does: both copies read the same, check clean, and have that length.
TEST(SnapshotTest, RevertGrowsAShorterActiveL1Table) {
  if (!HaveTool("qemu-img") || !HaveTool("qemu-io")) GTEST_SKIP() << "qemu-img or qemu-io missing";
  TempDir dir;
  const RunResult setup =
      In(dir.path(),
         "qemu-img create -q -f qcow2 a.qcow2 3G && "
         "qemu-io -c 'write -P 0x11 0 1M' -c 'write -P 0x22 600M 1M' -c 'write -P 0x33 2500M 64k' "
         "a.qcow2 >/dev/null && qemu-img resize -q --shrink a.qcow2 1G && "
         "qemu-img snapshot -c s1 a.qcow2 && "
         "qemu-io -c 'write -P 0x44 0 64k' -c 'write -P 0x55 700M 64k' a.qcow2 >/dev/null && "
         "printf '\\000\\000\\000\\002' | dd of=a.qcow2 bs=1 seek=36 conv=notrunc status=none && "
         "qemu-img check -q a.qcow2 && cp a.qcow2 q.qcow2 && cp a.qcow2 o.qcow2");
  ASSERT_EQ(setup.exit_code, 0) << setup.err;
  ASSERT_EQ(HeaderField32(ReadFile(dir.File("a.qcow2")), 36), 2u);
  ASSERT_EQ(In(dir.path(), "qemu-img snapshot -a s1 q.qcow2").exit_code, 0);
  const RunResult ours = In(dir.path(), Ours() + " snapshot -a s1 o.qcow2");
  ASSERT_EQ(ours.exit_code, 0) << ours.err;
  EXPECT_EQ(ours.out, "");
  const RunResult check = In(dir.path(), "qemu-img check o.qcow2");
  EXPECT_EQ(check.exit_code, 0) << check.out << check.err;
  const RunResult cmp = In(dir.path(), "qemu-img compare q.qcow2 o.qcow2");
  EXPECT_EQ(cmp.exit_code, 0) << cmp.out << cmp.err;
  // The snapshot's data, not the writes made after it.
  const RunResult read = In(dir.path(),
                            "qemu-io -c 'read -P 0x11 0 1M' -c 'read -P 0x22 600M 1M' "
                            "-c 'read -P 0 700M 64k' o.qcow2 | grep -c 'Pattern verification'");
  EXPECT_EQ(read.out, "0\n") << read.out;
  EXPECT_EQ(HeaderField32(ReadFile(dir.File("o.qcow2")), 36),
            HeaderField32(ReadFile(dir.File("q.qcow2")), 36));
  EXPECT_EQ(HeaderField32(ReadFile(dir.File("o.qcow2")), 36), 6u);
}

TEST(SnapshotTest, ListWithoutSnapshotsPrintsNothing) {
  if (!HaveTool("qemu-img")) GTEST_SKIP() << "qemu-img missing";
  TempDir dir;
  ASSERT_EQ(In(dir.path(), "qemu-img create -q -f qcow2 img.qcow2 1M").exit_code, 0);
  const RunResult ours = In(dir.path(), Ours() + " snapshot -l img.qcow2");
  EXPECT_EQ(ours.exit_code, 0) << ours.err;
  EXPECT_EQ(ours.out, In(dir.path(), "qemu-img snapshot -l img.qcow2").out);
  EXPECT_EQ(ours.out, "");
}

}  // namespace
}  // namespace uq::interop
