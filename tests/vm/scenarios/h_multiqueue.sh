#!/usr/bin/env bash
# Read-only multi-queue: --queues 2, both queue threads share one open image; fio
# randread at depth 64 verifies against the converted raw image.
source "$(dirname "$0")/lib.sh"
need qemu-img fio cmp

cd "$WORK"
head -c 32M /dev/urandom >src.raw
qemu-img convert -O qcow2 src.raw img.qcow2
dev=$(attach --read-only --queues 2 img.qcow2)
q=$("$UQ" list --output=json | jq -r '.[0].queues')
log "$dev has $q queue(s)"
fio --name=rr --filename="$dev" --allow_file_create=0 --ioengine=io_uring --direct=1 --rw=randread --bs=4k \
  --iodepth=64 --size=32M --time_based --runtime=5 --numjobs=2 --group_reporting \
  --output="$WORK/fio.out" || { cat "$WORK/fio.out"; fail "fio"; }
cmp "$dev" src.raw || fail "device differs"
detach "$dev"
assert_no_devices
log PASS
