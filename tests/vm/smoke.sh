#!/usr/bin/env bash
# Smoke test of the test VM itself (run through scripts/vm-run.sh or ctest -L vm):
# the ublk driver is there, -smp gives the expected CPUs, io_uring works, a loop
# device takes ext4, and host binaries (qemu-img) run from the shared root.
#   tests/vm/smoke.sh [EXPECTED_CPUS]     (default 2; checked only inside the VM)
set -euo pipefail

expect_cpus=${1:-2}
fail=0
check() {
  local what=$1; shift
  if out=$("$@" 2>&1); then
    echo "smoke: ok   $what"
  else
    echo "smoke: FAIL $what"; echo "$out" | sed 's/^/    /'
    fail=1
  fi
}

check "/dev/ublk-control is a character device" test -c /dev/ublk-control

if [[ "${UQ_IN_VM:-0}" == 1 ]]; then
  check "nproc is $expect_cpus (got $(nproc))" test "$(nproc)" -eq "$expect_cpus"
  check "scratch dir $UQ_SCRATCH is writable" \
    sh -c 'echo hi > "$UQ_SCRATCH/smoke" && test "$(cat "$UQ_SCRATCH/smoke")" = hi && rm "$UQ_SCRATCH/smoke"'
  check "/tmp is a tmpfs" sh -c 'test "$(stat -f -c %T /tmp)" = tmpfs'
fi

work=$(mktemp -d /tmp/smoke.XXXXXX)
loopdev=""
cleanup() {
  umount "$work/mnt" 2>/dev/null || true
  if [[ -n "$loopdev" ]]; then losetup -d "$loopdev" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

check "qemu-img runs from the host root" qemu-img --version

check "fio with ioengine=io_uring (1 s randrw on tmpfs)" \
  fio --name=smoke --filename="$work/fio.dat" --size=16M --ioengine=io_uring \
      --rw=randrw --bs=4k --iodepth=8 --time_based --runtime=1 --verify=0 \
      --output-format=terse

truncate -s 64M "$work/ext4.img"
if loopdev=$(losetup -f --show "$work/ext4.img" 2>&1); then
  mkdir -p "$work/mnt"
  check "mkfs.ext4 on $loopdev" mkfs.ext4 -q -F "$loopdev"
  check "mount ext4 from $loopdev, write, read back, umount" sh -c "
    mount -t ext4 '$loopdev' '$work/mnt' &&
    head -c 1048576 /dev/urandom > '$work/data' &&
    cp '$work/data' '$work/mnt/data' && sync &&
    cmp '$work/data' '$work/mnt/data' &&
    umount '$work/mnt'"
else
  echo "smoke: FAIL losetup: $loopdev"; loopdev=""; fail=1
fi

if ((fail)); then
  echo "smoke: FAILED"
  exit 1
fi
echo "smoke: all checks passed"
