#include "src/engine/open_path.h"

#include <utility>

namespace uq::engine {

Task<absl::StatusOr<std::unique_ptr<Device>>> OpenPath(const std::string& path,
                                                       PathOptions options) {
  if (!options.opener) co_return absl::InvalidArgumentError("no file opener");
  absl::StatusOr<std::unique_ptr<io::BlockFile>> file = options.opener(path, !options.read_only);
  if (!file.ok()) co_return file.status();
  co_return co_await OpenPathOnFile(path, std::move(*file), std::move(options));
}

Task<absl::StatusOr<std::unique_ptr<Device>>> OpenPathOnFile(const std::string& path,
                                                             std::unique_ptr<io::BlockFile> file,
                                                             PathOptions options) {
  OpenOptions o;
  o.format = options.format;
  o.read_only = options.read_only;
  o.snapshot = std::move(options.snapshot);
  o.l2_cache_bytes = options.l2_cache_bytes;
  o.refcount_cache_bytes = options.refcount_cache_bytes;
  o.file_alignment_bytes = options.file_alignment_bytes;
  o.metadata_writethrough = options.metadata_writethrough && !options.read_only;
  o.path = path;
  o.opener = std::move(options.opener);
  o.check_named_files = true;
  o.allow_devices = options.allow_devices;
  o.data_file_path = std::move(options.data_file);
  co_return co_await OpenImage(std::move(file), std::move(o));
}

}  // namespace uq::engine
