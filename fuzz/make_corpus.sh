#!/bin/sh
# Regenerates the QEMU-made seeds of the fuzz corpora (needs qemu-img and
# qemu-io):
#  - fuzz/corpus/header/: qcow2 images of each kind (truncated to their first
#    4 KiB, which holds the header, the extensions and the backing file name;
#    small images with a snapshot table are kept whole) plus malformed
#    variants with one header field patched;
#  - fuzz/corpus/image/: whole tiny images (512-byte clusters where QEMU allows
#    it, a few KiB each) with data, zero clusters, discards, compressed
#    clusters, snapshots, a backing file or a data file named, a dirty
#    lazy-refcount image; extended L2 needs 16 KiB clusters, so those two are
#    about 83 KiB (scripts/fuzz.sh's -max_len for `image` fits them).
#  - fuzz/corpus/opstream/: one seed per image kind (the first three bytes
#    pick it, see fuzz/opstream_fuzz.cc) followed by 160 pseudo-random
#    request bytes (awk's generator, seeded per file, so reruns agree).
#    Files named regress_* in fuzz/corpus/image/ and fuzz/corpus/opstream/
#    are findings of the fuzzers, kept by hand: this script leaves them alone.
# Usage: fuzz/make_corpus.sh [header|image|opstream]   (all by default)
set -eu
corpus=$(cd "$(dirname "$0")" && pwd)/corpus
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
which=${1:-all}

make_image_corpus() {
  img=$corpus/image
  mkdir -p "$img"
  find "$img" -type f ! -name 'regress_*' -delete
  # im NAME SIZE CREATE-OPTIONS QEMU-IO-COMMANDS...: a whole image.
  im() {
    name=$1 size=$2 opts=$3
    shift 3
    (cd "$tmp" && rm -f "$name" && qemu-img create -q -f qcow2 -o "$opts" "$name" "$size")
    for c in "$@"; do (cd "$tmp" && qemu-io -c "$c" "$name" >/dev/null); done
    cp "$tmp/$name" "$img/$name"
  }
  (cd "$tmp" && qemu-img create -q -f raw base.raw 64k)
  im empty_512.qcow2 64k cluster_size=512
  im data_512.qcow2 64k cluster_size=512 'write -P 0x11 0 3k' 'write -P 0x22 9k 1536'
  im zero_discard_512.qcow2 64k cluster_size=512 'write -P 0x33 0 8k' 'write -z 1k 2k' \
    'discard 4k 1k' 'write -z -u 6k 1k'
  im v2_512.qcow2 64k cluster_size=512,compat=0.10 'write -P 0x44 1k 2k' 'write -z 4k 1k'
  im refcount1_512.qcow2 64k cluster_size=512,refcount_bits=1 'write -P 0x55 0 2k'
  im refcount64_512.qcow2 64k cluster_size=512,refcount_bits=64 'write -P 0x56 0 2k'
  im lazy_512.qcow2 64k cluster_size=512,lazy_refcounts=on 'write -P 0x57 0 2k'
  im prealloc_512.qcow2 4k cluster_size=512,preallocation=metadata 'write -P 0x58 1k 1k'
  im backing_512.qcow2 64k cluster_size=1k,backing_file=base.raw,backing_fmt=raw \
    'write -P 0x66 1536 1k'
  im data_file_1k.qcow2 64k cluster_size=1k,data_file=data.raw 'write -P 0x67 0 2k'
  im data_file_raw_1k.qcow2 64k cluster_size=1k,data_file=data2.raw,data_file_raw=on \
    'write -P 0x68 0 2k'
  im ext_l2.qcow2 1M cluster_size=16k,extended_l2=on 'write -P 0x11 0 3k' 'write -z 40k 20k'
  im ext_l2_backing.qcow2 1M cluster_size=16k,extended_l2=on,backing_file=base.raw,backing_fmt=raw \
    'write -P 0x12 2k 1k' 'write -z 8k 1k'
  # Compressed clusters (zlib and zstd), snapshots: convert / snapshot.
  (cd "$tmp" && qemu-img create -q -f raw src.raw 16k &&
    qemu-io -f raw -c 'write -P 0x71 0 4k' -c 'write -P 0x72 8k 2k' src.raw >/dev/null &&
    qemu-img convert -c -O qcow2 -o cluster_size=512 src.raw zlib.qcow2 &&
    qemu-img convert -c -O qcow2 -o cluster_size=512,compression_type=zstd src.raw zstd.qcow2)
  cp "$tmp/zlib.qcow2" "$img/compressed_zlib_512.qcow2"
  cp "$tmp/zstd.qcow2" "$img/compressed_zstd_512.qcow2"
  (cd "$tmp" && qemu-img create -q -f qcow2 -o cluster_size=512 snap.qcow2 16k &&
    qemu-io -c 'write -P 0x81 0 2k' snap.qcow2 >/dev/null && qemu-img snapshot -c one snap.qcow2 &&
    qemu-io -c 'write -P 0x82 1k 2k' snap.qcow2 >/dev/null)
  cp "$tmp/snap.qcow2" "$img/snapshot_512.qcow2"
  # Dirty: qemu-io abort leaves the dirty bit of a lazy-refcount image set.
  (cd "$tmp" && qemu-img create -q -f qcow2 -o cluster_size=512,lazy_refcounts=on dirty.qcow2 16k &&
    { qemu-io -c 'write -P 0x91 0 2k' -c abort dirty.qcow2 >/dev/null 2>&1 || true; })
  cp "$tmp/dirty.qcow2" "$img/dirty_lazy_512.qcow2"
  # Bitmaps extension and table.
  (cd "$tmp" && qemu-img create -q -f qcow2 -o cluster_size=512 bm.qcow2 16k &&
    qemu-img bitmap --add bm.qcow2 b0 && qemu-io -c 'write -P 0x92 0 1k' bm.qcow2 >/dev/null)
  cp "$tmp/bm.qcow2" "$img/bitmap_512.qcow2"
  ls -l "$img"
}

