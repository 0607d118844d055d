#!/usr/bin/env bash
# Packs the test-VM initramfs: busybox-static plus tests/vm/init as /init.
#   tests/vm/mkinitramfs.sh OUTFILE      (gzip-compressed newc cpio)
# The guest then chroots into the host's root over 9p, so nothing else is needed.
set -euo pipefail
if [[ $# -ne 1 ]]; then
  echo "usage: $0 OUTFILE" >&2
  exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
busybox=${UQ_BUSYBOX:-/bin/busybox}
if ! file -L "$busybox" 2>/dev/null | grep -q 'statically linked' &&
   ! ldd "$busybox" 2>&1 | grep -q 'not a dynamic executable'; then
  echo "mkinitramfs: $busybox is not statically linked (install busybox-static)" >&2
  exit 1
fi
command -v cpio >/dev/null || { echo "mkinitramfs: cpio not found (scripts/setup.sh --vm)" >&2; exit 1; }

out=$1
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/proc" "$stage/sys" "$stage/dev" "$stage/host"
cp "$busybox" "$stage/bin/busybox"
install -m 755 "$here/init" "$stage/init"
(cd "$stage" && find . -print0 | sort -z |
  cpio --null -o -H newc --owner=0:0 --quiet) | gzip -9 > "$out.tmp.$$"
mv "$out.tmp.$$" "$out"
echo "mkinitramfs: wrote $out"
