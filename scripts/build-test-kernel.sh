#!/usr/bin/env bash
# Builds a test-VM kernel from Debian's linux-source-VERSION package: `make
# tinyconfig` plus tests/vm/kernel.config (ublk, io_uring, 9p over virtio, ext4,
# loop, nbd ...) plus tests/vm/kernel-VERSION.config when it exists (6.12:
# CONFIG_BLKDEV_UBLK_LEGACY_OPCODES=n).
#
#   scripts/build-test-kernel.sh [--version 6.1|6.12] OUTDIR     (default 6.1)
#
# Result: OUTDIR/bzImage (and OUTDIR/config; the unpacked tree is removed unless
# UQ_KEEP_KERNEL_TREE=1). Cached: when OUTDIR/bzImage exists
# and OUTDIR/config.hash matches the fragments and the source, nothing is done.
# Concurrent runs on the same OUTDIR serialise on OUTDIR/.lock, so only one of
# them builds. Installs its Debian prerequisites through scripts/setup.sh --vm.
set -euo pipefail

version=6.1
if [[ "${1:-}" == --version ]]; then
  version=${2:?--version needs 6.1 or 6.12}
  shift 2
fi
if [[ $# -ne 1 || "$1" == -* ]]; then
  echo "usage: $0 [--version 6.1|6.12] OUTDIR" >&2
  exit 2
fi
top=$(cd "$(dirname "$0")/.." && pwd)
fragments=("$top/tests/vm/kernel.config")
[[ -f "$top/tests/vm/kernel-$version.config" ]] && fragments+=("$top/tests/vm/kernel-$version.config")
tarball=${UQ_KERNEL_TARBALL:-/usr/src/linux-source-$version.tar.xz}
mkdir -p "$1"
out=$(cd "$1" && pwd)

# The 6.1 hash keeps its old form (fragment + tarball name) so existing caches stay valid.
want_hash() {
  { cat "${fragments[@]}"; basename "$tarball"; } | sha256sum | cut -d' ' -f1
}
is_current() {
  [[ -s "$out/bzImage" && -f "$out/config.hash" && -f "$tarball" ]] &&
    [[ "$(cat "$out/config.hash")" == "$(want_hash)" ]]
}

# Cheap check before anything else (no lock, no apt).
if [[ -f "$tarball" ]] && is_current; then
  echo "build-test-kernel: $out/bzImage is up to date"
  exit 0
fi

exec 9>"$out/.lock"
if ! flock -n 9; then
  echo "build-test-kernel: another build holds $out/.lock; waiting"
  flock 9
fi
if [[ -f "$tarball" ]] && is_current; then
  echo "build-test-kernel: $out/bzImage was built meanwhile"
  exit 0
fi

"$top/scripts/setup.sh" --vm
[[ -f "$tarball" ]] || { echo "build-test-kernel: $tarball missing after setup" >&2; exit 1; }

start=$(date +%s)
src="$out/linux"
# An unpacked tree of another source package (OUTDIR reused) is replaced.
if [[ ! -f "$src/Makefile" ||
      ( -f "$src/.uq-tarball" && "$(cat "$src/.uq-tarball")" != "$(basename "$tarball")" ) ]]; then
  echo "build-test-kernel: unpacking $tarball"
  rm -rf "$src" "$src.tmp"
  mkdir -p "$src.tmp"
  tar -xf "$tarball" -C "$src.tmp" --strip-components=1
  basename "$tarball" > "$src.tmp/.uq-tarball"
  mv "$src.tmp" "$src"
fi

cd "$src"
make -s ARCH=x86_64 tinyconfig
cat "${fragments[@]}" >> .config
make -s ARCH=x86_64 olddefconfig

# Every option the fragments ask for must have survived olddefconfig.
missing=()
while IFS= read -r line; do
  [[ "$line" =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]] || continue
  if [[ "${BASH_REMATCH[2]}" == n ]]; then
    grep -qx -- "# ${BASH_REMATCH[1]} is not set" .config || missing+=("$line")
  else
    grep -qx -- "$line" .config || missing+=("$line")
  fi
done < <(cat "${fragments[@]}")
if ((${#missing[@]})); then
  echo "build-test-kernel: FAILED: these options from ${fragments[*]} are not as asked in the final .config" >&2
  echo "(a dependency is missing from the fragment):" >&2
  for m in "${missing[@]}"; do
    name=${m%%=*}
    got=$(grep -E "^$name=|^# $name is not set" .config || echo "absent")
    echo "  wanted $m, got: $got" >&2
  done
  exit 1
fi

echo "build-test-kernel: building linux $version bzImage with -j$(nproc)"
make -s ARCH=x86_64 -j"$(nproc)" bzImage
cp arch/x86/boot/bzImage "$out/bzImage.tmp"
cp .config "$out/config"
mv "$out/bzImage.tmp" "$out/bzImage"
want_hash > "$out/config.hash"
echo "build-test-kernel: $out/bzImage built in $(( $(date +%s) - start )) s"
# The tree (1.5 GB) is not kept: a fragment change rewrites autoconf.h, which
# rebuilds nearly every object anyway. UQ_KEEP_KERNEL_TREE=1 keeps it.
if [[ "${UQ_KEEP_KERNEL_TREE:-0}" != 1 ]]; then
  cd "$out"
  rm -rf "$src"
fi
