#!/usr/bin/env bash
# Runs a command inside the test VM: a 6.1 or 6.12 kernel with ublk
# (qemu-system-x86_64, TCG) whose root is this machine's root filesystem
# (read-only 9p), so every host binary runs unchanged in the guest.
#
#   scripts/vm-run.sh [--kernel 6.1|6.12] [--smp N] [--mem SIZE] [--timeout SECONDS] \
#                     -- COMMAND [ARGS...]
#
# --kernel (default $UQ_VM_KERNEL_VERSION, else 6.1): Debian's linux-source of
# that version (6.12: legacy ublk command numbers compiled out).
# In the guest: cwd = the host's cwd (read-only), /tmp is a RAM tmpfs (80% of
# --mem), $UQ_SCRATCH is a writable per-run dir shared with the host, HOME=/tmp,
# UQ_IN_VM=1, and PATH, LANG/LC_*, CI, UQ_*, GTEST_*, *SAN_OPTIONS are passed on.
# The guest's console (kernel messages + the command's stdout/stderr) streams to
# stdout. Exit status: the command's, or 124 on timeout, 125 when the guest did
# not report one (boot failure, kernel panic), 2 on bad usage.
#
# Environment: UQ_VM_DIR (default <repo>/build/vm) holds initramfs.gz and runs/;
# the kernels are cached per machine (scripts/lib/kernel-cache.sh: UQ_KERNEL_CACHE,
# default ~/.cache/ublk-qcow2/kernels/linux-VERSION); UQ_VM_KERNEL overrides the bzImage; UQ_VM_VERBOSE=1
# shows the full kernel log; UQ_VM_KEEP=1 keeps runs/<id> after success or skip (77);
# UQ_VM_CPU sets -cpu (default max), UQ_VM_SMP the vCPU count (default 2); UQ_VM_EXTRA_ARGS is appended to qemu's args,
# UQ_VM_APPEND to the kernel command line.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
smp=${UQ_VM_SMP:-2} mem=2G timeout_s=550
version=${UQ_VM_KERNEL_VERSION:-6.1}

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --kernel) version=${2:?}; shift 2 ;;
    --smp) smp=${2:?}; shift 2 ;;
    --mem) mem=${2:?}; shift 2 ;;
    --timeout) timeout_s=${2:?}; shift 2 ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) echo "vm-run: unknown option $1" >&2; usage ;;
  esac
done
[[ $# -gt 0 ]] || usage

vm_dir=${UQ_VM_DIR:-$top/build/vm}
mkdir -p "$vm_dir/runs"
vm_dir=$(cd "$vm_dir" && pwd)

qemu=$(command -v qemu-system-x86_64 || true)
if [[ -z "$qemu" ]]; then
  echo "vm-run: qemu-system-x86_64 not found (scripts/setup.sh --vm installs it)" >&2
  exit 125
fi

# Kernel (cached; rebuilt only when its config fragments changed) and initramfs.
kernel=${UQ_VM_KERNEL:-}
if [[ -z "$kernel" ]]; then
  # shellcheck source=scripts/lib/kernel-cache.sh
  source "$top/scripts/lib/kernel-cache.sh"
  kdir=$(uq_kernel_dir "$version")
  kernel=$kdir/bzImage
  "$top/scripts/build-test-kernel.sh" --version "$version" "$kdir" >&2 ||
    { echo "vm-run: kernel $version build failed" >&2; exit 125; }
fi
[[ -s "$kernel" ]] || { echo "vm-run: no kernel at $kernel" >&2; exit 125; }
initrd=$vm_dir/initramfs.gz
if [[ ! -s "$initrd" || "$top/tests/vm/init" -nt "$initrd" ||
      "$top/tests/vm/mkinitramfs.sh" -nt "$initrd" ]]; then
  "$top/tests/vm/mkinitramfs.sh" "$initrd" >&2
fi

# Failed runs are kept for their console.log; forget them after two days.
find "$vm_dir/runs" -mindepth 1 -maxdepth 1 -name 'run.*' -mtime +1 -exec rm -rf {} + 2>/dev/null || true
run=$(mktemp -d "$vm_dir/runs/run.XXXXXX")
scratch=$run/scratch
mkdir -p "$scratch"
nonce=$(basename "$run" | tr -c 'A-Za-z0-9\n' '_')
cwd=$(pwd)
case "$run$cwd" in
  *[[:space:]]*) echo "vm-run: paths with whitespace are not supported ($run, $cwd)" >&2; exit 2 ;;
esac

# The command, its cwd and environment, as a bash script the guest runs.
{
  echo "# written by scripts/vm-run.sh"
  while IFS= read -r name; do
    case "$name" in
      PATH|LANG|LC_*|CI|UQ_*|GTEST_*|*SAN_OPTIONS|CTEST_*|TERM)
        printf 'export %s=%q\n' "$name" "${!name}" ;;
    esac
  done < <(compgen -e)
  printf 'export HOME=/tmp TMPDIR=/tmp UQ_IN_VM=1 UQ_SCRATCH=%q UQ_VM_KERNEL_VERSION=%q\n' \
    "$scratch" "$version"
  printf 'cd %q || exit 125\n' "$cwd"
  printf 'exec'
  printf ' %q' "$@"
  printf '\n'
} > "$scratch/cmd.sh"

