// Fuzz entry for request streams: the first input bytes choose a small fresh
// image (cluster size, version 2 or 3, extended L2, refcount width, lazy
// refcounts, compression type, tiny metadata caches, metadata write-through,
// no / raw / qcow2 backing file, virtual size 256, 384 or 512 KiB); the rest is a
// stream of write, write-zeroes, discard, compressed write, read, flush,
// power loss and reopen, run one at a time on the engine over a PowerLossFile
// (src/io/power_loss_file.h) over a MemFile, against a flat byte model
// (as tests/engine/simulation_test.cc and power_loss/power_loss_test.cc keep
// one; theirs live inside gtest files, so the model is written again here).
//
// Properties checked:
//  - every request succeeds (in-memory files do not fail);
//  - every read returns the model's bytes;
//  - power loss (every write since the last flush dropped, or a random subset
//    of them kept): the crashed image has no corruption by CheckImage unless
//    its dirty bit is set, reopens writable (repairing a dirty image), and each
//    sector reads as it was at the last flush, or, if a request changed it
//    since, as one of the versions those requests gave it (never other data);
//  - reopen: Close succeeds, the check finds no corruption (and no leak unless
//    a power loss left some), and the reopened image reads as the model.
// A FUA write is a write followed by a flush in the model (Device::Write: the
// data is durable when the call completes; the requests run one at a time).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "format/create.h"
#include "format/header.h"
#include "fuzz/fuzz_util.h"
#include "src/engine/check.h"
#include "src/engine/image.h"
#include "src/io/file_wrapper.h"
#include "src/io/mem_file.h"
#include "src/io/power_loss_file.h"
#include "src/io/read_only_file.h"

namespace uq::fuzz {
namespace {

constexpr uint64_t kSector = 512;
constexpr int kMaxOps = 64;

enum class Backing { kNone, kRaw, kQcow2 };

struct Config {
  format::CreateOptions create;
  Backing backing = Backing::kNone;
  bool tiny_caches = false;
  bool writethrough = false;
};

Config DecodeConfig(ByteReader& in) {
  static constexpr uint32_t kClusterBits[] = {9, 10, 12, 13, 14, 15, 16, 16};
  Config c;
  const uint8_t b0 = in.U8();
  const uint8_t b1 = in.U8();
  const uint8_t b2 = in.U8();
  format::CreateOptions& o = c.create;
  o.cluster_bits = kClusterBits[b0 & 7];
  o.version = (b0 & 8) ? 2 : 3;
  c.backing = static_cast<Backing>(((b0 >> 4) & 3) % 3);
  c.writethrough = b0 & 0x40;
  c.tiny_caches = b0 & 0x80;
  // 512 bytes cannot hold a v3 header, its extensions and a backing file name.
  if (c.backing != Backing::kNone && o.cluster_bits == 9) o.cluster_bits = 10;
  if (o.version == 3) {
    o.extended_l2 = (b1 & 1) && o.cluster_bits >= 14;
    o.lazy_refcounts = b1 & 2;
    o.refcount_order = (b1 >> 2) % 7;
    if (b1 & 0x20) o.compression_type = format::CompressionType::kZstd;
  }
  o.size_bytes = (2 + b2 % 3) * (128 << 10);
  return c;
}

std::vector<std::byte> Pattern(size_t bytes, uint8_t seed) {
  std::vector<std::byte> v(bytes);
  for (size_t i = 0; i < bytes; ++i) {
    v[i] = std::byte(static_cast<uint8_t>(seed * 31 + i * 13 + i / 512));
  }
  return v;
}

std::unique_ptr<io::MemFile> MakeImage(const format::CreateOptions& o) {
  auto layout = format::BuildImageLayout(o);
  if (!layout.ok()) {
    std::fprintf(stderr, "layout: %s\n", std::string(layout.status().message()).c_str());
    Fail("the layout builder refuses the options");
  }
  std::vector<std::byte> bytes(layout->file_size_bytes);
  for (const format::WriteRange& w : layout->writes) {
    if (w.offset_bytes + w.data.size() > bytes.size()) bytes.resize(w.offset_bytes + w.data.size());
    std::memcpy(bytes.data() + w.offset_bytes, w.data.data(), w.data.size());
  }
  return std::make_unique<io::MemFile>(io::MemFile::Mode::kImmediate, std::move(bytes));
}

class Run {
 public:
  explicit Run(Config c) : c_(std::move(c)), sectors_(c_.create.size_bytes / kSector) {}

