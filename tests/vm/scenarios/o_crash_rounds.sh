#!/usr/bin/env bash
# (o) Crash rounds: ROUNDS times (argument; default 3, 20 with UQ_LONG=1, or
# UQ_CRASH_ROUNDS), on one image that keeps its state from round to round:
#   attach (default queue count; every other round --writethrough), start fio
#   random writes with an md5 verify pass after them, kill -9 the server at a
#   random moment of that job (in two rounds of three during the writes, in
#   the third after them, during the verify reads), `recover`, let fio
#   finish: its verify must pass across the crash; then detach and
#   `qemu-img check` (leaks allowed, nothing else).
# The moments come from UQ_CRASH_SEED (default random, printed: rerun a
# failing series with it).
source "$(dirname "$0")/lib.sh"
need qemu-img fio jq

rounds=${1:-3}
[[ ${UQ_LONG:-0} == 1 ]] && rounds=20
rounds=${UQ_CRASH_ROUNDS:-$rounds}
seed=${UQ_CRASH_SEED:-$(od -An -N2 -tu2 /dev/urandom | tr -d ' ')}
RANDOM=$seed
log "$rounds rounds, seed $seed (rerun: UQ_CRASH_SEED=$seed)"

cd "$WORK" # fio keeps its verify state files in the working directory
img=$WORK/rounds.qcow2
qemu-img create -q -f qcow2 "$img" 128M
size_mb=16
writes=$((size_mb * 256)) # 4 KiB writes per fio pass
in_writes=0 in_verify=0

for round in $(seq "$rounds"); do
  mode=default args=(--reissue)
  if ((round % 2 == 0)); then mode=writethrough args=(--reissue --writethrough); fi
  dev=$(attach "${args[@]}" "$img")
  old_pid=$(server_pid "$dev")
  stat=/sys/block/$(basename "$dev")/stat
  read -r reads_before _ <"$stat" # the attach's partition scan reads too
  # Each round writes its own region with its own data, so a stale block
  # from an earlier round cannot pass the verify.
  offset=$(((round % 6) * size_mb))
  fio --name=r$round --filename="$dev" --allow_file_create=0 --ioengine=io_uring --direct=1 \
    --rw=randwrite --bs=4k --iodepth=16 --offset=${offset}M --size=${size_mb}M \
    --rate_iops=1500 --randseed=$((seed * 100 + round)) \
    --verify=md5 --do_verify=1 --verify_fatal=1 --output="$WORK/fio-$round.out" &
  fio_pid=$!
  # Two in three rounds crash during the writes, after a random number of
  # them; every third, second round, once every write is done, at a random
  # moment of the verify reads.
  if ((round % 3 != 2)); then
    phase=writes
    wait_for_writes "$dev" $((100 + RANDOM % (writes - 400)))
  else
    phase=verify
    # Verify reads are not rate-limited (16 MiB in about half a second), so
    # poll often, with bash's own read rather than a process per look.
    target=$((reads_before + 1 + RANDOM % 1500))
    for _ in $(seq 60000); do
      read -r reads _ <"$stat"
      ((reads >= target)) && break
      sleep 0.01
    done
  fi
  kill -0 $fio_pid 2>/dev/null || { cat "$WORK/fio-$round.out"; fail "[round $round] fio ended before the crash"; }
  kill -9 "$old_pid"
  new_dev=$("$UQ" recover -n "$(dev_id "$dev")") || fail "[round $round] recover failed"
  [[ $new_dev == "$dev" ]] || fail "[round $round] recover printed '$new_dev', expected $dev"
  wait $fio_pid || { cat "$WORK/fio-$round.out"; fail "[round $round] fio verify failed across kill -9 + recover"; }
  detach "$dev"
  assert_no_devices
  check_image "$img" allow-leaks
  [[ $phase == writes ]] && in_writes=$((in_writes + 1)) || in_verify=$((in_verify + 1))
  log "[round $round] $mode: kill -9 during the $phase, recovered, verified, checked"
done
log "$rounds rounds: $in_writes crashed during writes, $in_verify during the verify reads"
log PASS
