#!/usr/bin/env bash
# Installs everything ublk-qcow2 needs on Debian 12 (safe to run again).
#   scripts/setup.sh          build + test dependencies
#   scripts/setup.sh --vm     also what the test-VM tier needs (kernel build, qemu-system)
set -euo pipefail

pkgs=(build-essential cmake ninja-build pkg-config git ccache
      liburing-dev zlib1g-dev libzstd-dev libabsl-dev
      libgtest-dev libgmock-dev libbenchmark-dev
      qemu-utils clang clang-format
      # libFuzzer and clang's sanitizer runtimes (scripts/fuzz.sh); clang only
      # recommends it, and recommends are not installed here
      libclang-rt-14-dev
      # the package test: dpkg-shlibdeps, man -l, systemd-analyze verify, the
      # completion as bash-completion loads it
      dpkg-dev man-db groff-base systemd bash-completion
      # `partitions` against sfdisk (interop and VM tiers)
      fdisk e2fsprogs jq
      # the commit/rebase cache-mode tests: which files are opened with
      # O_DIRECT, and how many flushes are made, against qemu-img's
      strace linux-perf)
vm_pkgs=(qemu-system-x86 linux-source-6.1 linux-source-6.12 busybox-static fio
         flex bison bc libelf-dev libssl-dev cpio xz-utils kmod python3)
if [[ "${1:-}" == "--vm" ]]; then pkgs+=("${vm_pkgs[@]}"); fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [[ $(id -u) -eq 0 ]] || SUDO=sudo
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "setup: all packages present"
fi