  void Setup();
  void Op(ByteReader& in, int index);
  void Finish();

 private:
  uint64_t cluster_bytes() const { return uint64_t{1} << c_.create.cluster_bits; }
  void Open();
  void Mutated(uint64_t offset, uint64_t length);  // after current_ changed there
  void Flushed();
  void CompareAll(const char* when);
  void PowerLoss(uint8_t how);
  void Reopen();

  Config c_;
  uint64_t sectors_;
  std::unique_ptr<io::MemFile> backing_;
  std::unique_ptr<io::MemFile> base_;
  std::unique_ptr<io::PowerLossFile> power_;
  std::unique_ptr<engine::Device> dev_;
  // The model: the disk as of the completed requests, and as of the last
  // completed flush; for each sector changed since, the hashes of the
  // contents a power loss may leave (the flushed one and each one given).
  std::vector<std::byte> current_;
  std::vector<std::byte> durable_;
  std::vector<std::vector<uint64_t>> versions_;
  bool lost_power_ = false;
  std::vector<std::byte> read_buf_;                       // CompareAll's, kept between calls
  bool trace_ = std::getenv("UQ_FUZZ_TRACE") != nullptr;  // the requests on stderr
};

void Run::Setup() {
  format::CreateOptions& o = c_.create;
  if (trace_) {
    std::fprintf(stderr,
                 "image: cluster_bits %u version %u extended_l2 %d refcount_order %u lazy %d "
                 "zstd %d size %llu backing %d tiny_caches %d writethrough %d\n",
                 o.cluster_bits, o.version, o.extended_l2, o.refcount_order, o.lazy_refcounts,
                 o.compression_type == format::CompressionType::kZstd,
                 static_cast<unsigned long long>(o.size_bytes), static_cast<int>(c_.backing),
                 c_.tiny_caches, c_.writethrough);
  }
  current_.assign(o.size_bytes, std::byte{0});
  const uint64_t backing_bytes = o.size_bytes / 4 * 3 - 4096;  // shorter than the overlay
  if (c_.backing == Backing::kRaw) {
    backing_ =
        std::make_unique<io::MemFile>(io::MemFile::Mode::kImmediate, Pattern(backing_bytes, 0x11));
    std::memcpy(current_.data(), backing_->data().data(), backing_bytes);
    o.backing_file = "base.raw";
    o.backing_format = "raw";
  } else if (c_.backing == Backing::kQcow2) {
    format::CreateOptions bo;
    bo.size_bytes = backing_bytes;
    bo.cluster_bits = 12;
    backing_ = MakeImage(bo);
    engine::OpenOptions oo;
    auto b = io::RunSync(nullptr,
                         engine::OpenImage(std::make_unique<io::FileWrapper>(backing_.get()), oo));
    UQ_FUZZ_CHECK(b.ok());
    // A few extents, some cluster-unaligned, so COW reads the backing file.
    for (uint64_t i = 0; i < 6; ++i) {
      const uint64_t off = (i * 37 + 3) % (backing_bytes / kSector) * kSector;
      const uint64_t len = std::min<uint64_t>((1 + i * 11) * kSector, backing_bytes - off);
      std::vector<std::byte> buf = Pattern(len, static_cast<uint8_t>(0x20 + i));
      UQ_FUZZ_CHECK(WriteSync(**b, off, buf, false) == 0);
      std::memcpy(current_.data() + off, buf.data(), len);
    }
    UQ_FUZZ_CHECK(io::RunSync(nullptr, (*b)->Close()).ok());
    o.backing_file = "base.qcow2";
    o.backing_format = "qcow2";
  }
  durable_ = current_;
  versions_.assign(sectors_, {});
  base_ = MakeImage(o);
  power_ = std::make_unique<io::PowerLossFile>(base_.get(), base_->data());
  Open();
}

void Run::Open() {
  engine::OpenOptions oo;
  oo.path = "/fuzz/disk.qcow2";
  io::MemFile* backing = backing_.get();
  oo.opener = [backing](const std::string& path,
                        bool) -> absl::StatusOr<std::unique_ptr<io::BlockFile>> {
    if (backing == nullptr || (path != "/fuzz/base.raw" && path != "/fuzz/base.qcow2")) {
      return absl::NotFoundError(path);
    }
    return std::unique_ptr<io::BlockFile>(std::make_unique<io::ReadOnlyFile>(backing));
  };
  if (c_.tiny_caches) oo.l2_cache_bytes = oo.refcount_cache_bytes = 1;
  oo.metadata_writethrough = c_.writethrough;
  auto d =
      io::RunSync(nullptr, engine::OpenImage(std::make_unique<io::FileWrapper>(power_.get()), oo));
  if (!d.ok()) {
    std::fprintf(stderr, "open: %s\n", std::string(d.status().message()).c_str());
    Fail("the image does not open");
  }
  dev_ = std::move(*d);
  UQ_FUZZ_CHECK(dev_->size_bytes() == c_.create.size_bytes && !dev_->read_only());
}

void Run::Mutated(uint64_t offset, uint64_t length) {
  for (uint64_t s = offset / kSector; s < (offset + length) / kSector; ++s) {
    std::vector<uint64_t>& v = versions_[s];
    if (v.empty()) v.push_back(Hash({durable_.data() + s * kSector, kSector}));
    const uint64_t h = Hash({current_.data() + s * kSector, kSector});
    if (std::find(v.begin(), v.end(), h) == v.end()) v.push_back(h);
  }
}

void Run::Flushed() {
  durable_ = current_;
  for (auto& v : versions_) v.clear();
}

void Run::CompareAll(const char* when) {
  std::vector<std::byte>& buf = read_buf_;
  buf.resize(current_.size());
  UQ_FUZZ_CHECK(ReadSync(*dev_, 0, buf) == 0);
  if (buf == current_) return;
  size_t i = 0;
  while (buf[i] == current_[i]) ++i;
  std::fprintf(stderr, "%s:\n", when);
  Fail("full read differs from the model at byte (offset, value)", i, static_cast<uint8_t>(buf[i]));
}

void Run::Op(ByteReader& in, int index) {
  const uint8_t kind = in.U8();
  const uint64_t cluster_sectors = cluster_bytes() / kSector;
  const uint64_t max_sectors =
      std::min<uint64_t>(sectors_, std::max<uint64_t>(4 * cluster_sectors, 64));
  uint64_t first = in.U16() % sectors_;
  uint64_t count = 1 + in.U16() % max_sectors;
  if (kind & 0x80) first = first / cluster_sectors * cluster_sectors;  // cluster aligned
  count = std::min(count, sectors_ - first);
  const uint64_t offset = first * kSector;
  const uint64_t length = count * kSector;
  if (trace_) {
    std::fprintf(stderr, "op %d: kind %d (byte %#x) sectors %llu+%llu\n", index, kind % 16, kind,
                 static_cast<unsigned long long>(first), static_cast<unsigned long long>(count));
  }
  switch (kind % 16) {
    case 0:
    case 1:
    case 2:
    case 3:
    case 4:
    case 5: {
      const bool fua = kind % 16 == 5;
      std::vector<std::byte> buf = Pattern(length, static_cast<uint8_t>(index + (kind >> 4)));
      if (kind & 0x40) std::fill(buf.begin(), buf.end(), std::byte{0});  // all-zero data
      UQ_FUZZ_CHECK(WriteSync(*dev_, offset, buf, fua) == 0, offset, length);
      std::memcpy(current_.data() + offset, buf.data(), length);
      Mutated(offset, length);
      if (fua) Flushed();
      break;
    }
    case 6:
    case 7: {
      const bool unmap = kind % 16 == 7;
      UQ_FUZZ_CHECK(io::RunSync(nullptr, dev_->WriteZeroes(offset, length, unmap)) == 0, offset,
                    length);
      std::memset(current_.data() + offset, 0, length);
      Mutated(offset, length);
      break;
    }
    case 8: {
      UQ_FUZZ_CHECK(io::RunSync(nullptr, dev_->Discard(offset, length)) == 0, offset, length);
      uint64_t zb = 0, ze = 0;
      DiscardedZeroRange(offset, length, cluster_bytes(), current_.size(), &zb, &ze);
      // A version 2 image with a backing file ignores discards (device.h).
      if (c_.create.version < 3 && c_.backing != Backing::kNone) ze = zb;
      std::memset(current_.data() + zb, 0, ze - zb);
      Mutated(zb, ze - zb);
      break;
    }
    case 9: {
      // One whole cluster, compressed (stored plain if it does not shrink).
      const uint64_t c = first / cluster_sectors * cluster_bytes();
      const uint64_t n = std::min<uint64_t>(cluster_bytes(), current_.size() - c);
      std::vector<std::byte> buf(n, std::byte(static_cast<uint8_t>(index + 1)));
      if (kind & 0x40) buf = Pattern(n, static_cast<uint8_t>(index));
      UQ_FUZZ_CHECK(dev_->supports_compressed_writes());
      UQ_FUZZ_CHECK(io::RunSync(nullptr, dev_->WriteCompressed(c, buf)) == 0, c, n);
      std::memcpy(current_.data() + c, buf.data(), n);
      Mutated(c, n);
      break;
    }
    case 10:
    case 11: {
      std::vector<std::byte> buf(length);
      UQ_FUZZ_CHECK(ReadSync(*dev_, offset, buf) == 0, offset, length);
      if (std::memcmp(buf.data(), current_.data() + offset, length) != 0) {
        size_t i = 0;
        while (buf[i] == current_[offset + i]) ++i;
        Fail("read differs from the model at byte (offset, value)", offset + i,
             static_cast<uint8_t>(buf[i]));
      }
      break;
    }
    case 12:
      UQ_FUZZ_CHECK(io::RunSync(nullptr, dev_->Flush()) == 0);
      Flushed();
      break;
    case 13:
    case 14:
      PowerLoss(kind);
      break;
    case 15:
      Reopen();
      break;
  }
}

void Run::PowerLoss(uint8_t how) {
  std::vector<std::byte> crashed;
  if (how & 0x10) {
    std::mt19937_64 rng(how);
    crashed = power_->CrashRandomSubset(rng);
  } else {
    crashed = power_->Crash();
  }
  lost_power_ = true;
  // The live engine goes away without writing anything more that counts.
  (void)io::RunSync(nullptr, dev_->Close());
  dev_.reset();
  power_.reset();
  base_ = std::make_unique<io::MemFile>(io::MemFile::Mode::kImmediate, std::move(crashed));
  power_ = std::make_unique<io::PowerLossFile>(base_.get(), base_->data());

  auto h = format::DecodeHeader(base_->data(), {.file_size_bytes = base_->data().size()});
  UQ_FUZZ_CHECK(h.ok());
  if ((h->incompatible_features & format::kIncompatDirty) == 0) {
    auto r = io::RunSync(nullptr, engine::CheckImage(*base_));
    UQ_FUZZ_CHECK(r.ok());
    if (r->corruptions != 0) {
      for (const std::string& m : r->messages) std::fprintf(stderr, "%s\n", m.c_str());
      Fail("corruption after power loss");
    }
  }
  Open();
  std::vector<std::byte> buf(current_.size());
  UQ_FUZZ_CHECK(ReadSync(*dev_, 0, buf) == 0);
  for (uint64_t s = 0; s < sectors_; ++s) {
    std::span<const std::byte> got(buf.data() + s * kSector, kSector);
    const std::vector<uint64_t>& v = versions_[s];
    if (v.empty()) {
      if (std::memcmp(got.data(), durable_.data() + s * kSector, kSector) != 0) {
        Fail("after power loss a sector differs from its flushed contents", s);
      }
    } else if (std::find(v.begin(), v.end(), Hash(got)) == v.end()) {
      std::fprintf(stderr, "sector %llu: first bytes read %d, flushed %d, last written %d\n",
                   static_cast<unsigned long long>(s), static_cast<int>(got[0]),
                   static_cast<int>(durable_[s * kSector]),
                   static_cast<int>(current_[s * kSector]));
      Fail("after power loss a sector holds data no request gave it", s);
    }
  }
  current_ = std::move(buf);
  Flushed();
}

void Run::Reopen() {
  absl::Status closed = io::RunSync(nullptr, dev_->Close());
  UQ_FUZZ_CHECK(closed.ok());
  dev_.reset();
  Flushed();
  auto r = io::RunSync(nullptr, engine::CheckImage(*base_));
  UQ_FUZZ_CHECK(r.ok());
  if (r->corruptions != 0 || (!lost_power_ && r->leaks != 0)) {
    for (const std::string& m : r->messages) std::fprintf(stderr, "%s\n", m.c_str());
    Fail("check after close (corruptions, leaks)", r->corruptions, r->leaks);
  }
  Open();
  CompareAll("after reopen");
}

void Run::Finish() {
  CompareAll("at the end");
  Reopen();
  UQ_FUZZ_CHECK(io::RunSync(nullptr, dev_->Close()).ok());
  dev_.reset();
}

}  // namespace
}  // namespace uq::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace uq::fuzz;
  ByteReader in(std::span<const uint8_t>(data, size));
  Run run(DecodeConfig(in));
  run.Setup();
  for (int i = 0; i < kMaxOps && !in.empty(); ++i) run.Op(in, i);
  run.Finish();
  return 0;
}
