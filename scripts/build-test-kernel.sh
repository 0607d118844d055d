#!/usr/bin/env bash
# Builds the test-VM kernel: Debian's linux-source-6.1, `make tinyconfig` plus
# tests/vm/kernel.config (ublk, io_uring, 9p over virtio, ext4, loop, nbd ...).
#
#   scripts/build-test-kernel.sh OUTDIR
#
# Result: OUTDIR/bzImage (and OUTDIR/config). Cached: when OUTDIR/bzImage exists
# and OUTDIR/config.hash matches the fragment, nothing is done. Concurrent runs
# on the same OUTDIR serialise on OUTDIR/.lock, so only one of them builds.
# Installs its Debian prerequisites through scripts/setup.sh --vm.
set -euo pipefail

if [[ $# -ne 1 || "$1" == -* ]]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
top=$(cd "$(dirname "$0")/.." && pwd)
fragment="$top/tests/vm/kernel.config"
tarball=${UQ_KERNEL_TARBALL:-/usr/src/linux-source-6.1.tar.xz}
mkdir -p "$1"
out=$(cd "$1" && pwd)

want_hash() {
  { cat "$fragment"; basename "$tarball"; } | sha256sum | cut -d' ' -f1
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
if [[ ! -f "$src/Makefile" ]]; then
  echo "build-test-kernel: unpacking $tarball"
  rm -rf "$src" "$src.tmp"
  mkdir -p "$src.tmp"
  tar -xf "$tarball" -C "$src.tmp" --strip-components=1
  mv "$src.tmp" "$src"
fi

cd "$src"
make -s ARCH=x86_64 tinyconfig
cat "$fragment" >> .config
make -s ARCH=x86_64 olddefconfig

# Every option the fragment asks for must have survived olddefconfig.
missing=()
while IFS= read -r line; do
  [[ "$line" =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]] || continue
  grep -qx -- "$line" .config || missing+=("${BASH_REMATCH[1]}=${BASH_REMATCH[2]}")
done < "$fragment"
if ((${#missing[@]})); then
  echo "build-test-kernel: FAILED: these options from $fragment are not set in the final .config" >&2
  echo "(a dependency is missing from the fragment):" >&2
  for m in "${missing[@]}"; do
    name=${m%%=*}
    got=$(grep -E "^$name=|^# $name is not set" .config || echo "absent")
    echo "  wanted $m, got: $got" >&2
  done
  exit 1
fi

echo "build-test-kernel: building bzImage with -j$(nproc)"
make -s ARCH=x86_64 -j"$(nproc)" bzImage
cp arch/x86/boot/bzImage "$out/bzImage.tmp"
cp .config "$out/config"
mv "$out/bzImage.tmp" "$out/bzImage"
want_hash > "$out/config.hash"
echo "build-test-kernel: $out/bzImage built in $(( $(date +%s) - start )) s"
