// qcow2-img rebase and commit against qemu-img 7.2. For several QEMU-made
// image kinds (64 KiB and 4 KiB clusters, v2, zstd compressed, extended L2)
// a chain base <- mid <- top, plus an unrelated image `other`, is filled with
// random writes by qemu-io (the seed is printed; UQ_SEED=N repeats a run).
// Each operation runs with qemu-img on one copy of the chain and with
// qcow2-img on another; then for every file: `qemu-img compare` exit 0
// against qemu-img's, `qemu-img check` exit 0 on ours, the same
// `qemu-img info --output=json` apart from sizes, and for the top the same
// allocation (`qemu-img map` without host offsets: commit empties it, -d and
// -b do not). Bad input: one line, exit 1, every file byte-identical.
//
// The cache, rate and lock options: chain_options_test.cc.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <random>
#include <string>
#include <utility>
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

uint32_t Seed() {
  const char* env = std::getenv("UQ_SEED");
  return env && *env ? static_cast<uint32_t>(std::strtoul(env, nullptr, 10))
                     : static_cast<uint32_t>(std::time(nullptr));
}

struct ChainKind {
  std::string name;        // an image kind: its img.qcow2 becomes the base
  std::string create;      // qemu-img create options of the overlays and `other`
  uint64_t cluster_bytes;  // for compressed writes
  bool compressed;         // some random writes are compressed (write -c)
};

// qemu-io commands writing random data and zeros over a disk of `size`
// bytes; with `compressed`, first a few whole compressed clusters (QEMU
// writes those only into unallocated clusters: distinct ones, before the
// rest, never on the base, which the kind made compressed already).
std::string RandomWrites(std::mt19937& rng, uint64_t size, const ChainKind& k, bool compressed) {
  std::string cmds;
  std::vector<uint64_t> used;
  for (int i = 0; compressed && i < 4; ++i) {
    const uint64_t at = rng() % (size / k.cluster_bytes) * k.cluster_bytes;
    if (std::find(used.begin(), used.end(), at) != used.end()) continue;
    used.push_back(at);
    cmds += absl::StrCat(" -c 'write -c -P ", 1 + rng() % 255, " ", at, " ", k.cluster_bytes, "'");
  }
  for (int i = 0; i < 12; ++i) {
    const uint64_t len = (1 + rng() % 512) * 512;
    const uint64_t at = rng() % ((size - len) / 512) * 512;
    if (rng() % 4 == 0) {
      cmds += absl::StrCat(" -c 'write -z ", at, " ", len, "'");
    } else {
      cmds += absl::StrCat(" -c 'write -P ", 1 + rng() % 255, " ", at, " ", len, "'");
    }
  }
  return cmds;
}

uint64_t VirtualSize(const std::string& dir, const std::string& file) {
  const RunResult r = In(dir, "qemu-img info -U --output=json " + Quote(file));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  const common::Json* v = ParseOrDie(r.out).Find("virtual-size");
  return v == nullptr ? 0 : static_cast<uint64_t>(v->AsInt());
}

// `j` (an object) without the members named in `drop`, recursively in
// objects and arrays.
common::Json Without(const common::Json& j, const std::vector<std::string>& drop) {
  if (j.kind() == common::Json::Kind::kArray) {
    common::Json out = common::Json::Array();
    for (const common::Json& item : j.items()) out.Push(Without(item, drop));
    return out;
  }
  if (j.kind() != common::Json::Kind::kObject) return j;
  common::Json out = common::Json::Object();
  for (const auto& [key, value] : j.members()) {
    bool skip = false;
    for (const std::string& d : drop) skip = skip || key == d;
    if (!skip) out.Set(key, Without(value, drop));
  }
  return out;
}

const char* const kFiles[] = {"base.qcow2", "mid.qcow2", "top.qcow2", "other.qcow2"};

