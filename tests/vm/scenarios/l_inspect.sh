#!/usr/bin/env bash
# (l) inspection without --partition: `partitions --output=json` reports what
# `sfdisk -J` reports for the same disk (GPT with names and attributes, MBR
# with logical partitions); `mount IMAGE DIR` mounts a bare file system, the
# one Linux partition of a GPT disk, and refuses a disk with two (lists them,
# exit 1, nothing attached or mounted).
source "$(dirname "$0")/lib.sh"
need qemu-img sfdisk mkfs.ext4 jq
mkdir -p "$WORK/mnt"

wait_for() { for _ in $(seq 50); do [[ -b $1 ]] && return 0; sleep 0.1; done; fail "$1 did not appear"; }

# new_disk IMG SFDISK_SCRIPT: a 64 MiB qcow2 image partitioned by sfdisk
# through ublk; leaves $dev attached.
new_disk() {
  qemu-img create -q -f qcow2 "$1" 64M
  dev=$(attach "$1")
  if [[ -n $2 ]]; then
    printf '%b' "$2" | sfdisk -q "$dev" || fail "sfdisk on $dev"
    blockdev --rereadpt "$dev" 2>/dev/null || true
  fi
}

# compare_with_sfdisk IMG: sfdisk -J of the attached $dev against
# `partitions --output=json IMG` once detached. Nodes are compared by what
# follows the device (sfdisk: /dev/ublkbN + p1; ours: IMG + p1).
compare_with_sfdisk() {
  local img=$1 norm
  norm='.partitiontable | .device as $d | del(.device)
        | .partitions |= map(.node |= ltrimstr($d))'
  sfdisk -J "$dev" | jq -S "$norm" >"$WORK/sfdisk.json" || fail "sfdisk -J $dev"
  detach "$dev"
  "$UQ" partitions --output=json "$img" >"$WORK/ours.raw.json" || fail "partitions $img"
  jq -S "$norm" "$WORK/ours.raw.json" >"$WORK/ours.json"
  diff -u "$WORK/sfdisk.json" "$WORK/ours.json" || fail "partitions --output=json differs from sfdisk -J"
  [[ $(jq -r .partitiontable.device "$WORK/ours.raw.json") == "$img" ]] || fail "device is not $img"
  log "$(basename "$img"): partitions --output=json matches sfdisk -J ($(jq '.partitions | length' "$WORK/sfdisk.json") partitions)"
}

# --- a bare file system -----------------------------------------------------
img=$WORK/bare.qcow2
new_disk "$img" ""
mkfs.ext4 -q -F -L bare "$dev" || fail "mkfs"
mount "$dev" "$WORK/mnt" && echo bare >"$WORK/mnt/which" && umount "$WORK/mnt"
detach "$dev"
"$UQ" partitions --output=json "$img" >"$WORK/bare.json" || fail "partitions on a bare disk"
jq -e --arg img "$img" '(has("partitiontable") | not) and .filesystems == [{"node": $img,
       "partition": 0, "type": "ext4", "label": "bare"}]' "$WORK/bare.json" >/dev/null ||
  fail "bare disk: $(cat "$WORK/bare.json")"
out=$("$UQ" mount "$img" "$WORK/mnt") || fail "mount of a bare file system"
[[ $out =~ ^/dev/ublkb[0-9]+$ ]] || fail "mount printed '$out', not the whole disk"
[[ $(cat "$WORK/mnt/which") == bare ]] || fail "wrong file system mounted"
"$UQ" unmount "$WORK/mnt" || fail "unmount"
assert_no_devices
log "bare file system: mounted $out"

# --- GPT, one Linux partition (and an unformatted BIOS boot one) -------------
img=$WORK/one.qcow2
new_disk "$img" 'label: gpt\nsize=1M, type=21686148-6449-6E6F-744E-656564454649\nsize=40M, type=L, name="data"\n'
wait_for "${dev}p2"
mkfs.ext4 -q -F -L one "${dev}p2" || fail "mkfs p2"
mount "${dev}p2" "$WORK/mnt" && echo one >"$WORK/mnt/which" && umount "$WORK/mnt"
compare_with_sfdisk "$img"
out=$("$UQ" mount "$img" "$WORK/mnt") || fail "mount of the only Linux partition"
[[ $out =~ ^/dev/ublkb[0-9]+p2$ ]] || fail "mount printed '$out', not partition 2"
[[ $(cat "$WORK/mnt/which") == one ]] || fail "wrong file system mounted"
"$UQ" unmount "$WORK/mnt" || fail "unmount"
assert_no_devices
log "GPT with one Linux partition: mounted $out"

# --- GPT, two Linux partitions: listed, exit 1 -------------------------------
img=$WORK/two.qcow2
new_disk "$img" 'label: gpt\nsize=20M, type=L, name="first", attrs="RequiredPartition GUID:63"\nsize=20M, type=L\n'
wait_for "${dev}p2"
mkfs.ext4 -q -F -L first "${dev}p1" && mkfs.ext4 -q -F -L second "${dev}p2" || fail "mkfs"
compare_with_sfdisk "$img"
rc=0
"$UQ" mount "$img" "$WORK/mnt" >"$WORK/out" 2>"$WORK/err" || rc=$?
[[ $rc == 1 ]] || fail "mount with two file systems exited $rc: $(cat "$WORK/out" "$WORK/err")"
[[ ! -s $WORK/out ]] || fail "mount printed on stdout: $(cat "$WORK/out")"
grep -Eq '^ +1 +2048 +40960 +20 MiB +Linux filesystem +ext4 +first$' "$WORK/err" &&
  grep -Eq '^ +2 +43008 +40960 +20 MiB +Linux filesystem +ext4 +second$' "$WORK/err" ||
  fail "partitions not listed: $(cat "$WORK/err")"
tail -1 "$WORK/err" | grep -q -- "choose one with --partition N" || fail "last line: $(tail -1 "$WORK/err")"
mountpoint -q "$WORK/mnt" && fail "something was mounted"
assert_no_devices
log "GPT with two Linux partitions: listed, exit 1"
cat "$WORK/err"

# --- MBR with logical partitions -------------------------------------------
img=$WORK/dos.qcow2
new_disk "$img" 'label: dos\n,10M,83,*\n,,5\n,10M,83\n,10M,82\n'
compare_with_sfdisk "$img"
check_image "$img"
log PASS
