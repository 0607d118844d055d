#include "tests/interop/image_kinds.h"

#include <gtest/gtest.h>

namespace uq::interop {

std::vector<ImageKind> ImageKinds() {
  // Compressible but not uniform data for the compressed images.
  const std::string mixed_raw =
      "qemu-img create -q -f raw src.raw 32M && "
      "qemu-io -f raw -c 'write -P 0x5a 0 3M' -c 'write -P 0xa5 8M 1M' "
      "-c 'write -P 0x01 12M 64k' -c 'write -P 0x02 12352k 12k' -c 'write -P 0x03 30M 2M' "
      "src.raw >/dev/null && head -c 262144 /dev/urandom | dd of=src.raw bs=64k seek=64 "
      "conv=notrunc status=none";
  const std::string some_writes =
      "qemu-io -c 'write -P 0x11 0 1M' -c 'write -P 0x22 5M 300k' -c 'write -z 1536k 64k' "
      "-c 'write -P 0x33 7M 4k' img.qcow2 >/dev/null";
  const std::string create = "qemu-img create -q -f qcow2 ";
  return {
      {"plain_64k", create + "img.qcow2 32M && " + some_writes},
      {"cluster_512", create + "-o cluster_size=512 img.qcow2 8M && " + some_writes},
      {"cluster_4k", create + "-o cluster_size=4k img.qcow2 16M && " + some_writes},
      {"cluster_2M", create + "-o cluster_size=2M img.qcow2 64M && " + some_writes},
      {"refcount_bits_1", create + "-o refcount_bits=1 img.qcow2 32M && " + some_writes},
      {"refcount_bits_64", create + "-o refcount_bits=64 img.qcow2 32M && " + some_writes},
      {"compat_0_10", create + "-o compat=0.10 img.qcow2 32M && " + some_writes},
      {"compressed_zlib", mixed_raw + " && qemu-img convert -c -O qcow2 src.raw img.qcow2"},
      {"compressed_zstd",
       mixed_raw +
           " && qemu-img convert -c -O qcow2 -o compression_type=zstd,cluster_size=16k src.raw "
           "img.qcow2"},
      {"extended_l2",
       create + "-o extended_l2=on img.qcow2 32M && qemu-io -c 'write -P 0x11 4k 4k' "
                "-c 'write -P 0x22 130k 6k' -c 'write -z 1M 8k' -c 'write -P 0x33 2M 64k' "
                "-c 'write -z -u 2052k 4k' img.qcow2 >/dev/null"},
      {"extended_l2_backing",
       create + "base.qcow2 16M && qemu-io -c 'write -P 0x44 0 16M' base.qcow2 >/dev/null && " +
           create +
           "-o extended_l2=on,cluster_size=32k -b base.qcow2 -F qcow2 img.qcow2 && "
           "qemu-io -c 'write -P 0x11 4k 2k' -c 'write -z 64k 4k' img.qcow2 >/dev/null"},
      {"snapshots",
       create + "img.qcow2 32M && " + some_writes +
           " && qemu-img snapshot -c one img.qcow2 && qemu-io -c 'write -P 0x44 64k 128k' "
           "img.qcow2 >/dev/null && qemu-img snapshot -c two img.qcow2 && "
           "qemu-io -c 'write -P 0x55 6M 1M' img.qcow2 >/dev/null"},
      {"backing_qcow2",
       create +
           "-o cluster_size=4k base.qcow2 32M && qemu-io -c 'write -P 0x66 0 20M' "
           "-c 'write -z 4M 1M' base.qcow2 >/dev/null && " +
           create +
           "-b base.qcow2 -F qcow2 img.qcow2 && qemu-io -c 'write -P 0x77 1M 1M' img.qcow2 "
           ">/dev/null"},
      {"backing_raw_shorter",
       "qemu-img create -q -f raw base.raw 24M && qemu-io -f raw -c 'write -P 0x66 0 24M' "
       "base.raw >/dev/null && " +
           create +
           "-b base.raw -F raw img.qcow2 32M && qemu-io -c 'write -P 0x77 1M 1M' img.qcow2 "
           ">/dev/null"},
      {"backing_chain_3",
       "qemu-img create -q -f raw base.raw 32M && qemu-io -f raw -c 'write -P 0x66 0 32M' "
       "base.raw >/dev/null && " +
           create + "-b base.raw -F raw mid.qcow2 && qemu-io -c 'write -P 0x77 2M 3M' mid.qcow2 " +
           ">/dev/null && " + create +
           "-o cluster_size=16k -b mid.qcow2 -F qcow2 img.qcow2 && qemu-io -c 'write -P 0x88 "
           "4M 2M' img.qcow2 >/dev/null"},
      {"data_file", create + "-o data_file=img.data img.qcow2 32M && " + some_writes, false, true},
      {"data_file_raw",
       create + "-o data_file=img.data,data_file_raw=on img.qcow2 32M && " + some_writes, false,
       true},
      {"lazy_refcounts_dirty",
       create +
           "-o lazy_refcounts=on,cluster_size=4k img.qcow2 16M && { qemu-io -c 'write -P 0x11 0 "
           "1M' -c 'write -P 0x22 3M 256k' -c 'flush' -c 'write -P 0x33 8M 512k' -c abort "
           "img.qcow2 >/dev/null 2>&1 || true; }"},
      {"prealloc_metadata", create + "-o preallocation=metadata img.qcow2 32M && " + some_writes},
      {"prealloc_falloc", create + "-o preallocation=falloc img.qcow2 16M && " + some_writes},
      {"prealloc_full",
       create + "-o preallocation=full,cluster_size=4k img.qcow2 8M && " + some_writes},
      {"bitmaps",
       create +
           "img.qcow2 32M && qemu-img bitmap --add -g 128k img.qcow2 b0 && "
           "qemu-img bitmap --add --disable img.qcow2 b1 && " +
           some_writes +
           " && qemu-img bitmap --add img.qcow2 b2 && qemu-io -c 'write 20M 1M' img.qcow2 "
           ">/dev/null"},
      {"empty_1G", create + "img.qcow2 1G"},
      {"raw",
       "qemu-img create -q -f raw img.qcow2 16M && qemu-io -f raw -c 'write -P 1 1M 64k' "
       "-c 'write -P 2 5M 1M' img.qcow2 >/dev/null",
       true},
  };
}

std::string ImageKindSetup(const std::string& name) {
  for (const ImageKind& k : ImageKinds()) {
    if (k.name == name) return k.setup;
  }
  ADD_FAILURE() << "no image kind " << name;
  return "false";
}

}  // namespace uq::interop
