#!/usr/bin/env bash
# (d) fio 4k randwrite at depth 64 with md5 verify on an overlay over a
# backing file: zero verify errors; qemu-img check clean afterwards.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io fio

cd "$WORK"
qemu-img create -q -f qcow2 base.qcow2 128M
qemu-io -f qcow2 -c "write -P 0x5a 0 64M" base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 overlay.qcow2

dev=$(attach overlay.qcow2)
fio --name=verify --filename="$dev" --allow_file_create=0 --ioengine=io_uring --direct=1 --rw=randwrite --bs=4k \
  --iodepth=64 --size=48M --offset=8M --verify=md5 --do_verify=1 --verify_fatal=1 \
  --verify_dump=0 --output="$WORK/fio.out" || { cat "$WORK/fio.out"; fail "fio exited non-zero"; }
grep -qi "verify.*fail\|bad magic\|md5.*mismatch" "$WORK/fio.out" && { cat "$WORK/fio.out"; fail "verify errors"; }
grep -E "err= *0" "$WORK/fio.out" >/dev/null || { cat "$WORK/fio.out"; fail "fio reported errors"; }
# Untouched ranges still come from the backing file.
cmp -n $((8 << 20)) "$dev" <(head -c 8M /dev/zero | tr '\0' 'Z') ||
  fail "backing data below the fio range changed"
detach "$dev"
assert_no_devices
check_image overlay.qcow2
log PASS
