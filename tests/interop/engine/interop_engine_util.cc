// The EngineInterop tests' helpers (interop_engine_util.h): running a shell
// command and describing its result, reading a file, the run's seed, and the
// random command stream in qemu-io syntax with its flat model of the guest
// contents (StreamGenerator).
#include "tests/interop/engine/interop_engine_util.h"

#include <sys/wait.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace uq::interop::engine_interop {

RunResult Sh(const std::string& dir, const std::string& command) {
  std::string full = absl::StrCat("cd '", dir, "' && { ", command, " ; } 2>&1");
  RunResult result;
  FILE* p = popen(full.c_str(), "r");
  if (p == nullptr) return result;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) result.output.append(buf, n);
  int status = pclose(p);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

std::string Describe(const std::string& command, const RunResult& r) {
  std::string out = r.output.size() > 4000 ? r.output.substr(0, 4000) + "..." : r.output;
  return absl::StrCat("$ ", command, "\nexit ", r.exit_code, "\n", out);
}

std::vector<uint8_t> ReadWholeFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

uint64_t BaseSeed() {
  if (const char* s = std::getenv("UQ_INTEROP_SEED")) return std::strtoull(s, nullptr, 0);
  return std::random_device{}();
}

std::vector<std::string> StreamGenerator::Generate(int count) {
  std::vector<std::string> out;
  for (int i = 0; i < count; ++i) out.push_back(Next());
  // End with a full verification sweep of a few random ranges.
  for (int i = 0; i < 6; ++i) out.push_back(Read());
  return out;
}

std::pair<uint64_t, uint64_t> StreamGenerator::Range() {
  uint64_t size = model_.size();
  uint64_t max_len = std::min<uint64_t>(size, std::max<uint64_t>(4 * cluster_bytes_, 64 * 1024));
  max_len = std::min<uint64_t>(max_len, 1 << 20);
  uint64_t len = Uniform(1, max_len / kSector) * kSector;
  uint64_t offset;
  if (Uniform(0, 2) == 0) {
    uint64_t cluster = Uniform(0, size / cluster_bytes_ - 1) * cluster_bytes_;
    int64_t delta = static_cast<int64_t>(Uniform(0, 8)) - 4;
    offset = std::clamp<int64_t>(static_cast<int64_t>(cluster) + delta * kSector, 0,
                                 static_cast<int64_t>(size - kSector));
  } else {
    offset = Uniform(0, size / kSector - 1) * kSector;
  }
  len = std::min(len, size - offset);
  // One request in eight is not sector aligned (both tools read-modify-write
  // the partial sectors).
  if (Uniform(0, 7) == 0) {
    uint64_t head = std::min<uint64_t>(Uniform(0, kSector - 1), len - 1);
    offset += head;
    len -= head;
    len -= std::min<uint64_t>(Uniform(0, kSector - 1), len - 1);
  }
  return {offset, len};
}

std::string StreamGenerator::Read() {
  // Half the reads target the most recent write so they are often uniform.
  uint64_t offset, len;
  if (last_len_ != 0 && Uniform(0, 1) == 0) {
    offset = last_offset_ + Uniform(0, last_len_ - 1);
    len = Uniform(1, last_offset_ + last_len_ - offset);
  } else {
    std::tie(offset, len) = Range();
  }
  uint8_t first = model_[offset];
  bool uniform = std::all_of(model_.begin() + offset, model_.begin() + offset + len,
                             [&](uint8_t b) { return b == first; });
  if (uniform) return absl::StrFormat("read -q -P 0x%02x %d %d", first, offset, len);
  return absl::StrFormat("read -q %d %d", offset, len);
}

std::string StreamGenerator::Next() {
  uint64_t kind = Uniform(0, 99);
  if (kind < 40) {
    auto [offset, len] = Range();
    uint8_t pattern = static_cast<uint8_t>(Uniform(1, 255));
    Fill(offset, len, pattern);
    last_offset_ = offset;
    last_len_ = len;
    return absl::StrFormat("write -q -P 0x%02x %d %d", pattern, offset, len);
  }
  if (kind < 55) {
    auto [offset, len] = Range();
    Fill(offset, len, 0);
    bool unmap = Uniform(0, 1) == 1;
    last_offset_ = offset;
    last_len_ = len;
    return absl::StrFormat("write -q -z%s %d %d", unmap ? " -u" : "", offset, len);
  }
  if (kind < 65) {
    // Discards on whole clusters: QEMU ignores partial clusters.
    uint64_t clusters = model_.size() / cluster_bytes_;
    uint64_t first = Uniform(0, clusters - 1);
    uint64_t count = Uniform(1, std::min<uint64_t>(4, clusters - first));
    Fill(first * cluster_bytes_, count * cluster_bytes_, 0);
    return absl::StrFormat("discard -q %d %d", first * cluster_bytes_, count * cluster_bytes_);
  }
  if (kind < 72) return "flush";
  return Read();
}

std::string CommandArgs(const std::vector<std::string>& commands) {
  std::vector<std::string> quoted;
  for (const std::string& c : commands) quoted.push_back(absl::StrCat("-c '", c, "'"));
  return absl::StrJoin(quoted, " ");
}

}  // namespace uq::interop::engine_interop