# Host paths under /tmp the guest must still see above its own /tmp tmpfs.
tmpbind=""
for p in "$cwd" "${UQ_BUILD_DIR:-}" "${UQ_SOURCE_DIR:-}" "$1"; do
  [[ "$p" == /tmp/* && "$p" != *[[:space:],]* ]] || continue
  rel=${p#/tmp/}
  first=/tmp/${rel%%/*}
  [[ ",$tmpbind," == *",$first,"* ]] || tmpbind=${tmpbind:+$tmpbind,}$first
done

append="console=ttyS0 panic=-1 rdinit=/init uq.scratch=$scratch uq.nonce=$nonce"
[[ -n "$tmpbind" ]] && append+=" uq.tmpbind=$tmpbind"
[[ "${UQ_VM_VERBOSE:-0}" == 1 ]] || append+=" quiet"
[[ -n "${UQ_VM_APPEND:-}" ]] && append+=" $UQ_VM_APPEND"

args=(
  -accel tcg,thread=multi -cpu "${UQ_VM_CPU:-max}" -m "$mem" -smp "$smp"
  -nodefaults -no-user-config -display none -serial stdio -no-reboot
  -kernel "$kernel" -initrd "$initrd" -append "$append"
  -fsdev local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap
  -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot
  -fsdev local,id=scratch,path="$scratch",security_model=none,multidevs=remap
  -device virtio-9p-pci,fsdev=scratch,mount_tag=scratch
)
# shellcheck disable=SC2206
[[ -n "${UQ_VM_EXTRA_ARGS:-}" ]] && args+=(${UQ_VM_EXTRA_ARGS})

start=$(date +%s.%N)
set +e
timeout --foreground -k 10 "$timeout_s" "$qemu" "${args[@]}" </dev/null 2>&1 | tee "$run/console.log"
qemu_rc=${PIPESTATUS[0]}
set -e
elapsed=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')

rc=""
if [[ -f "$scratch/exit-status" ]]; then
  rc=$(cat "$scratch/exit-status")
else
  rc=$(sed -n "s/^uq-vm: exit $nonce \([0-9]*\).*/\1/p" "$run/console.log" | tail -n 1)
fi
if [[ "$qemu_rc" == 124 || "$qemu_rc" == 137 ]]; then
  echo "vm-run: TIMEOUT: the guest did not finish within ${timeout_s} s; console log: $run/console.log" >&2
  exit 124
fi
if ! [[ "$rc" =~ ^[0-9]+$ ]]; then
  echo "vm-run: FAILED: the guest reported no exit status (boot failure or kernel panic;" \
       "qemu exited $qemu_rc after ${elapsed} s); console log: $run/console.log" >&2
  exit 125
fi
echo "vm-run: guest command exited $rc (${elapsed} s in the VM)" >&2
if [[ ( "$rc" == 0 || "$rc" == 77 ) && "${UQ_VM_KEEP:-0}" != 1 ]]; then
  rm -rf "$run"
else
  echo "vm-run: run dir kept: $run" >&2
fi
exit "$rc"
