// The power-loss test's configurations (RandomConfig, Describe), its
// QEMU-made start images (GetQemuStart) and `qemu-img check` on a crashed
// image (QemuImgCheck).
#include "tests/engine/power_loss/power_loss_util.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "format/create.h"

namespace uq::engine::testing {

std::string Describe(const Config& c) {
  return absl::StrCat("start=", StartName(c.start), " cluster_bits=", c.create.cluster_bits,
                      " refcount_order=", c.create.refcount_order,
                      " extended_l2=", c.create.extended_l2,
                      " lazy_refcounts=", c.create.lazy_refcounts, " version=", c.create.version,
                      " size=", c.create.size_bytes, " l2_cache=", c.l2_cache_bytes,
                      " depth=", c.max_in_flight, " steps=", c.steps_before_crash,
                      " crash=", c.random_subset ? "random-subset" : "drop-unflushed");
}

Config RandomConfig(std::mt19937_64& rng) {
  auto pick = [&](uint64_t n) { return rng() % n; };
  Config c;
  static constexpr uint32_t kClusterBits[] = {9, 12, 14, 16};
  c.create.cluster_bits = kClusterBits[pick(4)];
  c.create.version = pick(6) == 0 ? 2 : 3;
  if (c.create.version == 3) {
    c.create.lazy_refcounts = pick(2) == 0;
    c.create.extended_l2 = c.create.cluster_bits >= 14 && pick(3) == 0;
    c.create.refcount_order = static_cast<uint32_t>(pick(7));
  }
  c.create.size_bytes = (1 + pick(4)) << 20;  // 1..4 MiB
  static constexpr uint64_t kL2Cache[] = {0, 1, 16384};
  c.l2_cache_bytes = kL2Cache[pick(3)];
  c.max_in_flight = 1 + static_cast<int>(pick(8));
  c.steps_before_crash = 1 + static_cast<int>(pick(400));
  c.random_subset = pick(2) == 0;
  // About a third of the seeds start from a QEMU-made image (2 MiB, 4 KiB
  // clusters; the image decides lazy refcounts).
  uint64_t start = pick(9);
  if (start < 3) {
    c.start = static_cast<Start>(start + 1);
    c.create = format::CreateOptions{};
    c.create.cluster_bits = 12;
    c.create.size_bytes = 2 << 20;
    c.create.lazy_refcounts = c.start == Start::kQemuLazyDirty;
  }
  return c;
}

namespace {

std::string ReadFileBytes(const std::string& path, std::vector<std::byte>* out) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return absl::StrCat("cannot open ", path);
  std::vector<std::byte> data;
  std::byte buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) data.insert(data.end(), buf, buf + n);
  std::fclose(f);
  *out = std::move(data);
  return "";
}

}  // namespace

std::string GetQemuStart(Start start, const QemuStart** out) {
  static std::map<Start, QemuStart> cache;
  if (auto it = cache.find(start); it != cache.end()) {
    *out = &it->second;
    return "";
  }
  char dir_template[] = "/tmp/uq-power-start-XXXXXX";
  if (mkdtemp(dir_template) == nullptr) return "mkdtemp failed";
  std::string dir = dir_template;
  std::string script;
  switch (start) {
    case Start::kQemuSnapshots:
      script =
          "qemu-img create -q -f qcow2 -o cluster_size=4k img.qcow2 2M && "
          "qemu-io -c 'write -P 0x11 0 512k' -c 'write -P 0x12 1M 256k' img.qcow2 && "
          "qemu-img snapshot -c a img.qcow2 && "
          "qemu-io -c 'write -P 0x13 64k 64k' -c 'write -z 1088k 32k' img.qcow2 && "
          "qemu-img snapshot -c b img.qcow2 && qemu-io -c 'write -P 0x14 200k 8k' img.qcow2";
      break;
    case Start::kQemuCompressed:
      script =
          "qemu-img create -q -f raw src.raw 2M && "
          "qemu-io -f raw -c 'write -P 0x31 0 700k' -c 'write -P 0x32 1M 512k' "
          "-c 'write -P 0x33 1700k 12k' src.raw && "
          "qemu-img convert -c -O qcow2 -o cluster_size=4k,compression_type=zstd src.raw "
          "img.qcow2";
      break;
    case Start::kQemuLazyDirty:
      script =
          "qemu-img create -q -f qcow2 -o cluster_size=4k,lazy_refcounts=on img.qcow2 2M && "
          "{ qemu-io -c 'write -P 0x41 0 300k' -c flush -c 'write -P 0x42 1M 100k' -c abort "
          "img.qcow2 || true; }";
      break;
    case Start::kFresh:
      return "not a QEMU start";
  }
  std::string cmd = absl::StrCat("cd ", dir, " && { ", script,
                                 " ; } >/dev/null 2>&1 && qemu-img convert -U -O raw img.qcow2 "
                                 "contents.raw");
  int rc = std::system(cmd.c_str());
  QemuStart made;
  std::vector<std::byte> raw;
  std::string err = rc == 0 ? ReadFileBytes(dir + "/img.qcow2", &made.image)
                            : absl::StrCat("making the image failed: ", cmd);
  if (err.empty()) err = ReadFileBytes(dir + "/contents.raw", &raw);
  std::system(absl::StrCat("rm -rf ", dir).c_str());
  if (!err.empty()) return err;
  if (raw.size() != (2u << 20)) return absl::StrCat("contents are ", raw.size(), " bytes");
  for (size_t s = 0; s < raw.size() / kSector; ++s) {
    std::byte v = raw[s * kSector];
    for (size_t b = 1; b < kSector; ++b) {
      if (raw[s * kSector + b] != v) return absl::StrCat("sector ", s, " is not uniform");
    }
    made.sectors.push_back(static_cast<uint8_t>(v));
  }
  *out = &cache.emplace(start, std::move(made)).first->second;
  return "";
}

int QemuImgCheck(const std::vector<std::byte>& bytes, std::string* output) {
  char path[] = "/tmp/uq-power-loss-XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0) return -1;
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = write(fd, bytes.data() + done, bytes.size() - done);
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  close(fd);
  std::string cmd = absl::StrCat("qemu-img check -f qcow2 ", path, " 2>&1");
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) {
    unlink(path);
    return -1;
  }
  char buf[512];
  while (fgets(buf, sizeof(buf), p) != nullptr) {
    if (output->size() < 4000) output->append(buf);
  }
  int status = pclose(p);
  unlink(path);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

bool QemuImgAvailable() {
  static const bool available = std::system("command -v qemu-img >/dev/null 2>&1") == 0;
  return available;
}

}  // namespace uq::engine::testing