class RebaseCommitTest : public ::testing::TestWithParam<ChainKind> {
 protected:
  // Builds the chain in src/.
  bool SetUpChain() {
    const ChainKind& k = GetParam();
    const uint32_t seed = Seed();
    std::printf("seed %u (UQ_SEED=%u repeats this run)\n", seed, seed);
    RecordProperty("seed", std::to_string(seed));
    std::mt19937 rng(seed);
    src_ = dir_.File("src");
    RunResult r = RunCommand("mkdir " + Quote(src_));
    EXPECT_EQ(r.exit_code, 0);
    r = In(src_, KindSetup(k.name) + " && mv img.qcow2 base.qcow2 && rm -f src.raw");
    EXPECT_EQ(r.exit_code, 0) << r.err;
    if (r.exit_code != 0) return false;
    const uint64_t size = VirtualSize(src_, "base.qcow2");
    const std::string create = "qemu-img create -q -f qcow2 " + k.create + " ";
    const std::string script =
        "qemu-io" + RandomWrites(rng, size, k, false) + " base.qcow2 >/dev/null && " + create +
        "-b base.qcow2 -F qcow2 mid.qcow2 && qemu-io" + RandomWrites(rng, size, k, k.compressed) +
        " mid.qcow2 >/dev/null && " + create + "-b mid.qcow2 -F qcow2 top.qcow2 && qemu-io" +
        RandomWrites(rng, size, k, k.compressed) + " top.qcow2 >/dev/null && " + create +
        "other.qcow2 " + std::to_string(size) + " && qemu-io" +
        RandomWrites(rng, size, k, k.compressed) + " other.qcow2 >/dev/null";
    r = In(src_, script);
    EXPECT_EQ(r.exit_code, 0) << script << "\n" << r.err;
    return r.exit_code == 0;
  }

  // Runs `qemu-img <verb> <args> top.qcow2` in q/ and the same with
  // qcow2-img in o/, fresh copies of src/, and compares every file.
  // `identical`: every file must be byte-identical to qemu-img's (rebase -u
  // writes the header exactly as QEMU does). `readable`: the top's backing
  // file exists (qemu-img compare can open it).
  void Both(const std::string& verb, const std::string& args, bool identical = false,
            bool readable = true) {
    SCOPED_TRACE(verb + " " + args);
    const std::string q = dir_.File("q");
    const std::string o = dir_.File("o");
    ASSERT_EQ(RunCommand("rm -rf " + Quote(q) + " " + Quote(o) + " && cp -a " + Quote(src_) + " " +
                         Quote(q) + " && cp -a " + Quote(src_) + " " + Quote(o))
                  .exit_code,
              0);
    const RunResult theirs = In(q, "qemu-img " + verb + " " + args + " top.qcow2");
    ASSERT_EQ(theirs.exit_code, 0) << theirs.err;
    const RunResult ours = In(o, Ours() + " " + verb + " " + args + " top.qcow2");
    ASSERT_EQ(ours.exit_code, 0) << ours.err;
    // qemu-img prints its progress bar on stdout, qcow2-img on stderr.
    if (args.find("-p") == std::string::npos) {
      EXPECT_EQ(ours.out, theirs.out);
    } else {
      EXPECT_NE(ours.err.find("(100.00/100%)"), std::string::npos) << ours.err;
    }
    for (const char* f : kFiles) {
      SCOPED_TRACE(f);
      const std::string file = Quote(f);
      if (identical) {
        EXPECT_TRUE(ReadFile(q + "/" + f) == ReadFile(o + "/" + f));
      }
      if (!readable && std::string(f) == "top.qcow2") continue;
      const RunResult compare =
          RunCommand("qemu-img compare " + Quote(q + "/" + f) + " " + Quote(o + "/" + f));
      EXPECT_EQ(compare.exit_code, 0) << compare.out << compare.err;
      const RunResult check = In(o, "qemu-img check " + file);
      EXPECT_EQ(check.exit_code, 0) << check.out << check.err;
      const RunResult qi = In(q, "qemu-img info --output=json " + file);
      const RunResult oi = In(o, "qemu-img info --output=json " + file);
      ASSERT_EQ(qi.exit_code, 0) << qi.err;
      ASSERT_EQ(oi.exit_code, 0) << oi.err;
      const std::vector<std::string> sizes = {"actual-size", "disk-size"};
      EXPECT_EQ(JsonDiff(Without(ParseOrDie(qi.out), sizes), Without(ParseOrDie(oi.out), sizes)),
                "");
    }
    if (!readable) return;
    // What the top allocates itself (depth 0) and what reads through, by
    // range: commit empties it, -d keeps it, rebase adds what differs.
    const std::string map = "qemu-img map --output=json top.qcow2";
    const RunResult qm = In(q, map);
    const RunResult om = In(o, map);
    ASSERT_EQ(qm.exit_code, 0) << qm.err;
    ASSERT_EQ(om.exit_code, 0) << om.err;
    EXPECT_EQ(JsonDiff(Without(TopLayer(ParseOrDie(qm.out)), {"offset"}),
                       Without(TopLayer(ParseOrDie(om.out)), {"offset"})),
              "")
        << "qemu-img:\n"
        << qm.out << "qcow2-img:\n"
        << om.out;
  }

