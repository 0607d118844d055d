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
#include "src/engine/check.h"
#include "src/engine/image.h"
#include "src/engine/qcow2_image.h"
#include "src/io/file_wrapper.h"
#include "src/io/mem_file.h"
#include "src/io/run_sync.h"
#include "tests/unit/io/test_util.h"

namespace uq::engine::testing {

// Forwards to a BlockFile the test keeps; `read_only` makes it report
// read_only() (as a file opened O_RDONLY would) without refusing writes.
class BorrowedFile final : public io::FileWrapper {
 public:
  explicit BorrowedFile(io::BlockFile* f, bool read_only = false)
      : io::FileWrapper(f), ro_(read_only) {}
  bool read_only() const override { return ro_ || base()->read_only(); }

 private:
  bool ro_;
};

using io::testing::StrictAlignFile;

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

// Options for MakeImage: a qcow2 image of `size_bytes`, 64 KiB clusters
// unless said.
inline format::CreateOptions Qcow2Options(uint64_t size_bytes, uint32_t cluster_bits = 16,
                                          bool lazy_refcounts = false) {
  format::CreateOptions o;
  o.size_bytes = size_bytes;
  o.cluster_bits = cluster_bits;
  o.lazy_refcounts = lazy_refcounts;
  return o;
}

inline absl::StatusOr<std::unique_ptr<Device>> OpenSync(io::MemFile* file, OpenOptions o,
                                                        bool read_only_file = false) {
  return io::RunSync(nullptr,
                     OpenImage(std::make_unique<BorrowedFile>(file, read_only_file), std::move(o)));
}

// Opens `f` as the concrete qcow2 engine (for its calls beyond Device);
// null, after a test failure, if it does not open.
inline std::unique_ptr<Qcow2Image> OpenQcow2(io::MemFile* f, OpenOptions o = {}) {
  auto d = OpenSync(f, std::move(o));
  EXPECT_TRUE(d.ok()) << d.status();
  if (!d.ok()) return nullptr;
  return std::unique_ptr<Qcow2Image>(static_cast<Qcow2Image*>(d->release()));
}

// The closed image in `file` checks with no corruptions and no leaks.
inline void ExpectClean(io::MemFile& file) {
  auto check = io::RunSync(nullptr, CheckImage(file));
  ASSERT_TRUE(check.ok()) << check.status();
  EXPECT_EQ(check->corruptions, 0u);
  EXPECT_EQ(check->leaks, 0u);
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
