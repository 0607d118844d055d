#!/usr/bin/env bash
# `cmake --install` puts the command, the udev helper and the udev rule in
# place, and the rule runs the helper where it was installed.
#   tests/unit/ublk/install_layout.sh BUILD_DIR
set -euo pipefail
build=$1
dest=$(mktemp -d)
trap 'rm -rf "$dest"' EXIT
DESTDIR=$dest cmake --install "$build" >"$dest/install.log"
bin=$(find "$dest" -path '*/bin/ublk-qcow2' -type f)
helper=$(find "$dest" -path '*/libexec/ublk-qcow2-udev' -type f)
rules=$(find "$dest" -path '*/udev/rules.d/90-ublk-qcow2.rules' -type f)
[[ -x $bin && -x $helper && -f $rules ]] || { cat "$dest/install.log"; echo "missing files"; exit 1; }
run=$(sed -nE 's/^ACTION=="add", KERNEL=="ublk\[bc\]\[0-9\]\*", RUN\+="([^ ]*) %k"$/\1/p' "$rules")
[[ -n $run && -x $dest$run ]] || { echo "the rule runs '$run', which was not installed"; exit 1; }
grep -q '^KERNEL=="ublk-control", GROUP="ublk", MODE="0660"$' "$rules" ||
  { echo "no /dev/ublk-control line in $rules"; exit 1; }
"$helper" 2>"$dest/err" && { echo "helper without arguments succeeded"; exit 1; }
grep -q "^ublk-qcow2-udev: usage" "$dest/err" || { cat "$dest/err"; exit 1; }
echo "install layout ok: $bin, $helper, $rules -> $run"
