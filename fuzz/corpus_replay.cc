// Replays every file of the checked-in corpus directories given on the
// command line through the fuzz entry, so the normal (gcc) build exercises
// the corpus on every ctest run. Exits non-zero if a directory is empty.
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

int main(int argc, char** argv) {
  int failures = 0;
  for (int i = 1; i < argc; ++i) {
    size_t count = 0;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(argv[i], ec)) {
      if (!entry.is_regular_file()) continue;
      std::ifstream f(entry.path(), std::ios::binary);
      std::vector<char> bytes((std::istreambuf_iterator<char>(f)),
                              std::istreambuf_iterator<char>());
      LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
      ++count;
    }
    std::printf("%s: %zu inputs replayed\n", argv[i], count);
    if (ec || count == 0) {
      std::fprintf(stderr, "corpus %s is empty or unreadable\n", argv[i]);
      ++failures;
    }
  }
  return failures ? 1 : 0;
}
