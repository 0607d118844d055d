// An LD_PRELOAD library for the tests of --allow-devices: stat(2) reports
// the files listed in UQ_FAKE_BLOCK_DEVICES (paths separated by ':') as block
// devices. An image can then name a "block device" as its backing or data
// file without privileges, a loop driver or a real disk: the check of
// engine::CheckNamedFile (a stat of the name) sees a block device, and every
// other call (open, fstat, reads) still sees the regular file, so a command
// let past the check reads it as it would read the device.
//
// The files are recognised by identity (device and inode), under whatever
// name reaches stat. Only stat is replaced (qcow2-img's one call that asks a
// named file's type); the listed files are looked up once, with the real stat.
#include <dlfcn.h>
#include <sys/stat.h>

#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

namespace {

using StatFn = int (*)(const char*, struct stat*);

StatFn RealStat() {
  static const StatFn real = reinterpret_cast<StatFn>(dlsym(RTLD_NEXT, "stat"));
  return real;
}

// (st_dev, st_ino) of each listed file that exists.
const std::vector<std::pair<dev_t, ino_t>>& Listed() {
  static const std::vector<std::pair<dev_t, ino_t>> listed = [] {
    std::vector<std::pair<dev_t, ino_t>> ids;
    const char* env = std::getenv("UQ_FAKE_BLOCK_DEVICES");
    std::string list = env != nullptr ? env : "";
    size_t start = 0;
    while (start <= list.size()) {
      size_t end = list.find(':', start);
      if (end == std::string::npos) end = list.size();
      const std::string path = list.substr(start, end - start);
      struct stat st;
      if (!path.empty() && RealStat()(path.c_str(), &st) == 0)
        ids.emplace_back(st.st_dev, st.st_ino);
      start = end + 1;
    }
    return ids;
  }();
  return listed;
}

}  // namespace

extern "C" int stat(const char* path, struct stat* st) noexcept {
  const int r = RealStat()(path, st);
  if (r != 0) return r;
  for (const auto& [dev, ino] : Listed()) {
    if (st->st_dev == dev && st->st_ino == ino) st->st_mode = (st->st_mode & ~S_IFMT) | S_IFBLK;
  }
  return r;
}
