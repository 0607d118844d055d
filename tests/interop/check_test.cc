// qemu-img as the oracle for `qcow2-img check` and its repairs.
//
// Each case edits metadata bytes of an image QEMU made (refcounts, L1 / L2 /
// refcount table entries, compressed descriptors, extended-L2 bitmaps) and
// then:
//  - check: both tools exit alike and print the same report, human and JSON
//    (the same bytes: counts, image end offset, fragmentation), and the same
//    problem lines on stderr;
//  - repair (-r all, -r leaks): on two copies, one per tool. Where qemu-img's
//    repair leaves the image clean, ours must too, by both tools' checks;
//    otherwise ours may leave no more corruptions than qemu-img's. Where
//    qemu-img's repaired image still reads, ours reads the same guest bytes.
//    The repair reports (what was fixed, and the second check's counts) are
//    the same except where a case says why not; the image end offset after a
//    refcount rebuild may differ, as ours writes the new refcount structures
//    past the end of the file where qemu-img reuses free clusters.
// Clean images of every kind (tests/interop/image_kinds.h) are checked alike
// by both tools too.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "format/tables.h"
#include "tests/interop/image_kinds.h"
#include "tests/interop/interop_util.h"

namespace uq::interop {
namespace {

std::string Qcow2Img() {
  const char* env = std::getenv("UQ_QCOW2_IMG");
  return env && *env ? env : QCOW2_IMG_PATH;
}

constexpr uint64_t kCopied = 1ull << 63;
constexpr uint64_t kCompressed = 1ull << 62;
constexpr uint64_t kOffsetMask = 0x00fffffffffffe00ull;

// Big-endian access to an image held in memory, and the offsets of its
// first L1 / L2 / refcount entries.
class Image {
 public:
  explicit Image(std::string& bytes) : b_(bytes) {}

  uint64_t Get(uint64_t offset, int width) const {
    uint64_t v = 0;
    for (int i = 0; i < width; ++i) v = v << 8 | static_cast<uint8_t>(b_.at(offset + i));
    return v;
  }
  void Put(uint64_t offset, int width, uint64_t v) {
    for (int i = width - 1; i >= 0; --i, v >>= 8) b_.at(offset + i) = static_cast<char>(v);
  }
  uint64_t cluster_bytes() const { return uint64_t{1} << Get(20, 4); }
  uint64_t l1() const { return Get(40, 8); }
  uint64_t reftable() const { return Get(48, 8); }
  bool extended_l2() const { return Get(72, 8) & (1u << 4); }
  // Byte offset of entry `i` of the L2 table named by L1[0].
  uint64_t l2_entry(uint64_t i) const {
    return (Get(l1(), 8) & kOffsetMask) + i * (extended_l2() ? 16 : 8);
  }
  uint64_t L2(uint64_t i) const { return Get(l2_entry(i), 8); }
  void SetL2(uint64_t i, uint64_t v) { Put(l2_entry(i), 8, v); }
  // The host cluster index of L2 entry `i`'s data.
  uint64_t DataCluster(uint64_t i) const { return (L2(i) & kOffsetMask) / cluster_bytes(); }
  void SetRefcount(uint64_t cluster, uint64_t value) {
    const uint32_t order = static_cast<uint32_t>(Get(96, 4));
    const uint64_t block = Get(reftable(), 8) & kOffsetMask;
    std::span<std::byte> span(reinterpret_cast<std::byte*>(b_.data() + block), cluster_bytes());
    format::SetRefcount(span, order, cluster, value);
  }
  std::string& bytes() { return b_; }

