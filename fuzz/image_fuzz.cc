// Fuzz entry for whole images: the input bytes are a qcow2 file held in a
// MemFile, opened writable through the engine's open (OpenImage, as the cli
// does), then checked (CheckImage), read through, written a little, flushed and
// closed. Files the image names (backing file, external data file) come from an
// in-memory opener: a fresh MemFile of pattern bytes per open; no name in a
// fuzzed header reaches a host path (the host-path policy, which stats the
// name, is off for the same reason).
//
// Properties checked beyond "no crash / no sanitizer report":
//  - a failed open is an error status with a message;
//  - if the image opened writable and the check right after the open found no
//    corruption and no check error (so no two guest clusters share a host
//    cluster and no data overlaps metadata), then after every successful write,
//    write-zeroes or discard each cluster the target has seen reads as the
//    model says: written bytes as written, zeroed bytes as zero, the rest of a
//    touched cluster unchanged (COW), whole discarded clusters re-learned;
//  - for such an image, after a successful flush and close the check finds no
//    corruption, and a read-only reopen reads the same modelled clusters.
//
// Caps (each execution stays in the milliseconds): inputs over kMaxInputBytes
// are skipped; "read every cluster" reads at most kMaxReadClusters clusters
// and kMaxReadBytes bytes, half from the start of the disk and half from its
// end (a crafted header may claim a disk of 2^61 bytes); the image file may
// grow to kMaxFileBytes (MemFile answers -EFBIG past it); at most kMaxOps
// requests of at most kMaxOpBytes each; the model keeps at most
// kMaxModelBytes of clusters (2 MiB clusters: the first two touched).
//
// The requests are decoded from the last bytes of the input (ByteReader over
// the reversed tail), so mutations of the image body and of the op list are
// both cheap for the fuzzer. Shared by the libFuzzer binary and the corpus
// replay test.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "fuzz/fuzz_util.h"
#include "src/engine/check.h"
#include "src/engine/image.h"
#include "src/io/file_wrapper.h"
#include "src/io/mem_file.h"
#include "src/io/read_only_file.h"

namespace uq::fuzz {
namespace {

constexpr size_t kMaxInputBytes = 1 << 20;
constexpr uint64_t kMaxReadClusters = 4096;
constexpr uint64_t kMaxReadBytes = 8 << 20;
constexpr uint64_t kMaxFileBytes = 32 << 20;
constexpr uint64_t kMaxModelBytes = 4 << 20;
constexpr int kMaxOps = 6;
constexpr uint64_t kMaxOpBytes = 64 << 10;
constexpr uint64_t kSector = 512;

std::vector<std::byte> Pattern(size_t bytes, uint8_t seed) {
  std::vector<std::byte> v(bytes);
  for (size_t i = 0; i < bytes; ++i) v[i] = std::byte(static_cast<uint8_t>(seed + i * 7 + i / 512));
  return v;
}

// The files an image names: each name gets a 64 KiB MemFile of pattern bytes
// (never the qcow2 magic: the first byte is 1) on its first open, the same
// file on later opens (the data file must keep what a write put there), and
// only a read-only view unless opened writable.
class NamedFiles {
 public:
  engine::FileOpener Opener() {
    return [this](const std::string& path,
                  bool writable) -> absl::StatusOr<std::unique_ptr<io::BlockFile>> {
      std::unique_ptr<io::MemFile>& f = files_[path];
      if (!f) {
        f = std::make_unique<io::MemFile>(io::MemFile::Mode::kImmediate, Pattern(64 << 10, 1));
        f->set_max_size_bytes(kMaxFileBytes);
      }
      if (writable)
        return std::unique_ptr<io::BlockFile>(std::make_unique<io::FileWrapper>(f.get()));
      return std::unique_ptr<io::BlockFile>(std::make_unique<io::ReadOnlyFile>(f.get()));
    };
  }

 private:
  std::map<std::string, std::unique_ptr<io::MemFile>> files_;
};

absl::StatusOr<std::unique_ptr<engine::Device>> Open(io::MemFile& file, NamedFiles& named,
                                                     bool read_only) {
  engine::OpenOptions o;
  o.format = engine::ImageFormat::kQcow2;
  o.read_only = read_only;
  o.path = "/fuzz/image.qcow2";
  o.opener = named.Opener();
  o.max_backing_depth = 4;
  auto opened = io::RunSync(
      nullptr, engine::OpenImage(std::make_unique<io::FileWrapper>(&file), std::move(o)));
  if (!opened.ok()) UQ_FUZZ_CHECK(!opened.status().message().empty());
  return opened;
}

bool CheckClean(io::MemFile& file) {
  auto r = io::RunSync(nullptr, engine::CheckImage(file));
  return r.ok() && r->corruptions == 0 && r->check_errors == 0;
}

// The clusters the target has read, as they must read now.
class Model {
 public:
  Model(engine::Device& d, uint64_t cluster_bytes) : d_(&d), cluster_(cluster_bytes) {}

