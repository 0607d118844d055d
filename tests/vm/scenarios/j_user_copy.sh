#!/usr/bin/env bash
# (j) user copy on and off (6.12): for --user-copy and --no-user-copy, fio
# 4k randrw at depth 32 with md5 verify on an overlay over a backing file, and
# an ext4 round trip (mkfs, files, detach, qemu-img check, re-attach, checksums).
# `list --output=json` shows which data path each device uses.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io fio jq mkfs.ext4 sha256sum

cd "$WORK"
qemu-img create -q -f qcow2 base.qcow2 64M
qemu-io -f qcow2 -c "write -P 0x5a 0 32M" base.qcow2 >/dev/null
mkdir -p mnt

for mode in user-copy no-user-copy; do
  want=true
  [[ $mode == no-user-copy ]] && want=false

  # fio randrw with md5 verify.
  rm -f overlay.qcow2
  qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 overlay.qcow2
  dev=$(attach --$mode overlay.qcow2)
  got=$("$UQ" list --output=json | jq -r ".[] | select(.id == $(dev_id "$dev")) | .user_copy")
  [[ $got == "$want" ]] || fail "[$mode] list says user_copy=$got"
  fio --name=rw --filename="$dev" --allow_file_create=0 --ioengine=io_uring --direct=1 \
    --rw=randrw --bs=4k --iodepth=32 --size=24M --offset=4M --verify=md5 --do_verify=1 \
    --verify_fatal=1 --verify_dump=0 --output="fio-$mode.out" ||
    { cat "fio-$mode.out"; fail "[$mode] fio exited non-zero"; }
  grep -E "err= *0" "fio-$mode.out" >/dev/null || { cat "fio-$mode.out"; fail "[$mode] fio errors"; }
  grep -E "read: IOPS|write: IOPS" "fio-$mode.out" | sed "s/^/[$mode] /"
  cmp -n $((4 << 20)) "$dev" <(head -c 4M /dev/zero | tr '\0' 'Z') ||
    fail "[$mode] backing data below the fio range changed"
  detach "$dev"
  check_image overlay.qcow2

  # ext4 round trip.
  rm -f fs.qcow2
  qemu-img create -q -f qcow2 fs.qcow2 128M
  dev=$(attach --$mode fs.qcow2)
  mkfs.ext4 -q -F "$dev" || fail "[$mode] mkfs.ext4"
  mount "$dev" mnt || fail "[$mode] mount"
  for i in 1 2 3; do head -c $((i * 1000000)) /dev/urandom >mnt/file$i; done
  (cd mnt && sha256sum file*) >sums
  umount mnt
  detach "$dev"
  check_image fs.qcow2
  dev=$(attach --$mode fs.qcow2)
  mount "$dev" mnt || fail "[$mode] re-mount"
  (cd mnt && sha256sum -c --quiet ../sums) || fail "[$mode] checksums differ after re-attach"
  umount mnt
  detach "$dev"
  check_image fs.qcow2
  log "ok   $mode: fio randrw verify + ext4 round trip"
done
assert_no_devices
log PASS
