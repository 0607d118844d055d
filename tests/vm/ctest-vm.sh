#!/usr/bin/env bash
# ctest driver of the VM tier (registered by tests/vm/CMakeLists.txt).
#
#   ctest-vm.sh kernel [VERSION...]  fixtures `vm<V>_kernel`: build the kernels (default
#                                    both: 6.1 and 6.12) + the initramfs
#   ctest-vm.sh run SCRIPT [ARGS...] run SCRIPT in the test VM (scripts/vm-run.sh) with
#                                    kernel $UQ_VM_KERNEL_VERSION (default 6.1), or
#                                    directly when this kernel has /dev/ublk-control
#
# A missing prerequisite (qemu-system-x86_64, the kernel source, root for a
# direct run) skips with exit 77, except under CI=true, where it fails: the VM
# tier never skips silently in CI.
set -uo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
vm_dir=${UQ_VM_DIR:-$top/build/vm}
version=${UQ_VM_KERNEL_VERSION:-6.1}
# shellcheck source=scripts/lib/kernel-cache.sh
source "$top/scripts/lib/kernel-cache.sh"
kernel_dir() { uq_kernel_dir "$1"; }

missing() {
  if [[ "${CI:-}" == true ]]; then
    echo "ctest-vm: FAIL (CI=true, so no skip): $*" >&2
    exit 1
  fi
  echo "ctest-vm: SKIP: $*" >&2
  exit 77
}

host_has_ublk() { [[ -c /dev/ublk-control ]]; }

check_vm_prereqs() {  # $1 = kernel version, $2 = "build" when it may still be built here
  local kdir tarball
  kdir=$(kernel_dir "$1")
  tarball=${UQ_KERNEL_TARBALL:-/usr/src/linux-source-$1.tar.xz}
  command -v qemu-system-x86_64 >/dev/null ||
    missing "qemu-system-x86_64 not installed (scripts/setup.sh --vm)"
  [[ -f /bin/busybox ]] || missing "busybox-static not installed (scripts/setup.sh --vm)"
  if [[ -n "${UQ_VM_KERNEL:-}" ]]; then
    [[ -s "$UQ_VM_KERNEL" ]] || missing "UQ_VM_KERNEL=$UQ_VM_KERNEL does not exist"
  elif [[ ! -s "$kdir/bzImage" || "${2:-}" == build ]]; then
    [[ -f "$tarball" || $(id -u) -eq 0 ]] ||
      missing "no test kernel in $kdir and no $tarball (scripts/setup.sh --vm)"
  fi
}

mode=${1:-}
shift || true
case "$mode" in
  kernel)
    if host_has_ublk; then
      echo "ctest-vm: this kernel has /dev/ublk-control: scenarios run on the host, no VM kernel needed"
      exit 0
    fi
    versions=("$@")
    ((${#versions[@]})) || versions=(6.1 6.12)
    for v in "${versions[@]}"; do
      check_vm_prereqs "$v" build
      if [[ -z "${UQ_VM_KERNEL:-}" ]]; then
        start=$(date +%s)
        "$top/scripts/build-test-kernel.sh" --version "$v" "$(kernel_dir "$v")" || exit 1
        echo "ctest-vm: kernel $v ready after $(( $(date +%s) - start )) s"
      fi
    done
    mkdir -p "$vm_dir"
    exec "$top/tests/vm/mkinitramfs.sh" "$vm_dir/initramfs.gz"
    ;;
  run)
    [[ $# -ge 1 ]] || { echo "usage: $0 run SCRIPT [ARGS...]" >&2; exit 2; }
    if host_has_ublk; then
      [[ $(id -u) -eq 0 ]] || missing "ublk needs root (CAP_SYS_ADMIN) on this kernel"
      echo "ctest-vm: /dev/ublk-control present: running $1 on the host"
      "$@"
    else
      check_vm_prereqs "$version"
      "$top/scripts/vm-run.sh" --kernel "$version" --timeout "${UQ_VM_TIMEOUT:-570}" -- "$@"
    fi
    rc=$?
    # A scenario that skipped itself (exit 77: a tool or binary it needs is
    # missing) is a failure in CI, never a silent skip.
    if [[ $rc -eq 77 && "${CI:-}" == true ]]; then
      echo "ctest-vm: FAIL (CI=true, so no skip): $1 skipped itself" >&2
      exit 1
    fi
    exit $rc
    ;;
  *)
    echo "usage: $0 kernel [VERSION...] | run SCRIPT [ARGS...]" >&2
    exit 2
    ;;
esac