  uint64_t ClusterLength(uint64_t index) const {
    return std::min(cluster_, d_->size_bytes() - index * cluster_);
  }
  // Learns clusters [first, last] that it does not know yet (unreadable ones
  // and those past kMaxModelBytes stay unknown).
  void Learn(uint64_t first, uint64_t last) {
    for (uint64_t c = first; c <= last; ++c) {
      if (known_.count(c) || known_bytes_ + ClusterLength(c) > kMaxModelBytes) continue;
      std::vector<std::byte> buf(ClusterLength(c));
      if (ReadSync(*d_, c * cluster_, buf) != 0) continue;
      known_bytes_ += buf.size();
      known_.emplace(c, std::move(buf));
    }
  }
  void Forget(uint64_t first, uint64_t last) {
    for (uint64_t c = first; c <= last; ++c) {
      auto it = known_.find(c);
      if (it == known_.end()) continue;
      known_bytes_ -= it->second.size();
      known_.erase(it);
    }
  }
  // Sets [offset, offset + bytes.size()) in the known clusters; with
  // bytes == nullptr, zeroes `length` bytes.
  void Set(uint64_t offset, uint64_t length, const std::byte* bytes) {
    for (uint64_t at = offset; at < offset + length;) {
      const uint64_t c = at / cluster_;
      const uint64_t in = at - c * cluster_;
      const uint64_t n = std::min(cluster_ - in, offset + length - at);
      auto it = known_.find(c);
      if (it != known_.end()) {
        if (bytes) {
          std::memcpy(it->second.data() + in, bytes + (at - offset), n);
        } else {
          std::memset(it->second.data() + in, 0, n);
        }
      }
      at += n;
    }
  }
  // Every known cluster reads as modelled.
  void Verify(engine::Device& d) const {
    for (const auto& [c, want] : known_) {
      std::vector<std::byte> got(want.size());
      if (ReadSync(d, c * cluster_, got) != 0) Fail("modelled cluster no longer readable", c);
      if (got != want) {
        size_t i = 0;
        while (got[i] == want[i]) ++i;
        Fail("cluster differs from the model at (cluster, byte)", c, i);
      }
    }
  }

