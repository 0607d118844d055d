#!/usr/bin/env bash
# (i) WRITE_ZEROES on extended-L2 images through the block device: a range
# that starts in an unallocated subcluster and ends partway into an allocated
# one reads back as zeros (`blkdiscard -z`), with 128 KiB and 64 KiB clusters;
# the data after the range is intact; qemu-io agrees after detach and
# `qemu-img check` is clean.
source "$(dirname "$0")/lib.sh"
need blkdiscard qemu-img qemu-io cmp dd

# cluster size, zeroed offset, zeroed length
for spec in "128k 449536 4096" "64k 450048 2048"; do
  read -r cluster off len <<<"$spec"
  img=$WORK/ext-$cluster.qcow2
  qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=$cluster "$img" 1M
  qemu-io -f qcow2 -c "write -q -P 0x82 450560 4096" "$img"

  dev=$(attach "$img")
  log "cluster $cluster: attached $img as $dev"
  blkdiscard -z -o "$off" -l "$len" "$dev" || fail "blkdiscard -z failed"
  cmp -n "$len" <(dd if="$dev" bs=512 skip=$((off / 512)) count=$((len / 512)) iflag=direct \
    status=none) /dev/zero || fail "cluster $cluster: zeroed range does not read zeros"
  tail=$((450560 + 4096 - off - len))
  cmp -n "$tail" <(dd if="$dev" bs=512 skip=$(((off + len) / 512)) count=$((tail / 512)) \
    iflag=direct status=none) <(head -c "$tail" /dev/zero | tr '\0' '\202') ||
    fail "cluster $cluster: the bytes after the range lost their data"
  detach "$dev"

  qemu-io -f qcow2 -c "read -q -P 0 $off $len" -c "read -q -P 0x82 $((off + len)) $tail" "$img" \
    >"$WORK/qemu-io.out" 2>&1 || { cat "$WORK/qemu-io.out" >&2; fail "qemu-io disagrees"; }
  grep -q "verification failed" "$WORK/qemu-io.out" && fail "qemu-io: $(cat "$WORK/qemu-io.out")"
  check_image "$img"
done
assert_no_devices
log PASS
