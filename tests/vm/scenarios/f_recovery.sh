#!/usr/bin/env bash
# (f) crash handling.
#  1. kill -9 of the server during fio writes, `recover`, fio continues and its
#     md5 verify passes; detach; qemu-img check. Run twice: in the default mode
#     (attach --reissue: fetched requests are re-sent to the new server; the
#     engine writes each request's metadata to the image file before the
#     request completes, so no acknowledged write dies with the server's
#     metadata cache, without fsync), and with --writethrough (every write
#     fsynced before it completes).
#  2. kill -9 during writes, then detach (no recovery): the image has zero
#     corruptions (leaks allowed).
source "$(dirname "$0")/lib.sh"
need qemu-img fio jq

img=$WORK/crash.qcow2

# --- 1: recover
recover_run() {
  local tag=$1
  shift
  rm -f "$img"
  qemu-img create -q -f qcow2 "$img" 128M
  dev=$(attach --reissue "$@" "$img")
  old_pid=$(server_pid "$dev")
  fio --name=rec --filename="$dev" --allow_file_create=0 --ioengine=io_uring --direct=1 --rw=randwrite --bs=4k \
    --iodepth=16 --size=32M --rate_iops=1500 --verify=md5 --do_verify=1 --verify_fatal=1 \
    --output="$WORK/fio1-$tag.out" &
  fio_pid=$!
  wait_for_writes "$dev" 1000
  kill -0 $fio_pid 2>/dev/null || { cat "$WORK/fio1-$tag.out"; fail "[$tag] fio ended before the crash"; }
  log "[$tag] kill -9 server $old_pid"
  kill -9 "$old_pid"
  new_dev=$("$UQ" recover -n "$(dev_id "$dev")") || fail "[$tag] recover failed"
  [[ $new_dev == "$dev" ]] || fail "[$tag] recover printed '$new_dev', expected $dev"
  new_pid=$(server_pid "$dev")
  [[ $new_pid != "$old_pid" && -n $new_pid ]] || fail "[$tag] server pid did not change ($new_pid)"
  log "[$tag] recovered by pid $new_pid"
  wait $fio_pid || { cat "$WORK/fio1-$tag.out"; fail "[$tag] fio failed across the recovery"; }
  log "[$tag] fio verified across kill -9 + recover"
  grep -E "write: IOPS" "$WORK/fio1-$tag.out" | sed "s/^/[$tag] /" || true
  detach "$dev"
  assert_no_devices
  check_image "$img" allow-leaks
}
recover_run default
recover_run writethrough --writethrough

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
