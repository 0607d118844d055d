#!/usr/bin/env bash
# (f) crash handling.
#  1. kill -9 of the server during fio writes (attach --reissue
#     --writethrough: fetched requests are re-sent to the new server, and a
#     write is acknowledged only once durable, so no acknowledged write dies
#     with the server's metadata cache), `recover`, fio continues and its md5
#     verify passes; detach; qemu-img check.
#  2. kill -9 during writes, then detach (no recovery): the image has zero
#     corruptions (leaks allowed).
source "$(dirname "$0")/lib.sh"
need qemu-img fio jq

img=$WORK/crash.qcow2
qemu-img create -q -f qcow2 "$img" 128M

# --- 1: recover
dev=$(attach --reissue --writethrough "$img")
old_pid=$(server_pid "$dev")
fio --name=rec --filename="$dev" --allow_file_create=0 --ioengine=io_uring --direct=1 --rw=randwrite --bs=4k \
  --iodepth=16 --size=32M --rate_iops=1500 --verify=md5 --do_verify=1 --verify_fatal=1 \
  --output="$WORK/fio1.out" &
fio_pid=$!
wait_for_writes "$dev" 1000
kill -0 $fio_pid 2>/dev/null || { cat "$WORK/fio1.out"; fail "fio ended before the crash"; }
log "kill -9 server $old_pid"
kill -9 "$old_pid"
new_dev=$("$UQ" recover -n "$(dev_id "$dev")") || fail "recover failed"
[[ $new_dev == "$dev" ]] || fail "recover printed '$new_dev', expected $dev"
new_pid=$(server_pid "$dev")
[[ $new_pid != "$old_pid" && -n $new_pid ]] || fail "server pid did not change ($new_pid)"
log "recovered by pid $new_pid"
wait $fio_pid || { cat "$WORK/fio1.out"; fail "fio failed across the recovery"; }
log "fio verified across kill -9 + recover"
detach "$dev"
assert_no_devices
check_image "$img" allow-leaks

# --- 2: crash, then detach without recovering
dev=$(attach "$img")
pid=$(server_pid "$dev")
fio --name=crash --filename="$dev" --allow_file_create=0 --ioengine=io_uring --direct=1 --rw=randwrite --bs=4k \
  --iodepth=32 --size=64M --time_based --runtime=60 --output="$WORK/fio2.out" &
fio_pid=$!
wait_for_writes "$dev" 1000
log "kill -9 server $pid"
kill -9 "$pid"
"$UQ" detach "$dev" || fail "detach of a crashed device failed"
wait $fio_pid && fail "fio succeeded although its device went away"
assert_no_devices
check_image "$img" allow-leaks
log PASS
