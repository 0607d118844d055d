#!/usr/bin/env bash
# The demo's steps on a machine whose kernel has ublk (called by demo.sh).
set -euo pipefail
build=${1:?usage: demo-steps.sh BUILD_DIR}
uq="$build/src/cli/ublk-qcow2"
img="$build/tools/qcow2-img"
work=$(mktemp -d /tmp/uq-demo.XXXXXX)
dev=""
cleanup() {
  mountpoint -q "$work/mnt" 2>/dev/null && umount "$work/mnt"
  [[ -n "$dev" && -e "$dev" ]] && "$uq" detach "$dev" || true
  rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n== %s\n' "$*"; }

step "backing file: 64 MiB of patterned data, stored as compressed clusters"
"$img" create -f qcow2 "$work/plain.qcow2" 64M >/dev/null
"$img" io -c "write -P 0xa5 0 16M" -c "write -P 0x5a 32M 8M" "$work/plain.qcow2" >/dev/null
"$img" convert -c -O qcow2 -o compression_type=zstd "$work/plain.qcow2" "$work/base.qcow2"
rm -f "$work/plain.qcow2"
qemu-img check "$work/base.qcow2" | grep -i 'compressed clusters'
step "overlay: demo.qcow2 on top of base.qcow2"
"$img" create -f qcow2 -b "$work/base.qcow2" -F qcow2 "$work/demo.qcow2"
"$img" info "$work/demo.qcow2"

step "attach"
dev=$("$uq" attach "$work/demo.qcow2")
echo "attached: $dev"
"$uq" list
step "the device reads what qemu-img reads (compressed backing clusters included)"
qemu-img convert -U -O raw "$work/demo.qcow2" "$work/expected.raw"
cmp "$dev" "$work/expected.raw" && echo "identical: $(stat -c %s "$work/expected.raw") bytes"
rm -f "$work/expected.raw"

step "mkfs.ext4, mount, write and read a file"
mkfs.ext4 -q -F "$dev"
mkdir -p "$work/mnt"
mount "$dev" "$work/mnt"
echo "hello from a qcow2 image served by ublk-qcow2" > "$work/mnt/hello.txt"
dd if=/dev/urandom of="$work/mnt/random.bin" bs=1M count=8 status=none
sum=$(md5sum < "$work/mnt/random.bin")
sync
cat "$work/mnt/hello.txt"
umount "$work/mnt"

step "detach"
"$uq" detach "$dev"
dev=""
step "qemu-img check demo.qcow2"
qemu-img check "$work/demo.qcow2"

step "re-attach read-only, mount, and read the file back"
dev=$("$uq" attach --read-only "$work/demo.qcow2")
mount -o ro "$dev" "$work/mnt"
cat "$work/mnt/hello.txt"
[[ "$(md5sum < "$work/mnt/random.bin")" == "$sum" ]] && echo "random.bin checksum matches"
umount "$work/mnt"
"$uq" detach "$dev"
dev=""
echo
echo "demo: OK"
