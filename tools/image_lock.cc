#include "tools/image_lock.h"

#include <cctype>
#include <string>

#include "absl/strings/str_cat.h"
#include "src/io/file_lock.h"

namespace uq::tools {

absl::StatusOr<LockMode> LockModeFor(bool writable, bool force_share) {
  if (!force_share) return writable ? LockMode::kExclusive : LockMode::kShared;
  if (writable) {
    return absl::InvalidArgumentError("force-share=on can only be used with read-only images");
  }
  return LockMode::kNone;
}

absl::Status LockImageFile(int fd, LockMode mode) {
  if (mode == LockMode::kNone) return absl::OkStatus();
  absl::Status s = io::LockImage(fd, mode == LockMode::kExclusive);
  if (s.ok() || !absl::IsFailedPrecondition(s)) return s;
  // io::LockImage says "image is locked by another process (failed to get
  // shared "write" lock)"; qemu-img's words are the part in parentheses.
  std::string message(s.message());
  const size_t open = message.find("(failed to ");
  const size_t close = message.rfind(')');
  if (open != std::string::npos && close != std::string::npos && close > open) {
    message = message.substr(open + 1, close - open - 1);
    message[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(message[0])));
  }
  return absl::FailedPreconditionError(
      absl::StrCat(message, " (is another process using the image?)"));
}

}  // namespace uq::tools
