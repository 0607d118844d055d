// The kinds of image the qcow2-img interop tests run on, each made by QEMU's
// own tools (qemu-img, qemu-io) so qemu-img can judge qcow2-img on them:
// v2 and v3, 512 B to 2 MiB clusters, refcount widths, zlib and zstd
// compressed clusters, extended L2 (alone and over a backing file), internal
// snapshots, qcow2 and raw backing chains, external data files, dirty
// lazy-refcount images, metadata / falloc / full preallocation, persistent
// bitmaps, an empty image and a raw file.
#ifndef UQ_TESTS_INTEROP_IMAGE_KINDS_H_
#define UQ_TESTS_INTEROP_IMAGE_KINDS_H_

#include <ostream>
#include <string>
#include <vector>

namespace uq::interop {

struct ImageKind {
  std::string name;
  // sh commands run in an empty directory; they leave the image there as
  // `img.qcow2` (for the raw kind too), with any backing or data files.
  std::string setup;
  bool raw = false;
  // The image names its external data file relatively. QEMU 7.2 opens such a
  // file relative to the working directory, qcow2-img (its engine) relative
  // to the image, as for backing files: the two agree only when run from the
  // image's directory.
  bool relative_data_file = false;
};

inline void PrintTo(const ImageKind& k, std::ostream* os) { *os << k.name; }

std::vector<ImageKind> ImageKinds();

// The setup of the kind called `name`; fails the current test (and returns
// "false", a setup that fails) for an unknown name.
std::string ImageKindSetup(const std::string& name);

}  // namespace uq::interop

#endif  // UQ_TESTS_INTEROP_IMAGE_KINDS_H_
