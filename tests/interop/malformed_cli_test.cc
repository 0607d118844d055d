// `qcow2-img info` on malformed images (and on patched but valid ones, which
// must be described as qemu-img describes them): exactly one stderr line
// "qcow2-img: <file>: <problem naming the field>", nothing on stdout, exit 1,
// never a crash. Each malformed file is a valid qemu-img image with one
// header field patched; where QEMU applies the same rule, qemu-img must
// reject the file too (so our rule is not stricter than the oracle's by
// accident).
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "tests/interop/interop_util.h"

namespace uq::interop {
namespace {

std::string Qcow2Img() {
  const char* env = std::getenv("UQ_QCOW2_IMG");
  return env && *env ? env : QCOW2_IMG_PATH;
}

void Put32(std::string& img, size_t offset, uint32_t v) {
  for (int i = 0; i < 4; ++i) img[offset + i] = static_cast<char>(v >> (24 - 8 * i));
}
void Put64(std::string& img, size_t offset, uint64_t v) {
  for (int i = 0; i < 8; ++i) img[offset + i] = static_cast<char>(v >> (56 - 8 * i));
}

struct Case {
  std::string name;
  std::function<void(std::string&)> mutate;
  std::vector<std::string> needles;  // all must appear in the error line
  bool qemu_rejects;                 // QEMU has the same rule
  // Without the magic the file probes as raw (as with qemu-img), so only
  // "-f qcow2" can judge it.
  bool needs_format = false;
};

std::vector<Case> Cases() {
  return {
      {"empty_file", [](std::string& s) { s.clear(); }, {"truncated", "0 bytes"}, true, true},
      {"truncated_50_bytes",
       [](std::string& s) { s.resize(50); },
       {"truncated", "50 bytes"},
       true,
       false},
      {"truncated_before_v3_fields",
       [](std::string& s) { s.resize(90); },
       {"truncated", "90 bytes"},
       true},
      {"bad_magic",
       [](std::string& s) { Put32(s, 0, 0x12345678); },
       {"magic 0x12345678"},
       true,
       true},
      {"version_1", [](std::string& s) { Put32(s, 4, 1); }, {"version 1"}, true, false},
      {"version_4", [](std::string& s) { Put32(s, 4, 4); }, {"version 4"}, true, false},
      {"cluster_bits_8",
       [](std::string& s) { Put32(s, 20, 8); },
       {"cluster_bits 8", "9..21"},
       true},
      {"cluster_bits_22",
       [](std::string& s) { Put32(s, 20, 22); },
       {"cluster_bits 22", "9..21"},
       true},
      {"crypt_method_1",
       [](std::string& s) { Put32(s, 32, 1); },
       {"crypt_method 1", "encrypted"},
       false},
      {"l1_past_end_of_file",
       [](std::string& s) { Put64(s, 40, 0x40000000); },
       {"l1_table_offset 0x40000000", "end of the file"},
       false},
      {"l1_unaligned",
       [](std::string& s) { Put64(s, 40, 0x30200); },
       {"l1_table_offset 0x30200", "aligned"},
       true},
      {"l1_size_too_small",
       [](std::string& s) { Put32(s, 36, 0); },
       {"l1_size 0", "too small"},
       true},
      {"l1_size_too_large",
       [](std::string& s) { Put32(s, 36, 0x10000000); },
       {"l1_size 268435456", "too large"},
       true},
      {"refcount_table_overlaps_header",
       [](std::string& s) { Put64(s, 48, 0); },
       {"refcount_table_offset 0x0", "overlaps the header"},
       false},
      {"refcount_table_unaligned",
       [](std::string& s) { Put64(s, 48, 0x10008); },
       {"refcount_table_offset 0x10008", "aligned"},
       true},
      {"refcount_table_clusters_0",
       [](std::string& s) { Put32(s, 56, 0); },
       {"refcount_table_clusters 0"},
       true},
      {"l1_overlaps_refcount_table",
       [](std::string& s) { Put64(s, 40, 0x10000); },
       {"l1_table_offset 0x10000", "refcount table"},
       false},
      {"snapshots_unaligned",
       [](std::string& s) {
         Put32(s, 60, 1);
         Put64(s, 64, 0x10001);
       },
       {"snapshots_offset 0x10001", "aligned"},
       true},
      {"unknown_incompatible_bit",
       [](std::string& s) { Put64(s, 72, 1ull << 9); },
       {"incompatible_features bit 9", "not supported"},
       true},
      {"header_length_too_small",
       [](std::string& s) { Put32(s, 100, 96); },
       {"header_length 96", "too small"},
       true},
      {"header_length_not_multiple_of_8",
       [](std::string& s) { Put32(s, 100, 108); },
       {"header_length 108", "multiple of 8"},
       false},
      {"refcount_order_7",
       [](std::string& s) { Put32(s, 96, 7); },
       {"refcount_order 7"},
       true,
       false},
      {"compression_type_2",
       [](std::string& s) { s[104] = 2; },
       {"compression_type 2"},
       true,
       false},
      {"zstd_without_incompatible_bit",
       [](std::string& s) { s[104] = 1; },
       {"compression_type 1", "bit 3"},
       true},
      {"backing_name_too_long",
       [](std::string& s) {
         Put64(s, 8, 0x200);
         Put32(s, 16, 1024);
       },
       {"backing_file_size 1024"},
       true},
      {"backing_offset_outside_cluster",
       [](std::string& s) {
         Put64(s, 8, 0x20000);
         Put32(s, 16, 4);
       },
       {"backing_file_offset 131072"},
       true},
      {"extension_too_long",
       [](std::string& s) {
         // First extension (the feature table) claims more than the cluster.
         Put32(s, 112 + 4, 0x100000);
       },
       {"header extension 0x6803f857", "length 1048576"},
       true},
  };
}

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class MalformedCliTest : public ::testing::TestWithParam<Case> {};

TEST_P(MalformedCliTest, OneLineNamingTheFieldExit1) {
  const Case& c = GetParam();
  TempDir dir;
  const std::string valid = dir.File("valid.qcow2");
  if (!HaveTool("qemu-img")) GTEST_SKIP() << "qemu-img not installed";
  RunResult r = RunCommand("qemu-img create -q -f qcow2 " + Quote(valid) + " 16M");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::string img = ReadFile(valid);
  // The patches assume qemu-img's layout: reftable at 0x10000, L1 at 0x30000.
  ASSERT_GE(img.size(), 0x30008u);
  ASSERT_EQ(img.substr(48, 8), std::string("\0\0\0\0\0\1\0\0", 8));
  ASSERT_EQ(img.substr(40, 8), std::string("\0\0\0\0\0\3\0\0", 8));
  // Sanity: the unpatched image is accepted.
  r = RunCommand(Quote(Qcow2Img()) + " info " + Quote(valid));
  ASSERT_EQ(r.exit_code, 0) << r.err;

  c.mutate(img);
  const std::string bad = dir.File(c.name + ".qcow2");
  WriteFile(bad, img);
  for (const char* output : {"", " --output=json", " -f qcow2", " -f qcow2 --output=json"}) {
    SCOPED_TRACE(output);
    if (c.needs_format && std::string(output).find("-f") == std::string::npos) continue;
    r = RunCommand(Quote(Qcow2Img()) + " info" + output + " " + Quote(bad));
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(r.out, "");
    ASSERT_FALSE(r.err.empty());
    EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << "not exactly one line: " << r.err;
    const std::string prefix = "qcow2-img: " + bad + ": ";
    EXPECT_EQ(r.err.rfind(prefix, 0), 0u) << r.err;
    for (const std::string& n : c.needles) {
      EXPECT_NE(r.err.find(n), std::string::npos) << "'" << n << "' missing from: " << r.err;
    }
  }
  if (c.qemu_rejects) {
    r = RunCommand("qemu-img info -f qcow2 " + Quote(bad));
    EXPECT_NE(r.exit_code, 0) << "qemu-img accepted it:\n" << r.out;
  }
}

INSTANTIATE_TEST_SUITE_P(Headers, MalformedCliTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return info.param.name;
                         });

// Patched but valid headers (feature bits QEMU accepts on a read-only open):
// qcow2-img info must describe them exactly as qemu-img info does.
struct FlagCase {
  std::string name;
  std::function<void(std::string&)> mutate;
};

void PrintTo(const FlagCase& c, std::ostream* os) { *os << c.name; }

std::vector<FlagCase> FlagCases() {
  return {
      {"dirty_bit", [](std::string& s) { Put64(s, 72, 1); }},
      {"corrupt_bit", [](std::string& s) { Put64(s, 72, 2); }},
      {"dirty_and_corrupt", [](std::string& s) { Put64(s, 72, 3); }},
      {"data_file_bit_without_name", [](std::string& s) { Put64(s, 72, 4); }},
      {"unknown_compatible_bit", [](std::string& s) { Put64(s, 80, 1ull << 7); }},
      {"lazy_refcounts_bit", [](std::string& s) { Put64(s, 80, 1); }},
      {"unknown_autoclear_bit", [](std::string& s) { Put64(s, 88, 1ull << 9); }},
      {"bitmaps_bit_without_extension", [](std::string& s) { Put64(s, 88, 1); }},
  };
}

class FlagsInfoTest : public ::testing::TestWithParam<FlagCase> {};

TEST_P(FlagsInfoTest, InfoMatchesQemuImg) {
  if (!HaveTool("qemu-img")) GTEST_SKIP() << "qemu-img not installed";
  TempDir dir;
  const std::string path = dir.File("img.qcow2");
  RunResult r = RunCommand("qemu-img create -q -f qcow2 " + Quote(path) + " 16M");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::string img = ReadFile(path);
  GetParam().mutate(img);
  WriteFile(path, img);
  for (const char* args : {" info ", " info --output=json "}) {
    SCOPED_TRACE(args);
    const RunResult ours = RunCommand(Quote(Qcow2Img()) + args + Quote(path));
    const RunResult theirs = RunCommand(std::string("qemu-img") + args + Quote(path));
    ASSERT_EQ(theirs.exit_code, 0) << theirs.err;
    ASSERT_EQ(ours.exit_code, 0) << ours.err;
    EXPECT_EQ(ours.out, theirs.out);
  }
}

INSTANTIATE_TEST_SUITE_P(Flags, FlagsInfoTest, ::testing::ValuesIn(FlagCases()),
                         [](const ::testing::TestParamInfo<FlagCase>& info) {
                           return info.param.name;
                         });

// Bad invocations: same one-line contract.
TEST(CliErrorsTest, BadInvocations) {
  TempDir dir;
  const std::string q = Quote(Qcow2Img());
  struct Bad {
    std::string args;
    std::string prefix;  // after "qcow2-img: "
    std::string needle;
  };
  const std::vector<Bad> cases = {
      {"info " + Quote(dir.File("missing.qcow2")), dir.File("missing.qcow2") + ": ",
       "No such file"},
      {"info " + Quote(dir.path()), dir.path() + ": ", "Is a directory"},
      {"info --output=xml x", "info: ", "--output must be used with human or json"},
      {"info -f vmdk " + Quote(dir.File("x")), dir.File("x") + ": ", ""},
      {"info", "info: ", "Expecting one image file name"},
      {"frobnicate", "frobnicate: ", "unknown command"},
      {"create -f qcow2 -o cluster_size=1000 " + Quote(dir.File("a.qcow2")) + " 1M",
       dir.File("a.qcow2") + ": ", "cluster_size 1000"},
      {"create -f qcow2 -o refcount_bits=3 " + Quote(dir.File("a.qcow2")) + " 1M",
       dir.File("a.qcow2") + ": ", "refcount_bits 3"},
      {"create -f qcow2 -o bogus=1 " + Quote(dir.File("a.qcow2")) + " 1M",
       dir.File("a.qcow2") + ": ", "invalid option 'bogus'"},
      {"create -f qcow2 -o compat=0.10,lazy_refcounts=on " + Quote(dir.File("a.qcow2")) + " 1M",
       dir.File("a.qcow2") + ": ", "lazy_refcounts"},
      {"create -f qcow2 " + Quote(dir.File("a.qcow2")) + " 12Q", dir.File("a.qcow2") + ": ",
       "invalid size '12Q'"},
      {"create -f qcow2 " + Quote(dir.File("a.qcow2")), dir.File("a.qcow2") + ": ", "size"},
      {"create -f qcow2 -b nothere.qcow2 -F qcow2 " + Quote(dir.File("a.qcow2")),
       dir.File("a.qcow2") + ": ", "backing file nothere.qcow2"},
      {"create -f qcow2 -b nothere.qcow2 " + Quote(dir.File("a.qcow2")) + " 1M",
       dir.File("a.qcow2") + ": ", "backing format"},
      {"create -f qcow2 -x " + Quote(dir.File("a.qcow2")), "create: ", "unrecognized option '-x'"},
  };
  for (const Bad& b : cases) {
    SCOPED_TRACE(b.args);
    const RunResult r = RunCommand(q + " " + b.args);
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(r.out, "");
    ASSERT_FALSE(r.err.empty());
    EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << r.err;
    EXPECT_EQ(r.err.rfind("qcow2-img: " + b.prefix, 0), 0u) << r.err;
    EXPECT_NE(r.err.find(b.needle), std::string::npos) << r.err;
  }
}

}  // namespace
}  // namespace uq::interop
