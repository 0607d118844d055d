#!/bin/sh
# Regenerates fuzz/corpus/header/: qcow2 images of each kind made by qemu-img
# (truncated to their first 4 KiB, which holds the header, the extensions and
# the backing file name; small images with a snapshot table are kept whole)
# plus malformed variants with one header field patched.
# Usage: fuzz/make_corpus.sh   (needs qemu-img)
set -eu
out=$(cd "$(dirname "$0")" && pwd)/corpus/header
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rm -rf "$out"
mkdir -p "$out"

# mk NAME [qemu-img create args...]: create, keep the first 4 KiB.
mk() {
  name=$1
  shift
  (cd "$tmp" && qemu-img create -q -f qcow2 "$@")
  head -c 4096 "$tmp/$name" >"$out/$name"
}
# patch FILE OFFSET HEXBYTES: overwrite bytes in a corpus file.
patch() {
  hex=$3
  bytes=""
  while [ -n "$hex" ]; do
    rest=${hex#??}
    bytes="$bytes\\$(printf '%03o' "0x${hex%"$rest"}")"
    hex=$rest
  done
  printf "$bytes" | dd of="$out/$1" bs=1 seek="$2" conv=notrunc status=none
}
derive() { cp "$out/$1" "$out/$2"; }

(cd "$tmp" && qemu-img create -q -f raw base.raw 1M)
mk v3_default.qcow2 v3_default.qcow2 16M
mk v2.qcow2 -o compat=0.10 v2.qcow2 16M
mk cluster_512.qcow2 -o cluster_size=512 cluster_512.qcow2 1M
mk cluster_2M.qcow2 -o cluster_size=2M cluster_2M.qcow2 16M
mk refcount_1.qcow2 -o refcount_bits=1 refcount_1.qcow2 16M
mk refcount_64.qcow2 -o refcount_bits=64 refcount_64.qcow2 16M
mk extended_l2_zstd_lazy.qcow2 -o extended_l2=on,compression_type=zstd,lazy_refcounts=on \
  extended_l2_zstd_lazy.qcow2 16M
mk backing.qcow2 -b base.raw -F raw backing.qcow2
mk data_file_raw.qcow2 -o data_file=data.raw,data_file_raw=on data_file_raw.qcow2 16M

# A snapshot table (kept whole: 512-byte clusters, a few KiB).
(cd "$tmp" && qemu-img create -q -f qcow2 -o cluster_size=512 snap.qcow2 64k &&
  qemu-img snapshot -c first snap.qcow2 && qemu-img snapshot -c second snap.qcow2)
cp "$tmp/snap.qcow2" "$out/snapshots.qcow2"

# Bitmaps extension (opaque, preserved).
(cd "$tmp" && qemu-img create -q -f qcow2 bitmap.qcow2 16M &&
  qemu-img bitmap --add bitmap.qcow2 b0)
head -c 4096 "$tmp/bitmap.qcow2" >"$out/bitmaps.qcow2"

# Malformed variants of v3_default (offsets from docs/interop/qcow2.txt).
derive v3_default.qcow2 bad_magic.qcow2 && patch bad_magic.qcow2 0 12345678
derive v3_default.qcow2 version_1.qcow2 && patch version_1.qcow2 4 00000001
derive v3_default.qcow2 version_4.qcow2 && patch version_4.qcow2 4 00000004
derive v3_default.qcow2 cluster_bits_8.qcow2 && patch cluster_bits_8.qcow2 20 00000008
derive v3_default.qcow2 cluster_bits_22.qcow2 && patch cluster_bits_22.qcow2 20 00000016
derive v3_default.qcow2 crypt_method_2.qcow2 && patch crypt_method_2.qcow2 32 00000002
derive v3_default.qcow2 reftable_at_0.qcow2 && patch reftable_at_0.qcow2 48 0000000000000000
derive v3_default.qcow2 unknown_incompat.qcow2 && patch unknown_incompat.qcow2 72 0000000000000200
derive v3_default.qcow2 refcount_order_7.qcow2 && patch refcount_order_7.qcow2 96 00000007
derive v3_default.qcow2 header_length_96.qcow2 && patch header_length_96.qcow2 100 00000060
derive v3_default.qcow2 ext_too_long.qcow2 && patch ext_too_long.qcow2 116 00100000
head -c 50 "$out/v3_default.qcow2" >"$out/truncated_50.qcow2"
ls -l "$out"