  // The map entries at depth 0 (start, length, zero cluster or data),
  // merged where adjacent and alike (the two tools may split runs
  // differently).
  static common::Json TopLayer(const common::Json& map) {
    common::Json out = common::Json::Array();
    int64_t start = -1;
    int64_t end = -1;
    bool zero = false;
    bool data = false;
    auto flush = [&] {
      if (start < 0) return;
      common::Json e = common::Json::Object();
      e.Set("start", common::Json::Int(start));
      e.Set("length", common::Json::Int(end - start));
      e.Set("zero", common::Json::Bool(zero));
      e.Set("data", common::Json::Bool(data));
      out.Push(std::move(e));
      start = -1;
    };
    for (const common::Json& e : map.items()) {
      if (e.Find("depth")->AsInt() != 0) continue;
      const int64_t s = e.Find("start")->AsInt();
      const bool d = e.Find("data")->AsBool();
      // "zero" beside "data" is only a hint (QEMU asks the file for holes in
      // an image it takes for preallocated); zero clusters have no data.
      const bool z = !d && e.Find("zero")->AsBool();
      if (start >= 0 && s == end && z == zero && d == data) {
        end = s + e.Find("length")->AsInt();
        continue;
      }
      flush();
      start = s;
      end = s + e.Find("length")->AsInt();
      zero = z;
      data = d;
    }
    flush();
    return out;
  }

  TempDir dir_;
  std::string src_;
};

TEST_P(RebaseCommitTest, Rebase) {
  if (!HaveTool("qemu-img") || !HaveTool("qemu-io"))
    GTEST_SKIP() << "qemu-img or qemu-io not found";
  ASSERT_TRUE(SetUpChain());
  Both("rebase", "-b base.qcow2 -F qcow2");      // onto an image further down its chain
  Both("rebase", "-p -b other.qcow2 -F qcow2");  // onto an unrelated image
  Both("rebase", "-b ''");                       // flatten
  Both("rebase", "-u -b other.qcow2 -F qcow2", true);
  Both("rebase", "-u -b missing.qcow2 -F raw", true, false);  // -u does not open it
  Both("rebase", "-u", true);                                 // no -b: no backing file
  Both("rebase", "-t none -T none -b other.qcow2 -F qcow2");
  Both("rebase", "-t unsafe -U -b base.qcow2 -F qcow2");
  Both("rebase", "-u -t none -b other.qcow2 -F qcow2", true);
}

TEST_P(RebaseCommitTest, Commit) {
  if (!HaveTool("qemu-img") || !HaveTool("qemu-io"))
    GTEST_SKIP() << "qemu-img or qemu-io not found";
  ASSERT_TRUE(SetUpChain());
  Both("commit", "");
  Both("commit", "-d");
  Both("commit", "-p -b base.qcow2");
  Both("commit", "-q -b mid.qcow2");
  Both("commit", "-t none");
  Both("commit", "-t unsafe -b base.qcow2");
  Both("commit", "-r 64M -d");
}