 private:
  std::string& b_;
};

enum class Base { kPlain, kExtendedL2, kRefcountBits1 };

struct Case {
  std::string name;
  Base base;
  std::function<void(Image&)> mutate;
  // Why the repair reports differ, or "" where they are the same bytes.
  std::string repair_report_differs = "";
  // qemu-img finds nothing wrong either (the edit is outside what it checks).
  bool clean = false;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

std::string BaseSetup(Base base) {
  // Data at guest 0..256k (4 clusters), 32M (one) and a compressed cluster at
  // 48M: L2 entries 0..3, 512 and 768 of the first L2 table.
  const std::string writes =
      "qemu-io -c 'write -P 0x11 0 256k' -c 'write -P 0x22 32M 64k' -c 'write -c -P 0x33 48M "
      "64k' img.qcow2 >/dev/null";
  switch (base) {
    case Base::kPlain:
      return "qemu-img create -q -f qcow2 img.qcow2 64M && " + writes;
    case Base::kExtendedL2:
      return "qemu-img create -q -f qcow2 -o extended_l2=on img.qcow2 64M && qemu-io -c 'write "
             "-P 0x11 0 256k' -c 'write -P 0x22 32M 8k' img.qcow2 >/dev/null";
    case Base::kRefcountBits1:
      return "qemu-img create -q -f qcow2 -o refcount_bits=1 img.qcow2 64M && " + writes;
  }
  return "";
}

std::vector<Case> Cases() {
  const std::string grows_file =
      "qemu-img grows the file to reach the refcount block, which it then counts as one more "
      "corruption fixed; qcow2-img rebuilds the refcounts without growing the file";
  return {
      // The corruptions issue 9 names.
      {"refcount_zero_for_used_cluster", Base::kPlain,
       [](Image& i) { i.SetRefcount(i.DataCluster(0), 0); }},
      {"refcount_too_high", Base::kPlain, [](Image& i) { i.SetRefcount(i.DataCluster(1), 2); }},
      {"leaked_cluster", Base::kPlain,
       [](Image& i) {
         const uint64_t cs = i.cluster_bytes();
         const uint64_t end = (i.bytes().size() + cs - 1) / cs;
         i.bytes().resize((end + 1) * cs);
         i.SetRefcount(end, 1);
       }},
      {"two_l2_entries_on_one_cluster_with_copied", Base::kPlain,
       [](Image& i) { i.SetL2(1, i.L2(0)); }},
      {"l2_entry_past_end_of_file", Base::kPlain,
       [](Image& i) { i.SetL2(2, kCopied | (16 << 20)); }},
      {"unaligned_l2_entry", Base::kPlain, [](Image& i) { i.SetL2(3, i.L2(3) + 0x200); }},
      {"missing_copied", Base::kPlain, [](Image& i) { i.SetL2(0, i.L2(0) & ~kCopied); }},
      {"unaligned_l1_entry", Base::kPlain,
       [](Image& i) { i.Put(i.l1(), 8, i.Get(i.l1(), 8) + 0x200); }},
      {"l2_table_overlapping_refcount_table", Base::kPlain,
       [](Image& i) { i.Put(i.l1(), 8, kCopied | i.reftable()); }},
      {"refcount_table_entry_past_end_of_file", Base::kPlain,
       [](Image& i) { i.Put(i.reftable(), 8, 16 << 20); }, grows_file},
      {"refcount_block_at_offset_0", Base::kPlain, [](Image& i) { i.Put(i.reftable(), 8, 0); }},
      {"header_cluster_referenced_as_data", Base::kPlain,
       [](Image& i) { i.SetL2(4, kCompressed | 0x100); }},
      {"compressed_descriptor_past_end_of_file", Base::kPlain,
       [](Image& i) {
         // Offset bits 0..53 for 64 KiB clusters; keep the sector count.
         const uint64_t offset_mask = (uint64_t{1} << 54) - 1;
         i.SetL2(768, (i.L2(768) & ~offset_mask) | (256 << 20));
       }},
      // More of what the check looks at.
      {"data_cluster_on_the_l1_table", Base::kPlain,
       [](Image& i) { i.SetL2(4, kCopied | i.l1()); }},
      {"l1_entry_past_end_of_file", Base::kPlain,
       [](Image& i) { i.Put(i.l1(), 8, kCopied | (256 << 20)); }},
      {"unaligned_refcount_block", Base::kPlain,
       [](Image& i) { i.Put(i.reftable(), 8, i.Get(i.reftable(), 8) + 0x200); },
       "qemu-img marks the image corrupt and then cannot write the rebuilt refcounts; qcow2-img "
       "rebuilds them"},
      {"l2_entry_reserved_bits", Base::kPlain, [](Image& i) { i.SetL2(0, i.L2(0) | 0x100); }},
      {"l1_entry_reserved_bits", Base::kPlain,
       [](Image& i) { i.Put(i.l1(), 8, i.Get(i.l1(), 8) | 0x100); }},
      {"compressed_with_copied", Base::kPlain, [](Image& i) { i.SetL2(768, i.L2(768) | kCopied); }},
      {"unaligned_preallocated_zero_cluster", Base::kPlain,
       [](Image& i) { i.SetL2(3, (i.L2(3) + 0x200) | 1); }},
      {"refcount_block_shared", Base::kPlain,
       [](Image& i) {
         i.SetRefcount((i.Get(i.reftable(), 8) & kOffsetMask) / i.cluster_bytes(), 2);
       }},
      {"l2_table_refcount_zero", Base::kPlain,
       [](Image& i) { i.SetRefcount((i.Get(i.l1(), 8) & kOffsetMask) / i.cluster_bytes(), 0); }},
      {"l1_entry_missing_copied", Base::kPlain,
       [](Image& i) { i.Put(i.l1(), 8, i.Get(i.l1(), 8) & ~kCopied); }},
      {"refcount_past_end_of_file", Base::kPlain, [](Image& i) { i.SetRefcount(40, 1); }, "",
       /*clean=*/true},
      {"extended_l2_allocated_and_zero", Base::kExtendedL2,
       [](Image& i) { i.Put(i.l2_entry(0) + 8, 8, i.Get(i.l2_entry(0) + 8, 8) | (1ull << 32)); }},
      {"extended_l2_unallocated_with_bitmap", Base::kExtendedL2,
       [](Image& i) { i.Put(i.l2_entry(9) + 8, 8, 0x3); }},
      {"refcount_overflow_1_bit", Base::kRefcountBits1, [](Image& i) { i.SetL2(1, i.L2(0)); }},
  };
}

class CheckCorruptionTest : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    if (!HaveTool("qemu-img") || !HaveTool("qemu-io")) GTEST_SKIP() << "QEMU tools not installed";
    RunResult r = In(BaseSetup(GetParam().base));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    std::string bytes = ReadFile(dir_.File("img.qcow2"));
    Image image(bytes);
    GetParam().mutate(image);
    WriteFile(dir_.File("bad.qcow2"), bytes);
  }

