# Sourced by scripts/vm-run.sh and tests/vm/ctest-vm.sh: where the test-VM
# kernels live. They are built once per machine, not per checkout, under
# $UQ_KERNEL_CACHE (default ${XDG_CACHE_HOME:-~/.cache}/ublk-qcow2/kernels),
# one directory per version, each rebuilt only when its config fragments or
# the kernel source package change (scripts/build-test-kernel.sh keys it).

uq_kernel_dir() {  # $1 = kernel version (6.1, 6.12)
  local cache=${UQ_KERNEL_CACHE:-}
  if [[ -z "$cache" ]]; then
    if [[ -n "${XDG_CACHE_HOME:-}" ]]; then
      cache=$XDG_CACHE_HOME/ublk-qcow2/kernels
    elif [[ -n "${HOME:-}" && -d "$HOME" && -w "$HOME" ]]; then
      cache=$HOME/.cache/ublk-qcow2/kernels
    else
      cache=${UQ_VM_DIR:-${top:?}/build/vm}/kernels
    fi
  fi
  echo "$cache/linux-$1"
}
