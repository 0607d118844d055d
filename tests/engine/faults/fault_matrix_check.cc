// Checking the image a fault matrix run leaves (FaultMatrix::CheckImageBytes):
// not marked corrupt, zero corruptions by CheckImage (a dirty image after the
// engine repaired it), optionally `qemu-img check`, and every tracked sector
// reads back a value it may hold.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "format/header.h"
#include "src/engine/check.h"
#include "src/io/mem_file.h"
#include "src/io/run_sync.h"
#include "tests/engine/faults/fault_matrix_util.h"
#include "tests/engine/test_util.h"

namespace uq::engine::testing {
namespace {

bool QemuImgAvailable() {
  static const bool available = std::system("command -v qemu-img >/dev/null 2>&1") == 0;
  return available;
}

bool WriteWholeFile(const std::string& path, const std::vector<std::byte>& bytes) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return false;
  bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  return std::fclose(f) == 0 && ok;
}

// Runs `qemu-img check` on `image` (with its raw backing file beside it if
// given); returns the exit status, -1 if it could not run.
int QemuImgCheck(const std::vector<std::byte>& image, const std::vector<std::byte>* backing,
                 std::string* output) {
  char dir_template[] = "/tmp/uq-fault-matrix-XXXXXX";
  if (mkdtemp(dir_template) == nullptr) return -1;
  std::string dir = dir_template;
  std::string path = dir + "/disk.qcow2";
  bool ok = WriteWholeFile(path, image);
  if (ok && backing != nullptr) ok = WriteWholeFile(dir + "/" + kBackingName, *backing);
  int code = -1;
  if (ok) {
    std::string cmd = absl::StrCat("qemu-img check -f qcow2 ", path, " 2>&1");
    FILE* p = popen(cmd.c_str(), "r");
    if (p != nullptr) {
      char buf[512];
      while (fgets(buf, sizeof(buf), p) != nullptr) {
        if (output->size() < 4000) output->append(buf);
      }
      int status = pclose(p);
      code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }
  }
  std::system(absl::StrCat("rm -rf ", dir).c_str());
  return code;
}

}  // namespace

void FaultMatrix::CheckImageBytes(const std::vector<std::byte>& bytes,
                                  const std::map<uint64_t, Sector>& model, const std::string& what,
                                  bool qemu_check, Totals* totals) {
  auto h = format::DecodeHeader(bytes, format::DecodeLimits{bytes.size()});
  ASSERT_TRUE(h.ok()) << what << ": header after the run: " << h.status();
  EXPECT_EQ(h->incompatible_features & format::kIncompatCorrupt, 0u)
      << what << ": the engine marked the image corrupt after an I/O error";
  io::MemFile file(io::MemFile::Mode::kImmediate, bytes);
  if (h->incompatible_features & format::kIncompatDirty) {
    // Stale refcounts are allowed while dirty: the open repairs them.
    ++totals->dirty_repaired;
    auto d = testing::OpenSync(&file, Options(false));
    ASSERT_TRUE(d.ok()) << what << ": reopening the dirty image: " << d.status();
    absl::Status s = io::RunSync(nullptr, (*d)->Close());
    ASSERT_TRUE(s.ok()) << what << ": closing the repaired image: " << s;
  }
  auto check = io::RunSync(nullptr, CheckImage(file));
  ASSERT_TRUE(check.ok()) << what << ": " << check.status();
  std::string msgs;
  for (const std::string& m : check->messages) msgs += "\n  " + m;
  EXPECT_EQ(check->corruptions, 0u) << what << ": CheckImage corruptions" << msgs;
  if (qemu_check && QemuImgAvailable()) {
    std::string output;
    int code = QemuImgCheck(file.data(), kind_.backing ? &backing_bytes_ : nullptr, &output);
    ++totals->qemu_checks;
    EXPECT_TRUE(code == 0 || code == 3) << what << ": qemu-img check exit " << code << "\n"
                                        << output;
  }

  // Read back every tracked sector.
  auto d = testing::OpenSync(&file, Options(true));
  ASSERT_TRUE(d.ok()) << what << ": reopening read-only: " << d.status();
  std::vector<std::byte> buf;
  int mismatches = 0;
  const uint64_t c = cluster_bytes();
  for (auto it = model.begin(); it != model.end();) {
    // One cluster at a time (tracked sectors come in whole clusters).
    const uint64_t first = it->first;
    const uint64_t n = c / kSector;
    buf.assign(c, std::byte{0xee});
    int r = testing::ReadSync(**d, first * kSector, buf);
    ASSERT_EQ(r, 0) << what << ": read-back at sector " << first;
    for (uint64_t k = 0; k < n && it != model.end(); ++k, ++it) {
      ASSERT_EQ(it->first, first + k);
      const uint8_t got = static_cast<uint8_t>(buf[k * kSector]);
      bool uniform = std::all_of(buf.begin() + static_cast<ptrdiff_t>(k * kSector),
                                 buf.begin() + static_cast<ptrdiff_t>((k + 1) * kSector),
                                 [&](std::byte x) { return x == buf[k * kSector]; });
      ++totals->sectors_verified;
      if ((!uniform || !it->second.on_disk.test(got)) && ++mismatches <= 3) {
        std::string allowed;
        for (int v = 0; v < 256; ++v) {
          if (it->second.on_disk.test(v)) absl::StrAppend(&allowed, allowed.empty() ? "" : ",", v);
        }
        ADD_FAILURE() << what << ": after reopen sector " << it->first << " (offset "
                      << it->first * kSector << ") reads " << int(got)
                      << (uniform ? "" : " (not uniform)") << ", may hold only {" << allowed << "}";
      }
    }
  }
  absl::Status s = io::RunSync(nullptr, (*d)->Close());
  EXPECT_TRUE(s.ok()) << s;
}

}  // namespace uq::engine::testing
