#!/usr/bin/env bash
# (n) attach at boot, as ublk-qcow2@.service runs it: the unit's ExecStart
# with a /etc/ublk-qcow2/NAME.conf-style file, under a stand-in for systemd's
# notification socket (an abstract name, then a path). READY=1 must arrive
# only once the device is live; SIGTERM (systemctl stop) must send
# STOPPING=1, remove the device, exit 0 and leave the image clean.
source "$(dirname "$0")/lib.sh"
need qemu-img python3

unit=${UQ_SOURCE_DIR:?}/dist/systemd/ublk-qcow2@.service.in
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
[[ $exec_start == '@UQ_BINDIR@/ublk-qcow2 attach --foreground $OPTIONS -- ${IMAGE}' ]] ||
  fail "the unit's ExecStart changed ('$exec_start'): update this scenario"

# listen NAME LOG: records each datagram on NAME (a path or @abstract) as one
# line of LOG until STOPPING=1.
listen() {
  python3 - "$1" "$2" <<'PY' &
import socket, sys
name, log = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("\0" + name[1:] if name.startswith("@") else name)
open(log + ".bound", "w").close()
s.settimeout(300)
with open(log, "a") as f:
    while True:
        msg = s.recv(4096).decode()
        f.write(msg.replace("\n", " ") + "\n")
        f.flush()
        if "STOPPING=1" in msg:
            break
PY
  listener=$!
  for _ in $(seq 100); do [[ -e $2.bound ]] && return 0; sleep 0.1; done
  fail "notification listener did not start"
}

# run_unit NOTIFY_SOCKET CONF: the unit's command line with CONF's IMAGE and
# OPTIONS, as systemd expands it ($OPTIONS split at spaces, ${IMAGE} one word).
run_unit() {
  # systemd's EnvironmentFile: VAR=value per line, the value unquoted and
  # taken whole (not shell syntax: OPTIONS=--read-only --depth 32 is one value).
  local IMAGE="" OPTIONS="" key value
  while IFS='=' read -r key value; do
    case $key in
      IMAGE) IMAGE=$value ;;
      OPTIONS) OPTIONS=$value ;;
    esac
  done <"$2"
  # shellcheck disable=SC2086
  NOTIFY_SOCKET=$1 "$UQ" attach --foreground $OPTIONS -- "$IMAGE" >"$WORK/stdout" 2>"$WORK/stderr" &
  server=$!
}

one_run() {  # NOTIFY_SOCKET OPTIONS
  local sock=$1 log=$WORK/notify.$RANDOM
  img=$WORK/boot.qcow2
  rm -f "$img"
  qemu-img create -q -f qcow2 "$img" 64M
  printf 'IMAGE=%s\nOPTIONS=%s\n' "$img" "$2" >"$WORK/boot.conf"
  listen "$sock" "$log"
  run_unit "$sock" "$WORK/boot.conf"
  for _ in $(seq 600); do grep -q READY=1 "$log" 2>/dev/null && break; sleep 0.1; done
  grep -q READY=1 "$log" || fail "no READY=1 ($sock): $(cat "$WORK/stderr")"
  # Ready means live: the node exists and answers I/O now.
  dev=$(head -1 "$WORK/stdout")
  [[ -b $dev ]] || fail "READY=1 before $dev exists (stdout: '$dev')"
  grep -qx "READY=1 STATUS=serving $img as $dev" "$log" || fail "notification: $(cat "$log")"
  [[ $(grep -c . "$log") == 1 ]] || fail "more than one datagram before stop: $(cat "$log")"
  if [[ $2 != *--read-only* ]]; then
    head -c 1M /dev/urandom >"$WORK/data"
    dd if="$WORK/data" of="$dev" bs=1M oflag=direct status=none || fail "write to $dev"
    cmp -n 1M "$WORK/data" "$dev" || fail "read back from $dev"
  else
    dd if="$dev" of=/dev/null bs=64k count=16 iflag=direct status=none || fail "read from $dev"
  fi
  # What systemctl stop does: SIGTERM to the main process.
  kill -TERM "$server"
  local rc=0
  wait "$server" || rc=$?
  [[ $rc == 0 ]] || fail "server exited $rc on SIGTERM: $(cat "$WORK/stderr")"
  wait "$listener" || fail "listener"
  grep -qx "STOPPING=1" "$log" || fail "no STOPPING=1: $(cat "$log")"
  assert_no_devices
  check_image "$img"
  # Detached cleanly: the dirty bit (incompatible feature bit 0) is clear.
  [[ $(od -An -tu1 -j 79 -N 1 "$img" | tr -d ' ') == 0 ]] || fail "dirty bit left set"
  if [[ $2 != *--read-only* ]]; then
    cp "$WORK/data" "$WORK/expect.raw" && truncate -s 64M "$WORK/expect.raw"
    qemu-img compare -q -f qcow2 -F raw "$img" "$WORK/expect.raw" || fail "image content after stop"
  fi
  log "$sock, OPTIONS='$2': READY=1 once live, STOPPING=1 and a clean detach on SIGTERM"
}

one_run "@uq-notify-$$" ""
one_run "$WORK/notify.sock" "--read-only --depth 32"
log PASS
