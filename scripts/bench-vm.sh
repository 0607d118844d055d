#!/usr/bin/env bash
# ublk-qcow2 in the test VM, beside a 1-queue attach, qemu-nbd (/dev/nbd0) and
# a kernel loop device: fio 4 KiB random reads and writes, depth 64, numjobs
# 2, direct I/O. One VM boot; images on the guest's tmpfs (never on the 9p
# share, which caps everything near 3k IOPS); each figure is the best of RUNS
# runs of RUNTIME seconds. Prints each ratio beside its target and whether it
# is met. Timings are measured, never asserted.
#
#   scripts/bench-vm.sh [--kernel 6.1|6.12]
#
# Environment: RUNS (default 3), RUNTIME seconds per run (default 5), SIZE of
# the preallocated image (default 256M), UQ_BUILD_DIR (default build),
# UQ_VM_DIR as for scripts/vm-run.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ${1:-} != --guest ]]; then
  kernel=${UQ_VM_KERNEL_VERSION:-6.1}
  [[ ${1:-} == --kernel ]] && kernel=${2:?}
  export UQ_BUILD_DIR=${UQ_BUILD_DIR:-build} UQ_BENCH_RUNS=${RUNS:-3}
  export UQ_BENCH_RUNTIME=${RUNTIME:-5} UQ_BENCH_SIZE=${SIZE:-256M}
  [[ -x $UQ_BUILD_DIR/src/cli/ublk-qcow2 ]] || {
    echo "bench-vm: $UQ_BUILD_DIR/src/cli/ublk-qcow2 not built" >&2
    exit 1
  }
  exec scripts/vm-run.sh --kernel "$kernel" --smp 2 --mem 2G --timeout 1500 -- \
    "$PWD/scripts/bench-vm.sh" --guest
fi

# --- inside the VM
UQ=$PWD/$UQ_BUILD_DIR/src/cli/ublk-qcow2
runs=$UQ_BENCH_RUNS runtime=$UQ_BENCH_RUNTIME size=$UQ_BENCH_SIZE
for t in fio jq qemu-img qemu-nbd losetup; do
  command -v $t >/dev/null || { echo "bench-vm: $t not found" >&2; exit 77; }
done
[[ -e /dev/fd ]] || ln -s /proc/self/fd /dev/fd
work=$(mktemp -d /tmp/uq-bench-vm.XXXXXX)
trap '"$UQ" detach --all >/dev/null 2>&1; qemu-nbd -d /dev/nbd0 >/dev/null 2>&1; losetup -D; rm -rf "$work"' EXIT
cd "$work"

# A preallocated image (every cluster allocated, so writes are overwrites) and
# its raw equivalent for the loop device.
qemu-img create -q -f qcow2 -o preallocation=falloc img.qcow2 "$size"
qemu-img convert -f qcow2 -O raw img.qcow2 img.raw

# best DEV RW: the best IOPS of `runs` fio runs.
best() {
  local dev=$1 rw=$2 best=0 iops
  for _ in $(seq "$runs"); do
    iops=$(fio --name=b --filename="$dev" --allow_file_create=0 --ioengine=io_uring --direct=1 \
      --rw="$rw" --bs=4k --iodepth=64 --numjobs=2 --group_reporting --time_based \
      --runtime="$runtime" --size="$size" --output-format=json |
      jq ".jobs[0].${rw#rand}.iops | floor")
    ((iops > best)) && best=$iops
  done
  echo "$best"
}

declare -A r
for q in 1 2; do
  dev=$("$UQ" attach --queues $q img.qcow2 2>/dev/null)
  r[uq${q}_randread]=$(best "$dev" randread)
  r[uq${q}_randwrite]=$(best "$dev" randwrite)
  "$UQ" detach "$dev"
done
qemu-nbd -c /dev/nbd0 -f qcow2 --cache=writeback img.qcow2
for _ in $(seq 50); do [[ $(cat /sys/block/nbd0/size) != 0 ]] && break; sleep 0.1; done
r[nbd_randread]=$(best /dev/nbd0 randread)
r[nbd_randwrite]=$(best /dev/nbd0 randwrite)
qemu-nbd -d /dev/nbd0 >/dev/null
loopdev=$(losetup -f --show img.raw)
r[loop_randread]=$(best "$loopdev" randread)
losetup -d "$loopdev"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
line() {  # label ours theirs target
  local x
  x=$(ratio "$2" "$3")
  printf '%-44s %8s / %-8s = %5sx  (target >= %sx: %s)\n' "$1" "$2" "$3" "$x" "$4" \
    "$(awk -v x="$x" -v t="$4" 'BEGIN { print (x >= t ? "met" : "NOT met") }')"
}
echo "bench-vm: $(uname -r), $(nproc) vCPUs, fio 4k depth 64 numjobs 2, best of $runs x ${runtime}s, image $size on tmpfs"
echo "IOPS: ublk 1q read ${r[uq1_randread]} write ${r[uq1_randwrite]}; 2q read ${r[uq2_randread]} write ${r[uq2_randwrite]}; qemu-nbd read ${r[nbd_randread]} write ${r[nbd_randwrite]}; loop read ${r[loop_randread]}"
line "2 queues vs 1 queue, randread" "${r[uq2_randread]}" "${r[uq1_randread]}" 1.7
line "2 queues vs 1 queue, randwrite" "${r[uq2_randwrite]}" "${r[uq1_randwrite]}" 1.7
line "ublk-qcow2 (2q) vs qemu-nbd, randread" "${r[uq2_randread]}" "${r[nbd_randread]}" 3
line "ublk-qcow2 (2q) vs qemu-nbd, randwrite" "${r[uq2_randwrite]}" "${r[nbd_randwrite]}" 3
line "ublk-qcow2 (2q) vs loop (raw), randread" "${r[uq2_randread]}" "${r[loop_randread]}" 0.8
