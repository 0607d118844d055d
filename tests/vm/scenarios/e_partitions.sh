#!/usr/bin/env bash
# (e) partitioned image: sfdisk two partitions, ext4 on the second, then
# `ublk-qcow2 mount --partition 2` (read-only) and `unmount`.
source "$(dirname "$0")/lib.sh"
need qemu-img sfdisk mkfs.ext4

img=$WORK/parts.qcow2
qemu-img create -q -f qcow2 "$img" 128M
dev=$(attach "$img")
printf 'label: gpt\n,32M\n,\n' | sfdisk -q "$dev" || fail "sfdisk"
blockdev --rereadpt "$dev" 2>/dev/null || true
for _ in $(seq 50); do [[ -b ${dev}p2 ]] && break; sleep 0.1; done
[[ -b ${dev}p2 ]] || fail "${dev}p2 did not appear"
mkfs.ext4 -q -F "${dev}p2" || fail "mkfs on p2"
mkdir -p "$WORK/mnt"
mount "${dev}p2" "$WORK/mnt"
echo "hello from partition 2" >"$WORK/mnt/hello"
umount "$WORK/mnt"
detach "$dev"
assert_no_devices

out=$("$UQ" mount --partition 2 "$img" "$WORK/mnt") || fail "ublk-qcow2 mount failed"
log "mounted $out"
[[ $out == /dev/ublkb*p2 ]] || fail "mount printed '$out'"
[[ $(cat "$WORK/mnt/hello") == "hello from partition 2" ]] || fail "file content"
touch "$WORK/mnt/x" 2>/dev/null && fail "read-only mount is writable"
"$UQ" unmount "$WORK/mnt" || fail "unmount"
mountpoint -q "$WORK/mnt" && fail "still mounted"
assert_no_devices

# A partition that does not exist: error, nothing left behind.
if "$UQ" mount --partition 5 "$img" "$WORK/mnt" 2>"$WORK/err"; then fail "mount of p5 succeeded"; fi
grep -q "partition 5" "$WORK/err" || fail "unexpected message: $(cat "$WORK/err")"
assert_no_devices
check_image "$img"
log PASS
