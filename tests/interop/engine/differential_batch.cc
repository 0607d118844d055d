// Running a batch of differential streams (Differential::RunBatch): the
// template images made by qemu-img once per geometry, a copy per stream, the
// qemu-io scripts that prepare the start images, apply the streams and sweep
// our results, our `qcow2-img io` and `qemu-img check` per stream, and the
// reasons each failing stream failed, with the command line that reruns it.
// Also the fixture's work directory (SetUp, TearDown, MakeWorkDir).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "tests/interop/engine/differential_util.h"
#include "tests/interop/interop_util.h"

namespace uq::interop::differential {

namespace fs = std::filesystem;

const std::string kOurs = UQ_QCOW2_IMG;

std::string BackingFormat(Backing b) { return b == Backing::kQcow2 ? "qcow2" : "raw"; }

std::string QemuIoOpen(const std::string& path, const std::string& driver, bool read_only) {
  return absl::StrCat("open ", read_only ? "-r " : "", "-o driver=", driver, " ", path);
}

std::string OurIoArgs(const std::vector<std::string>& a, const std::vector<std::string>& b) {
  std::string out;
  for (const auto* list : {&a, &b}) {
    for (const std::string& c : *list) absl::StrAppend(&out, " -c ", Quote(c));
  }
  return out;
}

std::string MakeWorkDir() {
  std::string base = "/dev/shm";
  if (access(base.c_str(), W_OK) != 0) {
    const char* t = std::getenv("TMPDIR");
    base = t != nullptr && *t != '\0' ? t : "/tmp";
  }
  std::string templ = base + "/uq-differential-XXXXXX";
  return mkdtemp(templ.data()) != nullptr ? templ : "";
}

void Differential::SetUp() {
  if (!HaveTool("qemu-img") || !HaveTool("qemu-io")) {
    GTEST_SKIP() << "qemu-img / qemu-io not installed";
  }
  root_ = MakeWorkDir();
  ASSERT_FALSE(root_.empty());
}

void Differential::TearDown() {
  if (HasFailure()) {
    std::cerr << "kept work directory " << root_ << "\n";
  } else if (!root_.empty()) {
    fs::remove_all(root_);
  }
}

std::string Differential::Template(const Stream& s) {
  const Variant& v = GetParam();
  const std::string key = absl::StrCat(s.size_bytes, "-", s.backing_bytes);
  auto it = templates_.find(key);
  if (it != templates_.end()) return it->second;
  const std::string dir = absl::StrCat(root_, "/template-", key);
  fs::create_directories(dir);
  std::string opts = absl::StrCat("cluster_size=", uint64_t{1} << v.cluster_bits,
                                  ",compat=", v.version == 2 ? "0.10" : "1.1");
  if (v.extended_l2) absl::StrAppend(&opts, ",extended_l2=on");
  std::string cmd = absl::StrCat("cd ", Quote(dir), " && ");
  if (s.backing_bytes != 0) {
    absl::StrAppend(&cmd, "qemu-img create -q -f ", BackingFormat(v.backing), " base.img ",
                    s.backing_bytes, " && ");
    absl::StrAppend(&opts, " -b base.img -F ", BackingFormat(v.backing));
  }
  absl::StrAppend(&cmd, "qemu-img create -q -f qcow2 -o ", opts, " img.qcow2 ", s.size_bytes);
  RunResult r = RunCommand(cmd);
  EXPECT_EQ(r.exit_code, 0) << cmd << "\n" << r.out << r.err;
  templates_[key] = dir;
  return dir;
}

void Differential::CopyImages(const std::string& from, const std::string& to) {
  fs::create_directories(to);
  for (const auto& e : fs::directory_iterator(from)) {
    fs::copy_file(e.path(), to + "/" + e.path().filename().string(),
                  fs::copy_options::overwrite_existing);
  }
}

std::string Differential::QemuIoScript(Script kind, const std::vector<Stream>& streams,
                                       const std::vector<std::string>& dirs) const {
  const Variant& v = GetParam();
  std::vector<std::string> lines;
  for (size_t i = 0; i < streams.size(); ++i) {
    const Stream& s = streams[i];
    const std::string& d = dirs[i];
    switch (kind) {
      case Script::kSetup:
        if (s.backing_bytes != 0 && !s.base_setup.empty()) {
          lines.push_back(QemuIoOpen(d + "/start/base.img", BackingFormat(v.backing), false));
          lines.insert(lines.end(), s.base_setup.begin(), s.base_setup.end());
          lines.push_back("close");
        }
        if (s.setup.empty()) break;
        lines.push_back(QemuIoOpen(d + "/start/img.qcow2", "qcow2", false));
        lines.insert(lines.end(), s.setup.begin(), s.setup.end());
        lines.push_back("close");
        break;
      case Script::kApply:
        lines.push_back(QemuIoOpen(d + "/theirs/img.qcow2", "qcow2", false));
        lines.insert(lines.end(), s.ops.begin(), s.ops.end());
        lines.insert(lines.end(), s.sweep.begin(), s.sweep.end());
        lines.push_back("close");
        break;
      case Script::kSweepOurs:
        lines.push_back(QemuIoOpen(d + "/ours/img.qcow2", "qcow2", true));
        lines.insert(lines.end(), s.sweep.begin(), s.sweep.end());
        lines.push_back("close");
        break;
    }
  }
  return absl::StrJoin(lines, "\n") + "\n";
}

bool Differential::RunQemuIo(const std::string& script, const std::string& name,
                             std::string* output) {
  const std::string path = absl::StrCat(root_, "/", name, ".qemu-io");
  WriteFile(path, script);
  RunResult r = RunCommand(absl::StrCat("qemu-io < ", Quote(path)));
  *output = absl::StrReplaceAll(r.out, {{"qemu-io> ", ""}}) + r.err;
  return r.exit_code == 0 && r.out.find("failed") == std::string::npos &&
         r.err.find("qemu-io:") == std::string::npos;
}

std::string Differential::Repro(const Stream& s, uint64_t run_seed, uint64_t index) const {
  const Variant& v = GetParam();
  return absl::StrCat("variant ", v.name, ", stream seed ", s.seed, ", disk ", s.size_bytes,
                      " bytes",
                      s.backing_bytes ? absl::StrCat(", ", BackingFormat(v.backing),
                                                     " backing file of ", s.backing_bytes, " bytes")
                                      : "",
                      "\n  rerun: UQ_DIFF_SEED=", run_seed, " UQ_DIFF_FIRST=", index,
                      " UQ_DIFF_STREAMS=1 interop_differential_test --gtest_filter='*", v.name,
                      "*'", "\n  backing setup: ", absl::StrJoin(s.base_setup, "; "),
                      "\n  image setup (qemu-io): ", absl::StrJoin(s.setup, "; "),
                      "\n  stream: ", absl::StrJoin(s.ops, "; "), "\n");
}

void Differential::RunBatch(const std::vector<Stream>& streams, uint64_t run_seed,
                            uint64_t first_index, int batch) {
  std::vector<std::string> dirs;
  for (size_t i = 0; i < streams.size(); ++i) {
    const std::string d = absl::StrCat(root_, "/b", batch, "/s", first_index + i);
    CopyImages(Template(streams[i]), d + "/start");
    dirs.push_back(d);
  }
  std::string out;
  ASSERT_TRUE(RunQemuIo(QemuIoScript(Script::kSetup, streams, dirs), "setup", &out))
      << "qemu-io could not prepare the start images:\n"
      << out.substr(0, 4000);
  for (const std::string& d : dirs) {
    CopyImages(d + "/start", d + "/theirs");
    CopyImages(d + "/start", d + "/ours");
  }
  // 1. QEMU applies the streams and confirms the model.
  bool theirs_ok = RunQemuIo(QemuIoScript(Script::kApply, streams, dirs), "apply", &out);
  // 2. Ours, one process per stream.
  std::string script;
  for (size_t i = 0; i < streams.size(); ++i) {
    absl::StrAppend(&script, "cd ", Quote(dirs[i] + "/ours"), " && ", kOurs, " io",
                    OurIoArgs(streams[i].ops, streams[i].sweep), " img.qcow2 >out 2>&1 || echo ", i,
                    "\n");
  }
  WriteFile(root_ + "/ours.sh", script);
  RunResult ours = RunCommand(absl::StrCat("sh ", Quote(root_ + "/ours.sh")));
  // 3. QEMU reads our results.
  bool sweep_ok = RunQemuIo(QemuIoScript(Script::kSweepOurs, streams, dirs), "sweep-ours", &out);
  // 4. qemu-img check of ours.
  script.clear();
  for (size_t i = 0; i < streams.size(); ++i) {
    absl::StrAppend(&script, "qemu-img check -q ", Quote(dirs[i] + "/ours/img.qcow2"), " >",
                    Quote(dirs[i] + "/check"), " 2>&1 || echo ", i, "\n");
  }
  WriteFile(root_ + "/check.sh", script);
  RunResult checks = RunCommand(absl::StrCat("sh ", Quote(root_ + "/check.sh")));

  // Why each stream failed ("" = it passed).
  std::vector<std::string> why(streams.size());
  auto mark = [&](const std::string& list, const char* what) {
    std::istringstream in(list);
    size_t i;
    while (in >> i) {
      if (i < why.size()) absl::StrAppend(&why[i], what);
    }
  };
  mark(ours.out, "qcow2-img io failed (a read -P of the model, or an I/O error); ");
  mark(checks.out, "qemu-img check of our image failed; ");
  for (size_t i = 0; i < streams.size(); ++i) {
    if (!fs::exists(dirs[i] + "/ours/out") || !fs::exists(dirs[i] + "/check")) {
      absl::StrAppend(&why[i], "the stream or its check did not run; ");
    }
  }
  if (!theirs_ok || !sweep_ok) {
    // Name the streams: rerun the qemu-io steps one stream at a time.
    for (size_t i = 0; i < streams.size(); ++i) {
      const std::vector<Stream> one{streams[i]};
      const std::vector<std::string> dir{dirs[i]};
      std::string o;
      if (!theirs_ok) {
        CopyImages(dirs[i] + "/start", dirs[i] + "/theirs");
        if (!RunQemuIo(QemuIoScript(Script::kApply, one, dir), "apply-one", &o)) {
          absl::StrAppend(&why[i],
                          "qemu-io disagrees with the test's model (a test bug, or a "
                          "QEMU behaviour to model):\n",
                          o.substr(0, 2000));
        }
      }
      if (!sweep_ok && !RunQemuIo(QemuIoScript(Script::kSweepOurs, one, dir), "sweep-one", &o)) {
        absl::StrAppend(&why[i], "QEMU reads other contents from our image:\n", o.substr(0, 2000));
      }
    }
  }
  for (size_t i = 0; i < streams.size(); ++i) {
    if (why[i].empty()) continue;
    ++failures_;
    ADD_FAILURE() << why[i] << "\nqcow2-img io said:\n"
                  << ReadFile(dirs[i] + "/ours/out").substr(0, 2000) << "qemu-img check said:\n"
                  << ReadFile(dirs[i] + "/check").substr(0, 2000)
                  << Repro(streams[i], run_seed, first_index + i);
  }
  if (failures_ == 0) fs::remove_all(absl::StrCat(root_, "/b", batch));
}

}  // namespace uq::interop::differential
