#!/usr/bin/env bash
# (a) raw image: attach, dd write + read back (buffered and O_DIRECT), list,
# detach; the bytes reached the file; no /dev/ublkb* left.
source "$(dirname "$0")/lib.sh"
need dd cmp jq

img=$WORK/disk.raw
truncate -s 64M "$img"
head -c 4M /dev/urandom >"$WORK/pattern"

dev=$(attach --format raw "$img")
log "attached $img as $dev"
[[ $(blockdev --getsize64 "$dev") == $((64 << 20)) ]] || fail "size $(blockdev --getsize64 "$dev")"
[[ $(cat /sys/block/$(basename "$dev")/queue/logical_block_size) == 512 ]] || fail "logical bs"
[[ $(cat /sys/block/$(basename "$dev")/queue/physical_block_size) == 4096 ]] || fail "physical bs"

dd if="$WORK/pattern" of="$dev" bs=1M seek=3 conv=fsync status=none
dd if="$WORK/pattern" of="$dev" bs=64k seek=512 oflag=direct status=none
echo 3 >/proc/sys/vm/drop_caches
cmp <(dd if="$dev" bs=1M skip=3 count=4 status=none) "$WORK/pattern" || fail "buffered read back"
cmp <(dd if="$dev" bs=64k skip=512 count=64 iflag=direct status=none) "$WORK/pattern" ||
  fail "direct read back"
cmp -n $((1 << 20)) "$dev" /dev/zero || fail "first MiB should read zeros"

"$UQ" list | grep -q "$dev" || fail "list does not show $dev"
"$UQ" list --output=json | jq -e --arg img "$img" '.[] | select(.image == $img) | .state == "LIVE"' \
  >/dev/null || fail "list --output=json does not show $img LIVE"

# Discard and write-zeroes reach the file.
blkdiscard -o $((3 << 20)) -l $((1 << 20)) "$dev" 2>/dev/null && {
  cmp -n $((1 << 20)) <(dd if="$dev" bs=1M skip=3 count=1 iflag=direct status=none) /dev/zero ||
    fail "discarded range does not read zeros"
}

detach "$dev"
assert_no_devices
cmp <(dd if="$img" bs=64k skip=512 count=64 status=none) "$WORK/pattern" || fail "file contents"
[[ -e /run/ublk-qcow2/$(dev_id "$dev").json ]] && fail "state file left behind"
log PASS