 private:
  engine::Device* d_;
  uint64_t cluster_;
  std::map<uint64_t, std::vector<std::byte>> known_;
  uint64_t known_bytes_ = 0;
};

// Reads the disk in chunks: all of it, or kMaxReadClusters / kMaxReadBytes
// worth split between its start and its end.
void ReadThrough(engine::Device& d, uint64_t cluster_bytes) {
  const uint64_t size = d.size_bytes();
  const uint64_t clusters = (size + cluster_bytes - 1) / cluster_bytes;
  const uint64_t budget =
      std::min(kMaxReadClusters, std::max<uint64_t>(1, kMaxReadBytes / cluster_bytes));
  auto read_range = [&](uint64_t begin, uint64_t end) {
    std::vector<std::byte> buf(std::min<uint64_t>(end - begin, 1 << 20));
    for (uint64_t at = begin; at < end; at += buf.size()) {
      const uint64_t n = std::min<uint64_t>(buf.size(), end - at);
      (void)ReadSync(d, at, std::span<std::byte>(buf.data(), n));
    }
  };
  if (clusters <= budget) {
    read_range(0, size);
    return;
  }
  read_range(0, (budget + 1) / 2 * cluster_bytes);
  read_range((clusters - budget / 2) * cluster_bytes, size);
}

enum class OpKind { kWrite, kZeroes, kZeroesUnmap, kDiscard };

// Runs the requests, flush and close on `d` (opened on `file`); for a clean
// image, checks the model after each and after a read-only reopen.
void RunOps(io::MemFile& file, NamedFiles& named, engine::Device& d, std::span<const uint8_t> tail,
            bool clean) {
  const uint64_t cluster = d.granularity_bytes();
  const uint64_t size = d.size_bytes();
  const uint64_t sectors = size / kSector;
  std::vector<uint8_t> reversed(tail.rbegin(), tail.rend());
  ByteReader in(reversed);
  Model model(d, cluster);
  bool ok = true;
  for (int i = 0; i < kMaxOps && sectors > 0 && !in.empty(); ++i) {
    const uint8_t kind_byte = in.U8();
    const auto kind = static_cast<OpKind>(kind_byte % 4);
    const bool from_end = kind_byte & 0x10;
    const bool fua = kind_byte & 0x20;
    uint64_t sector = in.U24() % sectors;
    if (from_end) sector = sectors - 1 - sector;
    const uint64_t offset = sector * kSector;
    uint64_t length = (1 + in.U16() % (kMaxOpBytes / kSector)) * kSector;
    length = std::min(length, sectors * kSector - offset);
    const uint64_t first = offset / cluster;
    const uint64_t last = (offset + length - 1) / cluster;
    if (clean) model.Learn(first, last);
    int r = 0;
    switch (kind) {
      case OpKind::kWrite: {
        std::vector<std::byte> buf = Pattern(length, static_cast<uint8_t>(0x40 + i));
        r = WriteSync(d, offset, buf, fua);
        if (r == 0) model.Set(offset, length, buf.data());
        break;
      }
      case OpKind::kZeroes:
      case OpKind::kZeroesUnmap:
        r = io::RunSync(nullptr, d.WriteZeroes(offset, length, kind == OpKind::kZeroesUnmap));
        if (r == 0) model.Set(offset, length, nullptr);
        break;
      case OpKind::kDiscard: {
        r = io::RunSync(nullptr, d.Discard(offset, length));
        // Whole discarded clusters read as zero or, on a version 2 image with
        // a backing file, unchanged: learn them again.
        uint64_t zb = 0, ze = 0;
        DiscardedZeroRange(offset, length, cluster, size, &zb, &ze);
        if (r == 0 && ze > zb) model.Forget(zb / cluster, (ze - 1) / cluster);
        break;
      }
    }
    if (std::getenv("UQ_FUZZ_TRACE")) {
      std::fprintf(stderr, "op %d: kind %d [%llu, +%llu) -> %d\n", i, static_cast<int>(kind),
                   static_cast<unsigned long long>(offset), static_cast<unsigned long long>(length),
                   r);
    }
    if (r != 0) {
      // Unknown outcome (the image may now refuse writes: fail-stop).
      model.Forget(first, last);
      ok = false;
      continue;
    }
    if (clean) model.Verify(d);
  }
  const int flushed = io::RunSync(nullptr, d.Flush());
  if (flushed != 0) ok = false;
  if (clean) model.Verify(d);
  absl::Status closed = io::RunSync(nullptr, d.Close());
  if (!closed.ok()) ok = false;
  if (!clean || !ok) return;
  // Everything succeeded on a consistent image: it is still consistent, and
  // it reads the same after a reopen.
  UQ_FUZZ_CHECK(CheckClean(file));
  auto again = Open(file, named, /*read_only=*/true);
  UQ_FUZZ_CHECK(again.ok());
  model.Verify(**again);
  (void)io::RunSync(nullptr, (*again)->Close());
}

}  // namespace
}  // namespace uq::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace uq;
  if (size > fuzz::kMaxInputBytes) return 0;
  std::vector<std::byte> bytes(reinterpret_cast<const std::byte*>(data),
                               reinterpret_cast<const std::byte*>(data) + size);
  io::MemFile file(io::MemFile::Mode::kImmediate, std::move(bytes));
  file.set_max_size_bytes(fuzz::kMaxFileBytes);

  // The check on the bytes as given (qemu-img check's view of them).
  (void)fuzz::CheckClean(file);

  fuzz::NamedFiles named;
  auto opened = fuzz::Open(file, named, /*read_only=*/false);
  if (!opened.ok()) {
    if (std::getenv("UQ_FUZZ_TRACE")) {
      std::fprintf(stderr, "open: %s\n", std::string(opened.status().message()).c_str());
    }
    return 0;
  }
  engine::Device& d = **opened;
  // After a writable open (a dirty image has had its refcounts rebuilt): is
  // the image consistent enough for the model's promises?
  const bool clean = !d.read_only() && fuzz::CheckClean(file);
  if (std::getenv("UQ_FUZZ_TRACE")) {
    std::fprintf(stderr, "opened: size %llu, cluster %u, read-only %d, clean %d\n",
                 static_cast<unsigned long long>(d.size_bytes()), d.granularity_bytes(),
                 d.read_only(), clean);
  }
  fuzz::ReadThrough(d, d.granularity_bytes());
  if (d.read_only()) {
    (void)io::RunSync(nullptr, d.Close());
    return 0;
  }
  const size_t tail = std::min<size_t>(size, 64);
  fuzz::RunOps(file, named, d, std::span<const uint8_t>(data + size - tail, tail), clean);
  return 0;
}
