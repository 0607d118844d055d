#!/usr/bin/env bash
# (m) Writable multi-queue: one image, Q queue threads (argument, default 2),
# all sharing one engine state. Each part ends with `qemu-img check` exiting
# 0 (no leaks, no corruption):
#  1. an overlay on a backing file: fio randrw 4 KiB depth 64 numjobs 2 with
#     md5 verify (each job its own region), then the device must equal what
#     fio wrote over the backing file's bytes;
#  2. mkfs.ext4, mount, four concurrent writers, unmount, e2fsck -fn clean,
#     re-attach and the files' checksums match;
#  3. kill -9 during fio writes on every queue, `recover` (restores all Q
#     queues), fio's md5 verify passes across it, detach.
source "$(dirname "$0")/lib.sh"
need qemu-img fio jq mkfs.ext4 e2fsck sha256sum cmp
Q=${1:-2}
cd "$WORK"

queues_of() {
  "$UQ" list --output=json | jq -r ".[] | select(.id == $(dev_id "$1")) | .queues"
}
attach_q() {
  local dev q
  dev=$(attach --queues "$Q" "$@")
  q=$(queues_of "$dev")
  [[ $q == "$Q" ]] || fail "$dev has $q queue(s), not $Q"
  echo "$dev"
}

# --- 1: overlay with a backing file
head -c 64M /dev/urandom >base.raw
qemu-img convert -q -f raw -O qcow2 base.raw base.qcow2
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 overlay.qcow2
dev=$(attach_q overlay.qcow2)
log "[overlay] $dev serves $Q queues"
fio --name=rw --filename="$dev" --allow_file_create=0 --ioengine=io_uring --direct=1 \
  --rw=randrw --bs=4k --iodepth=64 --numjobs=2 --size=16M --offset_increment=32M \
  --verify=md5 --do_verify=1 --verify_fatal=1 --group_reporting \
  --output=fio1.out || { cat fio1.out; fail "[overlay] fio randrw verify"; }
grep -E "(read|write): IOPS" fio1.out | sed "s/^/[overlay] /"
# Outside fio's regions ([16M, 32M) and past 48M) the backing file shows
# through untouched.
cmp -n $((16 << 20)) -i $((16 << 20)) base.raw "$dev" ||
  fail "[overlay] backing bytes changed outside fio's regions"
sha256sum <"$dev" >dev.sum
detach "$dev"
check_image overlay.qcow2
qemu-img convert -O raw overlay.qcow2 overlay.raw
sha256sum <overlay.raw | cmp -s - dev.sum || fail "[overlay] image differs from what the device showed"
rm -f overlay.raw base.raw
log "[overlay] verified; qemu-img convert matches the device"

# --- 2: ext4 with concurrent writers
qemu-img create -q -f qcow2 fs.qcow2 256M
mkdir -p mnt
dev=$(attach_q fs.qcow2)
mkfs.ext4 -q -F "$dev" || fail "[ext4] mkfs"
mount "$dev" mnt || fail "[ext4] mount"
for w in 1 2 3 4; do
  (mkdir "mnt/w$w" && for i in $(seq 8); do
    head -c $(((w * 7 + i) * 40000)) /dev/urandom >"mnt/w$w/f$i"
  done) &
done
wait
(cd mnt && sha256sum w*/*) >sums
umount mnt
detach "$dev"
check_image fs.qcow2
qemu-img convert -O raw fs.qcow2 fs.raw
e2fsck -fn fs.raw >fsck.out 2>&1 || { cat fsck.out; fail "[ext4] e2fsck"; }
rm -f fs.raw
dev=$(attach_q fs.qcow2)
mount "$dev" mnt || fail "[ext4] re-mount"
(cd mnt && sha256sum -c --quiet ../sums) || fail "[ext4] checksums differ after re-attach"
umount mnt
detach "$dev"
check_image fs.qcow2
log "[ext4] 4 writers, e2fsck clean, checksums match"

# --- 3: kill -9 during writes on every queue, recover all queues
qemu-img create -q -f qcow2 crash.qcow2 128M
dev=$(attach_q --reissue crash.qcow2)
old_pid=$(server_pid "$dev")
fio --name=rec --filename="$dev" --allow_file_create=0 --ioengine=io_uring --direct=1 \
  --rw=randwrite --bs=4k --iodepth=16 --numjobs=2 --size=16M --offset_increment=32M \
  --rate_iops=800 --verify=md5 --do_verify=1 --verify_fatal=1 --group_reporting \
  --output=fio3.out &
fio_pid=$!
wait_for_writes "$dev" 1000
kill -0 $fio_pid 2>/dev/null || { cat fio3.out; fail "[crash] fio ended before the crash"; }
log "[crash] kill -9 server $old_pid"
kill -9 "$old_pid"
new_dev=$("$UQ" recover -n "$(dev_id "$dev")") || fail "[crash] recover failed"
[[ $new_dev == "$dev" ]] || fail "[crash] recover printed '$new_dev', expected $dev"
[[ $(queues_of "$dev") == "$Q" ]] || fail "[crash] recovered device has $(queues_of "$dev") queues"
wait $fio_pid || { cat fio3.out; fail "[crash] fio verify failed across kill -9 + recover"; }
log "[crash] fio verified across kill -9 + recover of $Q queues"
detach "$dev"
assert_no_devices
check_image crash.qcow2
log PASS