make_opstream_corpus() {
  ops=$corpus/opstream
  mkdir -p "$ops"
  find "$ops" -type f ! -name 'regress_*' -delete
  # seed NAME B0 B1 B2: config bytes, then 160 request bytes.
  seed() {
    bytes=$(awk -v s="$(printf '%s' "$1" | cksum | cut -d' ' -f1)" -v a="$2" -v b="$3" -v c="$4" \
      'BEGIN { srand(s); printf "\\%03o\\%03o\\%03o", a, b, c;
               for (i = 0; i < 160; i++) printf "\\%03o", int(rand() * 256) }')
    printf "$bytes" >"$ops/$1"
  }
  # B0: cluster bits index (0-7), 8 = version 2, 16/32 = raw/qcow2 backing,
  # 64 = metadata write-through, 128 = tiny caches. B1: 1 = extended L2,
  # 2 = lazy refcounts, 4 * refcount order, 32 = zstd. B2: size in 128 KiB - 2 (mod 3).
  seed c512_v3 0 16 3
  seed c1k_v2 9 0 1
  seed c4k_raw_backing 18 16 3
  seed c4k_qcow2_backing_tiny 162 16 2
  seed c8k_lazy_zstd 3 $((2 + 32 + 16)) 4
  seed c16k_ext_l2 4 17 7
  seed c16k_ext_l2_qcow2_backing 36 $((1 + 16)) 5
  seed c32k_ext_l2_writethrough 69 17 6
  seed c32k_ext_l2_raw_backing_tiny 213 $((1 + 2 + 12)) 7
  seed c64k_refcount1 6 0 7
  seed c64k_refcount64_writethrough 70 24 3
  seed c4k_v2_qcow2_backing_writethrough 106 0 3
  seed c512_refcount2_tiny 128 4 2
  seed c1k_v2_raw_backing 25 0 0
  seed c8k_writethrough_lazy 67 18 1
  seed c16k_zstd_tiny_writethrough 196 48 3
}

if [ "$which" = image ] || [ "$which" = all ]; then make_image_corpus; fi
if [ "$which" = opstream ] || [ "$which" = all ]; then make_opstream_corpus; fi
if [ "$which" = image ] || [ "$which" = opstream ]; then exit 0; fi

out=$corpus/header
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
