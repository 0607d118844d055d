#!/usr/bin/env bash
# `cmake --install` puts the commands, the udev helper and rule, the systemd
# unit, man pages, bash completion and the example unit configuration in
# place; the rule runs the helper and the unit the command where they were
# installed.
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
# Everything else the install puts in place, and nothing more.
prefix=$(sed -n 's/^CMAKE_INSTALL_PREFIX:PATH=//p' "$build/CMakeCache.txt")
files=$(cd "$dest" && find . ! -type d ! -name install.log ! -name err | sort)
sed "s|@P@|.$prefix|" >"$dest/want" <<'LIST'
./etc/udev/rules.d/90-ublk-qcow2.rules
@P@/bin/qcow2-img
@P@/bin/ublk-qcow2
@P@/lib/systemd/system/ublk-qcow2@.service
@P@/libexec/ublk-qcow2-udev
@P@/share/bash-completion/completions/qcow2-img
@P@/share/bash-completion/completions/ublk-qcow2
@P@/share/doc/ublk-qcow2/ublk-qcow2.conf.example
@P@/share/man/man1/qcow2-img.1
@P@/share/man/man8/ublk-qcow2.8
LIST
if [[ $prefix == /usr/local ]]; then
  diff -u "$dest/want" - <<<"$files" || { echo "cmake --install put other files in place"; exit 1; }
fi
unit=$dest$prefix/lib/systemd/system/ublk-qcow2@.service
grep -q "^ExecStart=$prefix/bin/ublk-qcow2 attach --foreground " "$unit" ||
  { grep ExecStart "$unit"; echo "the unit does not start $prefix/bin/ublk-qcow2"; exit 1; }
echo "install layout ok: $bin, $helper, $rules -> $run"