  RunResult In(const std::string& command) const {
    return RunCommand("cd " + Quote(dir_.path()) + " && " + command);
  }
  RunResult Ours(const std::string& args) const { return In(Quote(Qcow2Img()) + " " + args); }
  RunResult Theirs(const std::string& args) const { return In("qemu-img " + args); }

  // The problem lines: stderr without the tools' own "<tool>: ..." lines.
  static std::string ProblemLines(const std::string& err) {
    std::istringstream in(err);
    std::string out;
    for (std::string line; std::getline(in, line);) {
      if (line.rfind("qemu-img: ", 0) == 0 || line.rfind("qcow2-img: ", 0) == 0) continue;
      out += line + "\n";
    }
    return out;
  }

  static std::string WithoutEndOffset(const std::string& report) {
    std::istringstream in(report);
    std::string out;
    for (std::string line; std::getline(in, line);) {
      if (line.rfind("Image end offset: ", 0) != 0) out += line + "\n";
    }
    return out;
  }

  // The corruptions qemu-img check counts in `file` (0 if it reports none).
  int64_t QemuCorruptions(const std::string& file) const {
    const RunResult r = Theirs("check --output=json " + file);
    const common::Json j = ParseOrDie(r.out);
    const common::Json* c = j.Find("corruptions");
    return c == nullptr ? 0 : c->AsInt();
  }

  void ExpectRepairLikeQemu(const std::string& mode);

