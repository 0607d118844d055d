#!/usr/bin/env bash
# (g) bad input: one clear line "ublk-qcow2: ...", exit 1, no device left.
source "$(dirname "$0")/lib.sh"
need qemu-img setpriv unshare

cd "$WORK"
failed=0
# expect_error PATTERN CMD... : exit 1, one line starting "ublk-qcow2: " that
# matches PATTERN (grep -Ei), and no new ublk device.
expect_error() {
  local pattern=$1 rc=0
  shift
  local before
  before=$(ublk_devices | wc -l)
  "$@" >out 2>err || rc=$?
  local msg
  msg=$(cat err)
  if [[ $rc != 1 ]]; then
    log "FAIL [$*]: exit $rc (want 1): $msg"
    failed=1
  elif [[ $(wc -l <err) != 1 || $msg != "ublk-qcow2: "* ]]; then
    log "FAIL [$*]: not one 'ublk-qcow2:' line: $msg"
    failed=1
  elif ! grep -Eqi "$pattern" err; then
    log "FAIL [$*]: message does not match /$pattern/: $msg"
    failed=1
  else
    log "ok   $msg"
  fi
  sleep 0.2
  if [[ $(ublk_devices | wc -l) != "$before" ]]; then
    log "FAIL [$*]: a device was left behind"
    failed=1
  fi
}

qemu-img create -q -f qcow2 good.qcow2 16M
truncate -s 16M plain.raw

expect_error "ublk-control not found.*modprobe ublk_drv" \
  unshare -m sh -c 'mount -t tmpfs none /dev && exec "$0" attach good.qcow2' "$UQ"
expect_error "CAP_SYS_ADMIN|permission" setpriv --reuid=65534 --regid=65534 --clear-groups \
  "$UQ" attach good.qcow2
expect_error "missing.qcow2.*(no such file|not found)" "$UQ" attach missing.qcow2
expect_error "qcow2|magic|format" "$UQ" attach plain.raw
expect_error "qcow2|magic|format" "$UQ" attach --format qcow2 plain.raw

# Corrupt bit (incompatible_features bit 1, header byte 79).
cp good.qcow2 corrupt.qcow2
printf '\x02' | dd of=corrupt.qcow2 bs=1 seek=79 conv=notrunc status=none
expect_error "corrupt" "$UQ" attach corrupt.qcow2
# ... which a read-only attach may still serve.
if dev=$("$UQ" attach --read-only corrupt.qcow2 2>err); then
  log "ok   read-only attach of a corrupt image works ($dev)"
  "$UQ" detach "$dev"
else
  log "note read-only attach of the corrupt image refused: $(cat err)"
fi

# Unknown incompatible feature (bit 10, header byte 78).
cp good.qcow2 unknown.qcow2
printf '\x04' | dd of=unknown.qcow2 bs=1 seek=78 conv=notrunc status=none
expect_error "incompatible|unknown|unsupported" "$UQ" attach unknown.qcow2

# Locked by another writer (our own first attach holds the lock).
dev=$(attach good.qcow2)
expect_error "lock" "$UQ" attach good.qcow2
expect_error "lock" "$UQ" attach --read-only good.qcow2
detach "$dev"

# Writable multi-queue is refused with a reason.
expect_error "unknown --cache mode 'unsafe'" "$UQ" attach --cache unsafe good.qcow2
# Option errors.
expect_error "unrecognized option '--bogus'" "$UQ" attach --bogus good.qcow2
expect_error "no ublk device" "$UQ" detach /dev/ublkb999

assert_no_devices
[[ $failed == 0 ]] || fail "some bad inputs were not handled"
log PASS
