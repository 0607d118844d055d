# Shared helpers for the ublk-qcow2 VM scenarios (sourced, not run).
# Binaries: $UQ_UBLK_QCOW2 (set by uq_vm_test), else $UQ_BUILD_DIR/src/cli/ublk-qcow2.
# Exit codes: 0 pass, 1 fail, 77 skip (no ublk driver or a missing tool).
set -euo pipefail

SCENARIO=$(basename "$0" .sh)
UQ=${UQ_UBLK_QCOW2:-${UQ_BUILD_DIR:-.}/src/cli/ublk-qcow2}
WORK=$(mktemp -d /tmp/uq-${SCENARIO}.XXXXXX)

log() { echo "[$SCENARIO] $*"; }
fail() {
  echo "[$SCENARIO] FAIL: $*" >&2
  exit 1
}
skip() {
  echo "[$SCENARIO] SKIP: $*"
  exit 77
}

need() {
  local t
  for t in "$@"; do command -v "$t" >/dev/null 2>&1 || skip "$t not found"; done
}

[[ -c /dev/ublk-control ]] || skip "/dev/ublk-control not found (run inside the test VM)"
[[ $(id -u) == 0 ]] || skip "needs root"
[[ -x $UQ ]] || skip "ublk-qcow2 binary not found at $UQ (set UQ_UBLK_QCOW2 or UQ_BUILD_DIR)"

# The VM's devtmpfs has no /dev/fd (bash process substitution needs it).
[[ -e /dev/fd ]] || ln -s /proc/self/fd /dev/fd

ublk_devices() { ls /dev/ublkb* 2>/dev/null || true; }

# Every device gone (the kernel removes /dev/ublkbN at DEL_DEV).
assert_no_devices() {
  local left
  for _ in $(seq 50); do
    left=$(ublk_devices; ls /dev/ublkc* 2>/dev/null || true)
    [[ -z $left ]] && return 0
    sleep 0.1
  done
  fail "devices left behind: $(echo $left)"
}

cleanup() {
  local rc=$?
  set +e
  for m in $(grep -o " $WORK[^ ]*" /proc/mounts | sort -r); do umount -l "$m"; done
  "$UQ" detach --all >/dev/null 2>&1
  for log in /run/ublk-qcow2/*.log /tmp/ublk-qcow2-*/*.log; do
    [[ -s $log && $rc != 0 ]] && { echo "--- $log"; tail -20 "$log"; }
  done
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT

# attach ARGS... -> prints the device path; fails the scenario on error.
attach() {
  local dev
  dev=$("$UQ" attach "$@") || fail "attach $* failed"
  [[ -b $dev ]] || fail "attach printed '$dev', not a block device"
  echo "$dev"
}

detach() {
  "$UQ" detach "$1" || fail "detach $1 failed"
  for _ in $(seq 50); do [[ -e $1 ]] || return 0; sleep 0.1; done
  fail "$1 still exists after detach"
}

dev_id() { local d=${1#/dev/ublkb}; echo "${d%%p*}"; }

# Pid of the server of device $1 (/dev/ublkbN) from `list --output=json`.
server_pid() {
  "$UQ" list --output=json | jq -r ".[] | select(.id == $(dev_id "$1")) | .pid"
}

# Waits until device $1 (/dev/ublkbN) has completed at least $2 writes (fio
# can take seconds to start under TCG).
wait_for_writes() {
  local stat=/sys/block/$(basename "$1")/stat
  for _ in $(seq 600); do
    (($(awk '{print $5}' "$stat") >= $2)) && return 0
    sleep 0.1
  done
  fail "no writes reached $1"
}

# qemu-img check: 0 = clean, 3 = leaked clusters only (allowed after a crash).
check_image() {
  local rc=0
  qemu-img check "$1" >"$WORK/check.out" 2>&1 || rc=$?
  if [[ $rc != 0 && ! ($rc == 3 && ${2:-} == allow-leaks) ]]; then
    cat "$WORK/check.out" >&2
    fail "qemu-img check $1 exited $rc"
  fi
  log "qemu-img check $1: exit $rc"
}
