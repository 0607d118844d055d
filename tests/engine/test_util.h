// Helpers shared by the engine tests: images built with the format library's
// layout builder on MemFiles, a non-owning BlockFile wrapper so tests keep
// their files while the engine "owns" them, and synchronous drivers.
#ifndef UQ_TESTS_ENGINE_TEST_UTIL_H_
#define UQ_TESTS_ENGINE_TEST_UTIL_H_

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "format/create.h"
#include "src/engine/image.h"
#include "src/io/mem_file.h"
#include "src/io/run_sync.h"

namespace uq::engine::testing {

// Forwards to a BlockFile the test keeps.
class BorrowedFile final : public io::BlockFile {
 public:
  explicit BorrowedFile(io::BlockFile* f, bool read_only = false) : f_(f), ro_(read_only) {}
  Task<int64_t> ReadV(uint64_t o, std::span<const iovec> v) override { return f_->ReadV(o, v); }
  Task<int64_t> WriteV(uint64_t o, std::span<const iovec> v) override { return f_->WriteV(o, v); }
  Task<int> Flush() override { return f_->Flush(); }
  Task<int> Discard(uint64_t o, uint64_t n) override { return f_->Discard(o, n); }
  Task<int> WriteZeroes(uint64_t o, uint64_t n) override { return f_->WriteZeroes(o, n); }
  Task<int> Truncate(uint64_t n) override { return f_->Truncate(n); }
  uint64_t size_bytes() const override { return f_->size_bytes(); }
  bool read_only() const override { return ro_ || f_->read_only(); }

 private:
  io::BlockFile* f_;
  bool ro_;
};

// Fails misaligned I/O with -EINVAL, as an O_DIRECT file does.
class StrictAlignFile final : public io::BlockFile {
 public:
  StrictAlignFile(std::unique_ptr<io::BlockFile> f, uint64_t align) : f_(std::move(f)), a_(align) {}
  Task<int64_t> ReadV(uint64_t o, std::span<const iovec> v) override {
    if (!Ok(o, v)) return Fail64();
    return f_->ReadV(o, v);
  }
  Task<int64_t> WriteV(uint64_t o, std::span<const iovec> v) override {
    if (!Ok(o, v)) return Fail64();
    return f_->WriteV(o, v);
  }
  Task<int> Flush() override { return f_->Flush(); }
  Task<int> Discard(uint64_t o, uint64_t n) override {
    if ((o | n) % a_) return Fail();
    return f_->Discard(o, n);
  }
  Task<int> WriteZeroes(uint64_t o, uint64_t n) override {
    if ((o | n) % a_) return Fail();
    return f_->WriteZeroes(o, n);
  }
  Task<int> Truncate(uint64_t n) override { return f_->Truncate(n); }
  uint64_t size_bytes() const override { return f_->size_bytes(); }
  bool read_only() const override { return f_->read_only(); }
  uint64_t misaligned() const { return misaligned_; }

 private:
  bool Ok(uint64_t o, std::span<const iovec> v) {
    bool ok = o % a_ == 0;
    for (const iovec& x : v) {
      ok = ok && reinterpret_cast<uintptr_t>(x.iov_base) % a_ == 0 && x.iov_len % a_ == 0;
    }
    if (!ok) {
      ++misaligned_;
      ADD_FAILURE() << "misaligned I/O at offset " << o;
    }
    return ok;
  }
  static Task<int64_t> Fail64() { co_return -EINVAL; }
  static Task<int> Fail() { co_return -EINVAL; }
  std::unique_ptr<io::BlockFile> f_;
  uint64_t a_;
  uint64_t misaligned_ = 0;
};

// Builds a fresh image with the layout builder.
inline std::unique_ptr<io::MemFile> MakeImage(const format::CreateOptions& o) {
  auto layout = format::BuildImageLayout(o);
  EXPECT_TRUE(layout.ok()) << layout.status();
  if (!layout.ok()) return nullptr;
  std::vector<std::byte> bytes(layout->file_size_bytes);
  for (const format::WriteRange& w : layout->writes) {
    if (w.offset_bytes + w.data.size() > bytes.size()) bytes.resize(w.offset_bytes + w.data.size());
    std::memcpy(bytes.data() + w.offset_bytes, w.data.data(), w.data.size());
  }
  return std::make_unique<io::MemFile>(io::MemFile::Mode::kImmediate, std::move(bytes));
}

// A set of named files for FileOpener.
struct FileSet {
  std::map<std::string, io::MemFile*> files;
  uint64_t strict_alignment = 0;  // > 0: files fail misaligned I/O
  FileOpener Opener() {
    return [this](const std::string& path,
                  bool writable) -> absl::StatusOr<std::unique_ptr<io::BlockFile>> {
      auto it = files.find(path);
      if (it == files.end()) return absl::NotFoundError(path);
      std::unique_ptr<io::BlockFile> f = std::make_unique<BorrowedFile>(it->second, !writable);
      if (strict_alignment) f = std::make_unique<StrictAlignFile>(std::move(f), strict_alignment);
      return f;
    };
  }
};

inline absl::StatusOr<std::unique_ptr<Device>> OpenSync(io::MemFile* file, OpenOptions o,
                                                        bool read_only_file = false) {
  return io::RunSync(nullptr,
                     OpenImage(std::make_unique<BorrowedFile>(file, read_only_file), std::move(o)));
}

inline int ReadSync(Device& d, uint64_t off, std::span<std::byte> buf) {
  iovec v{buf.data(), buf.size()};
  return io::RunSync(nullptr, d.Read(off, std::span<const iovec>(&v, 1)));
}
inline int WriteSync(Device& d, uint64_t off, std::span<const std::byte> buf, bool fua = false) {
  iovec v{const_cast<std::byte*>(buf.data()), buf.size()};
  return io::RunSync(nullptr, d.Write(off, std::span<const iovec>(&v, 1), fua));
}

// The part of Device::Discard(offset, length) that reads as zero afterwards:
// on qcow2 (granularity_bytes = cluster size) the whole clusters in the range,
// the disk's last partial cluster counting as whole when the range reaches the
// end of the disk; nothing when `ignored` (a version 2 qcow2 image with a
// backing file). Raw devices punch the whole range: pass 512. Returns
// [begin, end), empty when nothing is zeroed; the rest of the range keeps its
// contents.
inline std::pair<uint64_t, uint64_t> DiscardedZeroRange(uint64_t offset, uint64_t length,
                                                        uint64_t granularity_bytes,
                                                        uint64_t disk_bytes, bool ignored = false) {
  if (ignored) return {offset, offset};
  const uint64_t g = granularity_bytes;
  const uint64_t begin = (offset + g - 1) / g * g;
  uint64_t end = (offset + length) / g * g;
  if (offset + length == disk_bytes && offset <= disk_bytes / g * g) end = disk_bytes;
  if (end <= begin) return {offset, offset};
  return {begin, end};
}

inline uint64_t EnvU64(const char* name, uint64_t def) {
  const char* v = std::getenv(name);
  return v ? std::strtoull(v, nullptr, 0) : def;
}

}  // namespace uq::engine::testing

#endif  // UQ_TESTS_ENGINE_TEST_UTIL_H_
