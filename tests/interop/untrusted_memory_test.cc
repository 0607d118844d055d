// Memory bounded whatever the image claims (issue 12, point 5): a sparse
// file whose apparent size is 256 GiB with 512-byte clusters (2^29 clusters:
// a dense in-memory refcount table would need 1 GiB) must be checked, and a
// dirty one refused for repair, under `ulimit -v 1000000` (about 1 GiB of
// address space), each with qemu-img's verdict or one error line, never an
// out-of-memory abort.
#include <gtest/gtest.h>

#include <string>

#include "tests/interop/interop_util.h"

namespace uq::interop {
namespace {

constexpr char kLimit[] = "ulimit -v 1000000 && ";

class UntrustedMemoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HaveTool("qemu-img")) GTEST_SKIP() << "qemu-img not installed";
    const RunResult r =
        In("qemu-img create -q -f qcow2 -o cluster_size=512 img.qcow2 1G && "
           "truncate -s 256G img.qcow2");
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  RunResult In(const std::string& command) const {
    return RunCommand("cd " + Quote(dir_.path()) + " && " + command);
  }
  static std::string Ours() { return Quote(QCOW2_IMG_PATH); }

  TempDir dir_;
};

TEST_F(UntrustedMemoryTest, CheckOfAHugeSparseFileAgreesWithQemuImg) {
  const RunResult theirs = In("qemu-img check img.qcow2");
  const RunResult ours = In(kLimit + Ours() + " check img.qcow2");
  EXPECT_EQ(ours.exit_code, theirs.exit_code) << ours.err;
  EXPECT_EQ(ours.out, theirs.out);
  EXPECT_EQ(ours.err, "");
}

TEST_F(UntrustedMemoryTest, DirtyHugeSparseFileGivesOneErrorLine) {
  // The dirty bit (incompatible feature bit 0, header byte 79): a writable
  // open rebuilds the refcounts, and a table for 2^29 clusters would exceed
  // QEMU's 8 MiB refcount-table limit.
  ASSERT_EQ(In("printf '\\001' | dd of=img.qcow2 bs=1 seek=79 conv=notrunc status=none").exit_code,
            0);
  // The file is 256 GiB of mostly holes: its size and first MiB stand for it.
  const std::string digest = "stat -c %s img.qcow2 && head -c 1M img.qcow2 | sha256sum";
  const RunResult before = In(digest);
  const RunResult ours = In(kLimit + Ours() + " io -c 'write 0 512' img.qcow2");
  EXPECT_EQ(ours.exit_code, 1);
  EXPECT_EQ(ours.err,
            "qcow2-img: img.qcow2: cannot rebuild refcounts: the new refcount table would exceed "
            "8 MiB\n");
  // Read-only inspection still works, and the file is unchanged.
  const RunResult read = In(kLimit + Ours() + " io -r -c 'read 0 512' img.qcow2");
  EXPECT_EQ(read.exit_code, 0) << read.err;
  EXPECT_EQ(In(digest).out, before.out);
}

}  // namespace
}  // namespace uq::interop