INSTANTIATE_TEST_SUITE_P(
    Kinds, RebaseCommitTest,
    ::testing::Values(ChainKind{"plain_64k", "", 65536, false},
                      ChainKind{"cluster_4k", "-o cluster_size=4k", 4096, false},
                      ChainKind{"compat_0_10", "-o compat=0.10", 65536, false},
                      ChainKind{"compressed_zstd", "-o compression_type=zstd,cluster_size=16k",
                                16384, true},
                      ChainKind{"extended_l2", "-o extended_l2=on", 65536, false}),
    [](const ::testing::TestParamInfo<ChainKind>& info) { return info.param.name; });

// A raw base shorter than its overlay: commit grows it to the overlay's size
// (as qemu-img does) and writes the overlay's data into it; rebase onto it
// reads zeros past its end.
TEST(RebaseCommitRawTest, ShorterRawBase) {
  if (!HaveTool("qemu-img") || !HaveTool("qemu-io")) GTEST_SKIP() << "qemu-img not found";
  TempDir dir;
  const std::string setup = KindSetup("backing_raw_shorter") +
                            " && qemu-io -c 'write -P 0x78 23M 2M' -c 'write -z 30M 1M' "
                            "img.qcow2 >/dev/null && qemu-img create -q -f qcow2 lone.qcow2 32M "
                            "&& qemu-io -c 'write -P 0x79 0 25M' lone.qcow2 >/dev/null";
  ASSERT_EQ(In(dir.path(), setup).exit_code, 0);
  for (const std::string& op : {std::string("commit img.qcow2"), std::string("commit -d img.qcow2"),
                                std::string("rebase -b base.raw -F raw lone.qcow2"),
                                std::string("rebase -b '' img.qcow2")}) {
    SCOPED_TRACE(op);
    const std::string q = dir.File("q");
    const std::string o = dir.File("o");
    const std::string copy =
        "rm -rf q o && mkdir q o && cp base.raw img.qcow2 lone.qcow2 q && "
        "cp base.raw img.qcow2 lone.qcow2 o";
    ASSERT_EQ(In(dir.path(), copy).exit_code, 0);
    const RunResult theirs = In(q, "qemu-img " + op);
    ASSERT_EQ(theirs.exit_code, 0) << theirs.err;
    const RunResult ours = In(o, Ours() + " " + op);
    ASSERT_EQ(ours.exit_code, 0) << ours.err;
    EXPECT_EQ(ReadFile(q + "/base.raw"), ReadFile(o + "/base.raw"));  // raw: byte for byte
    for (const char* f : {"img.qcow2", "lone.qcow2"}) {
      SCOPED_TRACE(f);
      const RunResult compare =
          RunCommand("qemu-img compare " + Quote(q + "/" + f) + " " + Quote(o + "/" + f));
      EXPECT_EQ(compare.exit_code, 0) << compare.out << compare.err;
      const RunResult check = RunCommand("qemu-img check " + Quote(o + "/" + f));
      EXPECT_EQ(check.exit_code, 0) << check.out << check.err;
    }
  }
}