  TempDir dir_;
};

TEST_P(CheckCorruptionTest, CheckAgreesWithQemuImg) {
  for (const char* output : {"", "--output=json "}) {
    SCOPED_TRACE(output);
    const RunResult theirs = Theirs(std::string("check ") + output + "bad.qcow2");
    const RunResult ours = Ours(std::string("check ") + output + "bad.qcow2");
    EXPECT_EQ(theirs.exit_code == 0, GetParam().clean) << "the edit is not what the case says";
    EXPECT_EQ(ours.exit_code, theirs.exit_code) << ours.err;
    EXPECT_EQ(ours.out, theirs.out);
    EXPECT_EQ(ProblemLines(ours.err), ProblemLines(theirs.err));
  }
}

void CheckCorruptionTest::ExpectRepairLikeQemu(const std::string& mode) {
  SCOPED_TRACE("-r " + mode);
  ASSERT_EQ(In("cp bad.qcow2 theirs.qcow2 && cp bad.qcow2 ours.qcow2").exit_code, 0);
  const RunResult theirs = Theirs("check -r " + mode + " theirs.qcow2");
  const RunResult ours = Ours("check -r " + mode + " ours.qcow2");
  const std::string& differs = GetParam().repair_report_differs;
  if (differs.empty()) {
    EXPECT_EQ(ours.exit_code, theirs.exit_code) << ours.err;
    // The same report, except where the image now ends: a rebuild puts new
    // refcount structures past the end of the file, where qemu-img reuses
    // free clusters (the second check of each tool gives the same end
    // offset for the same image, see below).
    EXPECT_EQ(WithoutEndOffset(ours.out), WithoutEndOffset(theirs.out)) << "stderr:\n" << ours.err;
  }
  // After the repair: at least as good as qemu-img's, by both tools.
  const RunResult after_theirs = Theirs("check theirs.qcow2");
  const RunResult after_ours = Theirs("check ours.qcow2");
  if (after_theirs.exit_code == 0) {
    EXPECT_EQ(after_ours.exit_code, 0) << after_ours.out << after_ours.err;
  } else {
    EXPECT_LE(QemuCorruptions("ours.qcow2"), QemuCorruptions("theirs.qcow2"));
  }
  const RunResult self_check = Ours("check --output=json ours.qcow2");
  const RunResult qemu_check = Theirs("check --output=json ours.qcow2");
  EXPECT_EQ(self_check.exit_code, qemu_check.exit_code);
  EXPECT_EQ(self_check.out, qemu_check.out);
  // Guest contents: the same as qemu-img's repair leaves them.
  const RunResult read_theirs = Theirs("convert -U -O raw theirs.qcow2 theirs.raw");
  if (read_theirs.exit_code == 0) {
    const RunResult read_ours = Theirs("convert -U -O raw ours.qcow2 ours.raw");
    ASSERT_EQ(read_ours.exit_code, 0) << read_ours.err;
    EXPECT_TRUE(ReadFile(dir_.File("ours.raw")) == ReadFile(dir_.File("theirs.raw")))
        << "guest contents differ after -r " << mode;
  }
}

TEST_P(CheckCorruptionTest, RepairAllIsNoWorseThanQemuImg) { ExpectRepairLikeQemu("all"); }
TEST_P(CheckCorruptionTest, RepairLeaksIsNoWorseThanQemuImg) { ExpectRepairLikeQemu("leaks"); }

INSTANTIATE_TEST_SUITE_P(Corruptions, CheckCorruptionTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return info.param.name;
                         });

// Clean images of every kind: the same report from both tools (raw: exit
// status 63, "This image format does not support checks").
class CheckKindsTest : public ::testing::TestWithParam<ImageKind> {};

TEST_P(CheckKindsTest, CheckAgreesWithQemuImg) {
  if (!HaveTool("qemu-img") || !HaveTool("qemu-io")) GTEST_SKIP() << "QEMU tools not installed";
  TempDir dir;
  const std::string cd = "cd " + Quote(dir.path()) + " && ";
  ASSERT_EQ(RunCommand(cd + GetParam().setup).exit_code, 0);
  for (const char* args : {"check img.qcow2", "check --output=json img.qcow2", "check -q img.qcow2",
                           "check -U --output=json img.qcow2"}) {
    SCOPED_TRACE(args);
    const RunResult theirs = RunCommand(cd + "qemu-img " + args);
    const RunResult ours = RunCommand(cd + Quote(Qcow2Img()) + " " + args);
    EXPECT_EQ(ours.exit_code, theirs.exit_code) << theirs.err << ours.err;
    EXPECT_EQ(ours.out, theirs.out);
  }
}

INSTANTIATE_TEST_SUITE_P(Kinds, CheckKindsTest, ::testing::ValuesIn(ImageKinds()),
                         [](const ::testing::TestParamInfo<ImageKind>& info) {
                           return info.param.name;
                         });

}  // namespace
}  // namespace uq::interop
