// Command-line parsing for `ublk-qcow2` (pure: no I/O, unit-tested).
#ifndef UQ_SRC_CLI_OPTIONS_H_
#define UQ_SRC_CLI_OPTIONS_H_

#include <cstdint>
#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace uq::cli {

enum class Format { kQcow2, kRaw, kAuto };

const char* FormatName(Format f);
absl::StatusOr<Format> ParseFormat(absl::string_view s);

// How the image, backing and data files are opened (qemu-nbd's --cache names).
enum class CacheMode {
  kNone,       // O_DIRECT: no second copy of the guest's data in the host page cache
  kWriteback,  // buffered through the host page cache
};

const char* CacheModeName(CacheMode m);
absl::StatusOr<CacheMode> ParseCacheMode(absl::string_view s);

// Default --queues: the number of online CPUs, at most this.
inline constexpr uint16_t kMaxDefaultQueues = 4;

// How an image is served; also what the state file records for `recover`.
struct ImageSpec {
  std::string image;  // absolute once attached
  Format format = Format::kQcow2;
  bool read_only = false;
  std::string snapshot;  // implies read_only
  uint16_t queues = 0;   // 0 = online CPUs, at most kMaxDefaultQueues
  uint16_t depth = 128;  // per queue
  CacheMode cache = CacheMode::kNone;
  uint64_t cache_size_bytes = 0;  // 0 = engine default
  bool reissue = false;
  // Writes complete only once durable, so they survive a server crash.
  bool writethrough = false;
  // --data-file PATH: the external data file, instead of the image's name for
  // it (absolute once attached). May be written wherever it lies.
  std::string data_file;
  // --allow-devices: block devices named by the image may be opened
  // (engine/named_file.h).
  bool allow_devices = false;
};

enum class Verb {
  kHelp,
  kVersion,
  kAttach,
  kDetach,
  kList,
  kRecover,
  kMount,
  kUnmount,
  kFeatures,
  kPartitions,
};

// An optional kernel feature: where available (kAuto), required, or not used.
enum class Toggle { kAuto, kOn, kOff };

struct Command {
  Verb verb = Verb::kHelp;
  ImageSpec spec;           // attach, mount, partitions
  bool foreground = false;  // attach, recover
  // detach: one of device path, id, all. recover: id.
  std::string device;
  int64_t dev_id = -1;
  bool all = false;
  bool json = false;  // list, features, partitions --output=json
  // attach: --user-copy / --no-user-copy, --unprivileged (see ublk::Want).
  Toggle user_copy = Toggle::kAuto;
  Toggle unprivileged = Toggle::kAuto;
  // mount --partition M: 0 the whole disk, -1 (no option) the whole disk or
  // the only partition with a file system (see ChooseMountTarget).
  int partition = -1;
  std::string dir;  // mount, unmount
  // help: `COMMAND --help` sets the command's own help (every option it
  // takes); empty for plain `--help` (the overview, kUsage).
  std::string help;
};

// `args` excludes argv[0]. Errors are one line for "ublk-qcow2: <msg>".
absl::StatusOr<Command> ParseCommandLine(std::span<const std::string> args);

// "4096", "64K", "8M", "1G" (binary units, optional trailing "iB"/"B").
absl::StatusOr<uint64_t> ParseSize(absl::string_view s);

// "/dev/ublkb3" or "/dev/ublkb3p2" -> 3.
absl::StatusOr<uint32_t> DevIdFromPath(absl::string_view path);

extern const char kUsage[];

}  // namespace uq::cli

#endif  // UQ_SRC_CLI_OPTIONS_H_
