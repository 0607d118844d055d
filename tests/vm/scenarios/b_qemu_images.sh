#!/usr/bin/env bash
# (b) images made by qemu-img, attached read-only, read back byte for byte
# equal to `qemu-img convert -O raw`: backing chain, zlib and zstd compressed
# clusters, extended L2 (subclusters), an internal snapshot.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io cmp

cd "$WORK"
# 32 MiB of mixed content: random, zeros, a repeated pattern.
head -c 8M /dev/urandom >src.raw
head -c 8M /dev/zero >>src.raw
head -c 16M /dev/zero | tr "\\0" "q" >>src.raw

qemu-img create -q -f qcow2 base.qcow2 32M
qemu-io -f qcow2 -c "write -P 0x11 0 4M" -c "write -P 0x22 10M 3M" -c "write -z 12M 64k" \
  base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2
qemu-io -f qcow2 -c "write -P 0x33 1M 1M" -c "write -P 0x44 20M 512k" -c "discard 2M 64k" \
  mid.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
qemu-io -f qcow2 -c "write -P 0x55 3M 4k" -c "write -z 10M 1M" top.qcow2 >/dev/null

qemu-img convert -c -O qcow2 src.raw zlib.qcow2
qemu-img convert -c -O qcow2 -o compression_type=zstd src.raw zstd.qcow2
qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=64k el2.qcow2 32M
qemu-io -f qcow2 -c "write -P 0x66 4k 4k" -c "write -P 0x77 68k 8k" -c "write -P 0x88 1M 2k" \
  -c "write -z 1028k 32k" el2.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o cluster_size=4k small.qcow2 32M
qemu-io -f qcow2 -c "write -P 0x99 0 1M" -c "write -P 0xaa 5M 100k" small.qcow2 >/dev/null

failed=0
for img in base.qcow2 top.qcow2 zlib.qcow2 zstd.qcow2 el2.qcow2 small.qcow2; do
  qemu-img convert -O raw "$img" "$img.expected"
  dev=$(attach --read-only "$img")
  if cmp "$dev" "$img.expected"; then
    log "ok   $img ($dev)"
  else
    log "FAIL $img: device differs from qemu-img convert"
    failed=1
  fi
  detach "$dev"
done

# Internal snapshot: served read-only as it was when taken.
qemu-img convert -O raw base.qcow2 snap.expected
qemu-img snapshot -c s1 base.qcow2
qemu-io -f qcow2 -c "write -P 0xee 0 1M" base.qcow2 >/dev/null
dev=$(attach --snapshot s1 base.qcow2)
if cmp "$dev" snap.expected; then log "ok   base.qcow2 --snapshot s1"; else
  log "FAIL snapshot s1 differs"
  failed=1
fi
detach "$dev"

assert_no_devices
[[ $failed == 0 ]] || fail "some images differ"
log PASS
