#include "src/engine/image.h"

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "format/endian.h"
#include "format/header.h"
#include "src/engine/qcow2_image.h"
#include "src/engine/raw_device.h"
#include "src/io/aligned_file.h"
#include "src/io/read_only_file.h"

namespace uq::engine {

Task<absl::StatusOr<std::unique_ptr<Device>>> OpenImage(std::unique_ptr<io::BlockFile> file,
                                                        OpenOptions options) {
  if (!file) co_return absl::InvalidArgumentError("no file");
  if (options.file_alignment_bytes > 1) {
    const uint32_t a = options.file_alignment_bytes;
    if ((a & (a - 1)) != 0 || a < 512) {
      co_return absl::InvalidArgumentError("file_alignment_bytes must be a power of two >= 512");
    }
    file = std::make_unique<io::AlignedFile>(std::move(file), a);
  }
  bool is_qcow2 = false;
  if (options.format != ImageFormat::kRaw) {
    std::byte magic[4] = {};
    if (file->size_bytes() >= 4) {
      int64_t r = co_await file->Read(0, magic);
      if (r < 0) {
        co_return absl::DataLossError(absl::StrCat("reading magic: ", std::strerror(-r)));
      }
    }
    is_qcow2 = format::LoadBE32(magic) == format::kQcowMagic;
    if (options.format == ImageFormat::kQcow2 && !is_qcow2) {
      co_return absl::InvalidArgumentError("not a qcow2 image (bad magic)");
    }
  }
  if (!is_qcow2) {
    if (!options.snapshot.empty()) {
      co_return absl::InvalidArgumentError("a raw image has no snapshots");
    }
    if (!options.data_file_path.empty()) {
      co_return absl::InvalidArgumentError(
          "a raw image has no external data file (--data-file is for qcow2 images)");
    }
    if (options.read_only && !file->read_only()) {
      file = std::make_unique<io::ReadOnlyFile>(std::move(file));
    }
    const uint64_t size = file->size_bytes();
    const RawDevice::Format how = options.format == ImageFormat::kAuto ? RawDevice::Format::kProbed
                                                                       : RawDevice::Format::kNamed;
    co_return std::unique_ptr<Device>(std::make_unique<RawDevice>(std::move(file), size, how));
  }
  auto img = co_await Qcow2Image::Open(std::move(file), options);
  if (!img.ok()) co_return img.status();
  co_return std::unique_ptr<Device>(std::move(*img));
}

}  // namespace uq::engine
