// FileWrapper: a BlockFile that forwards every operation to another BlockFile
// (leveldb's EnvWrapper). Decorators (fault injection, power loss, alignment,
// read-only) derive from it and override only the operations they change, so
// adding a method to BlockFile means adding one forwarder here, not one per
// decorator.
//
// Forwarders return the wrapped file's Task as is: passing through a
// FileWrapper costs a virtual call, not a coroutine frame.
//
// Ownership: a wrapper either owns its base (unique_ptr constructor) or
// borrows it (pointer constructor; the base must outlive the wrapper).
//
// Thread-safety: that of the wrapped file; decorators that add state say so.
#ifndef UQ_SRC_IO_FILE_WRAPPER_H_
#define UQ_SRC_IO_FILE_WRAPPER_H_

#include <memory>
#include <utility>

#include "src/io/block_file.h"

namespace uq::io {

class FileWrapper : public BlockFile {
 public:
  // Owns `base`. REQUIRES: base != nullptr.
  explicit FileWrapper(std::unique_ptr<BlockFile> base)
      : owned_(std::move(base)), base_(owned_.get()) {}
  // Borrows `base`, which must outlive this wrapper. REQUIRES: base != nullptr.
  explicit FileWrapper(BlockFile* base) : base_(base) {}
  FileWrapper(const FileWrapper&) = delete;
  FileWrapper& operator=(const FileWrapper&) = delete;
  ~FileWrapper() override = default;

  Task<int64_t> ReadV(uint64_t offset_bytes, std::span<const iovec> iov) override {
    return base_->ReadV(offset_bytes, iov);
  }
  Task<int64_t> WriteV(uint64_t offset_bytes, std::span<const iovec> iov) override {
    return base_->WriteV(offset_bytes, iov);
  }
  Task<int> Flush() override { return base_->Flush(); }
  Task<int> Discard(uint64_t offset_bytes, uint64_t length_bytes) override {
    return base_->Discard(offset_bytes, length_bytes);
  }
  Task<int> WriteZeroes(uint64_t offset_bytes, uint64_t length_bytes) override {
    return base_->WriteZeroes(offset_bytes, length_bytes);
  }
  Task<int> Truncate(uint64_t size_bytes) override { return base_->Truncate(size_bytes); }
  Task<int> Reserve(uint64_t offset_bytes, uint64_t length_bytes) override {
    return base_->Reserve(offset_bytes, length_bytes);
  }
  uint64_t size_bytes() const override { return base_->size_bytes(); }
  bool read_only() const override { return base_->read_only(); }

  // The wrapped file.
  BlockFile* base() const { return base_; }

 private:
  std::unique_ptr<BlockFile> owned_;
  BlockFile* base_;
};

}  // namespace uq::io

#endif  // UQ_SRC_IO_FILE_WRAPPER_H_
