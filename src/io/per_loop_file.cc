#include "src/io/per_loop_file.h"

#include <utility>

namespace uq::io {

absl::StatusOr<std::unique_ptr<PerLoopFile>> PerLoopFile::Create(
    std::unique_ptr<UringFile> first, std::span<EventLoop* const> loops) {
  if (loops.empty() || first == nullptr || first->loop() != loops[0]) {
    return absl::InvalidArgumentError("PerLoopFile: the first file must be open on the first loop");
  }
  std::unique_ptr<PerLoopFile> f(new PerLoopFile());
  f->loops_.assign(loops.begin(), loops.end());
  f->files_.push_back(std::move(first));
  for (size_t i = 1; i < loops.size(); ++i) {
    absl::StatusOr<std::unique_ptr<UringFile>> clone = f->files_[0]->Clone(loops[i]);
    if (!clone.ok()) return clone.status();
    f->files_.push_back(std::move(*clone));
  }
  return f;
}

UringFile& PerLoopFile::Pick() const {
  Executor* current = Executor::Current();
  // A handful of queues: a linear scan beats any map.
  for (size_t i = 0; i < loops_.size(); ++i) {
    if (loops_[i] == current) return *files_[i];
  }
  return *files_[0];
}

}  // namespace uq::io
