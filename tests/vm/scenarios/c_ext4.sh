#!/usr/bin/env bash
# (c) ext4 on a qcow2 device: mkfs, mount, write files, sync, unmount, detach;
# qemu-img check clean; e2fsck -fn clean on a converted copy; re-attach and
# the files' checksums match.
source "$(dirname "$0")/lib.sh"
need qemu-img mkfs.ext4 e2fsck sha256sum

img=$WORK/fs.qcow2
qemu-img create -q -f qcow2 "$img" 256M
mkdir -p "$WORK/mnt"

dev=$(attach "$img")
mkfs.ext4 -q -F "$dev" || fail "mkfs.ext4"
mount "$dev" "$WORK/mnt" || fail "mount"
for i in 1 2 3 4 5; do head -c $((i * 1500000)) /dev/urandom >"$WORK/mnt/file$i"; done
mkdir "$WORK/mnt/dir" && for i in $(seq 50); do echo "small $i" >"$WORK/mnt/dir/s$i"; done
(cd "$WORK/mnt" && sha256sum file* dir/*) >"$WORK/sums"
sync
umount "$WORK/mnt"
detach "$dev"
assert_no_devices

check_image "$img"
qemu-img convert -O raw "$img" "$WORK/fs.raw"
e2fsck -fn "$WORK/fs.raw" >"$WORK/fsck.out" 2>&1 || { cat "$WORK/fsck.out"; fail "e2fsck"; }
log "e2fsck -fn clean"
rm -f "$WORK/fs.raw"

dev=$(attach "$img")
mount "$dev" "$WORK/mnt" || fail "re-mount"
(cd "$WORK/mnt" && sha256sum -c --quiet "$WORK/sums") || fail "checksums differ after re-attach"
umount "$WORK/mnt"
detach "$dev"
assert_no_devices
check_image "$img"
log PASS