// Bad input: one line on stderr, nothing on stdout, exit 1, and no file of
// the chain changed.
TEST(RebaseCommitBadInputTest, OneLineExitOneNothingChanged) {
  if (!HaveTool("qemu-img") || !HaveTool("qemu-io")) GTEST_SKIP() << "qemu-img not found";
  TempDir dir;
  const std::string setup =
      "qemu-img create -q -f qcow2 base.qcow2 4M && qemu-io -c 'write -P 1 0 1M' base.qcow2 "
      ">/dev/null && qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 && "
      "qemu-io -c 'write -P 2 512k 1M' -c 'write -z 2M 64k' top.qcow2 >/dev/null && "
      "qemu-img create -q -f qcow2 -o cluster_size=512 small.qcow2 1M";
  ASSERT_EQ(In(dir.path(), setup).exit_code, 0);
  const std::string long_name(600, 'n');
  const std::vector<std::string> cases = {
      "rebase -b missing.qcow2 -F qcow2 top.qcow2",  // safe mode: the target must exist
      "rebase -b base.qcow2 top.qcow2",              // no -F
      "rebase top.qcow2",                            // neither -b nor -u
      "rebase -f vmdk -u top.qcow2",                 // unknown format
      "rebase -b base.qcow2 -F vmdk top.qcow2",
      "rebase -f raw -b base.qcow2 -F qcow2 top.qcow2",       // raw has no backing file
      "rebase -u -b " + long_name + " -F qcow2 small.qcow2",  // does not fit the header
      "rebase -u -b base.qcow2 -F qcow2 top.qcow2 base.qcow2",
      "rebase -c -u top.qcow2",  // not implemented, so unknown
      "commit base.qcow2",       // no backing file
      "commit -b missing.qcow2 top.qcow2",
      "commit -f raw top.qcow2",
      "commit -f vmdk top.qcow2",
      "commit -t bogus top.qcow2",
      "commit -t writethrough top.qcow2",  // qemu-img's, but not implemented
      "commit -t directsync top.qcow2",
      "commit -r x top.qcow2",
      "commit -r -1 top.qcow2",
      "rebase -t bogus -b base.qcow2 -F qcow2 top.qcow2",
      "rebase -T bogus -b base.qcow2 -F qcow2 top.qcow2",
      "rebase -u -t writethrough top.qcow2",
      "rebase -u -T directsync top.qcow2",
      "commit missing.qcow2",
  };
  const std::string before_top = ReadFile(dir.File("top.qcow2"));
  const std::string before_base = ReadFile(dir.File("base.qcow2"));
  const std::string before_small = ReadFile(dir.File("small.qcow2"));
  ASSERT_FALSE(before_top.empty());
  for (const std::string& c : cases) {
    SCOPED_TRACE(c);
    const RunResult r = In(dir.path(), Ours() + " " + c);
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(r.out, "");
    EXPECT_EQ(r.err.rfind("qcow2-img: ", 0), 0u) << r.err;
    EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << r.err;
    EXPECT_EQ(ReadFile(dir.File("top.qcow2")), before_top);
    EXPECT_EQ(ReadFile(dir.File("base.qcow2")), before_base);
    EXPECT_EQ(ReadFile(dir.File("small.qcow2")), before_small);
  }
}

// Both verbs take the writer's lock: while QEMU holds the image (or, for
// commit, the base) open for writing they refuse and change nothing.
TEST(RebaseCommitBadInputTest, RefusedWhileQemuWrites) {
  if (!HaveTool("qemu-img") || !HaveTool("qemu-io")) GTEST_SKIP() << "qemu-img not found";
  TempDir dir;
  ASSERT_EQ(In(dir.path(),
               "qemu-img create -q -f qcow2 base.qcow2 4M && qemu-img create -q -f qcow2 -b "
               "base.qcow2 -F qcow2 top.qcow2 && qemu-io -c 'write -P 2 0 64k' top.qcow2 "
               ">/dev/null")
                .exit_code,
            0);
  const std::string before_top = ReadFile(dir.File("top.qcow2"));
  const std::string before_base = ReadFile(dir.File("base.qcow2"));
  for (const auto& [held, command] :
       std::vector<std::pair<std::string, std::string>>{{"top.qcow2", "rebase -b '' top.qcow2"},
                                                        {"top.qcow2", "commit top.qcow2"},
                                                        {"base.qcow2", "commit top.qcow2"}}) {
    SCOPED_TRACE(held + ": " + command);
    // qemu-io keeps the image open (and locked for writing) while it sleeps.
    const RunResult r = In(dir.path(), "{ qemu-io -c 'sleep 3000' " + held + " & } ; sleep 1; " +
                                           Ours() + " " + command + "; rc=$?; wait; exit $rc");
    EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
    EXPECT_NE(r.err.find("lock"), std::string::npos) << r.err;
    EXPECT_EQ(ReadFile(dir.File("top.qcow2")), before_top);
    EXPECT_EQ(ReadFile(dir.File("base.qcow2")), before_base);
  }
}

}  // namespace
}  // namespace uq::interop
