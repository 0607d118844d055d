#!/usr/bin/env bash
# The Debian package, end to end (ctest dist_package, label package):
# cpack builds it from BUILD_DIR; its control fields and file list are what
# they must be; dpkg installs it into a scratch root and removes it leaving
# nothing behind; from that root both binaries print VERSION, the udev rule
# and the unit name binaries that are there, both man pages render with
# `man -l` without a warning and document every option that `--help` lists,
# bash-completion loads the completion of both commands from there, and
# `systemd-analyze verify` accepts the unit.
#   tests/dist/package_test.sh BUILD_DIR VERSION
# Exit 77 (skip) when a tool is missing, except under CI=true (a failure).
set -euo pipefail
build=$(cd "$1" && pwd)
version=$2
work=$(mktemp -d /tmp/uq-package.XXXXXX)
trap 'rm -rf "$work"' EXIT

fail() { echo "package_test: FAIL: $*" >&2; exit 1; }
missing() {
  [[ ${CI:-} == true ]] && fail "$* (CI=true: no skip)"
  echo "package_test: SKIP: $*"; exit 77
}
for tool in cpack dpkg dpkg-deb dpkg-shlibdeps man groff; do
  command -v "$tool" >/dev/null || missing "$tool not installed (scripts/setup.sh)"
done

# --- build --------------------------------------------------------------
start=$SECONDS
(cd "$work" && cpack -G DEB --config "$build/CPackConfig.cmake" -B "$work/out" >cpack.log 2>&1) ||
  { cat "$work/cpack.log"; fail "cpack"; }
deb=$(ls "$work"/out/ublk-qcow2_"$version"_*.deb 2>/dev/null) ||
  { ls -R "$work/out"; fail "no ublk-qcow2_${version}_*.deb"; }
echo "built $(basename "$deb") in $((SECONDS - start)) s"

# --- control fields -----------------------------------------------------
field() { dpkg-deb -f "$deb" "$1"; }
[[ $(field Package) == ublk-qcow2 ]] || fail "Package: $(field Package)"
[[ $(field Version) == "$version" ]] || fail "Version: $(field Version), not $version"
depends=$(field Depends)
for lib in liburing2 zlib1g libzstd1 'libabsl[0-9]+' libstdc\\+\\+6 passwd; do
  grep -Eq "(^|, )$lib( |,|$)" <<<"$depends" || fail "Depends lacks $lib: $depends"
done
echo "Depends: $depends"

# --- file list ----------------------------------------------------------
dpkg-deb -c "$deb" | awk '$1 !~ /^d/ { $1 = $2 = $3 = $4 = $5 = ""; sub(/^ +/, ""); print }' |
  sort >"$work/files"
cat >"$work/want" <<'LIST'
./lib/systemd/system/ublk-qcow2@.service
./lib/udev/rules.d/90-ublk-qcow2.rules
./usr/bin/qcow2-img
./usr/bin/ublk-qcow2
./usr/libexec/ublk-qcow2-udev
./usr/share/bash-completion/completions/qcow2-img -> ublk-qcow2
./usr/share/bash-completion/completions/ublk-qcow2
./usr/share/doc/ublk-qcow2/ublk-qcow2.conf.example
./usr/share/man/man1/qcow2-img.1
./usr/share/man/man8/ublk-qcow2.8
LIST
diff -u "$work/want" "$work/files" || fail "the package's files differ from the list above"

# --- install into a scratch root, run from there -------------------------
root=$work/root
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates"
touch "$root/var/lib/dpkg/status" "$root/var/lib/dpkg/available"
# The scratch root has no shell for chrooted maintainer scripts and no
# libraries registered: run the scripts outside it (they see DPKG_ROOT and
# leave the running system alone) and ignore the dependencies.
dpkg_root() {
  dpkg --root="$root" --log=/dev/null --force-script-chrootless --force-depends \
    --force-not-root "$@"
}
dpkg_root -i "$deb" >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log"; fail "dpkg -i"; }
[[ $(dpkg-query --root="$root" -W -f='${Status}' ublk-qcow2) == "install ok installed" ]] ||
  fail "dpkg does not list ublk-qcow2 as installed in the scratch root"
for prog in ublk-qcow2 qcow2-img; do
  out=$("$root/usr/bin/$prog" --version) || fail "$prog --version exited $?"
  [[ $out == "$prog version $version" ]] || fail "$prog --version printed '$out'"
  echo "$out"
done
helper=$(sed -nE 's/.*RUN\+="([^ ]*) %k"$/\1/p' "$root/lib/udev/rules.d/90-ublk-qcow2.rules")
[[ $helper == /usr/libexec/ublk-qcow2-udev && -x $root$helper ]] ||
  fail "the udev rule runs '$helper', not the packaged helper"
unit=$root/lib/systemd/system/ublk-qcow2@.service
exec_start=$(sed -nE 's/^ExecStart=([^ ]*) .*/\1/p' "$unit")
[[ $exec_start == /usr/bin/ublk-qcow2 && -x $root$exec_start ]] ||
  fail "the unit starts '$exec_start', not the packaged command"

# --- man pages ----------------------------------------------------------
render() {  # page -> plain text; a groff or man warning fails the test
  LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -E UTF-8 -l "$1" 2>"$work/man.err" |
    sed -e 's/\x1b\[[0-9;]*m//g' -e 's/.\x08//g'
  [[ ! -s $work/man.err ]] || { cat "$work/man.err"; fail "man -l $1 warned"; }
}
render "$root/usr/share/man/man8/ublk-qcow2.8" >"$work/ublk-qcow2.txt"
render "$root/usr/share/man/man1/qcow2-img.1" >"$work/qcow2-img.txt"
grep -q "ublk-qcow2 $version" "$work/ublk-qcow2.txt" || fail "ublk-qcow2(8) does not name version $version"
# Every command in a program's overview, and every option its --help (or its
# usage line) lists, appears in the page.
check_page() {  # program page
  local prog=$1 page=$2 cmd help opt
  for cmd in $("$prog" --help | sed -nE 's/^  ([a-z][a-z-]*)( .*)?$/\1/p'); do
    grep -Eq "^ +$cmd( |$)" "$page" || fail "$(basename "$page" .txt): no section for command $cmd"
    help=$("$prog" "$cmd" --help 2>/dev/null || "$prog" --help | grep -E "^  $cmd( |$)")
    for opt in $(grep -oE -- '(^|[ [|])--?[a-zA-Z][a-z0-9-]*' <<<"$help" | sed -E 's/^[ [|]//' | sort -u); do
      grep -Eq -- "(^|[^a-z0-9-])$opt([^a-z0-9-]|$)" "$page" ||
        fail "$(basename "$page" .txt) does not document $cmd $opt"
    done
  done
}
check_page "$root/usr/bin/ublk-qcow2" "$work/ublk-qcow2.txt"
check_page "$root/usr/bin/qcow2-img" "$work/qcow2-img.txt"
echo "man pages render cleanly and document every command and option"

# --- bash completion ----------------------------------------------------
# bash-completion loads a command's completion on first use, by the command's
# name, from XDG_DATA_DIRS: both names must find it in the scratch root.
if [[ -r /usr/share/bash-completion/bash_completion ]]; then
  for prog in ublk-qcow2 qcow2-img; do
    spec=$(XDG_DATA_DIRS=$root/usr/share BASH_COMPLETION_USER_DIR=/nonexistent bash -c \
      '. /usr/share/bash-completion/bash_completion; __load_completion "$1"; complete -p "$1"' \
      _ "$prog" 2>&1) || true
    [[ $spec == "complete -o filenames -F _uq_complete $prog" ]] ||
      fail "bash-completion does not load the packaged completion of $prog: $spec"
  done
  echo "bash-completion loads the completion of both commands"
else
  [[ ${CI:-} == true ]] && fail "bash-completion not installed (CI=true: no skip)"
  skipped="bash-completion not installed (scripts/setup.sh installs it)"
fi

# --- systemd ------------------------------------------------------------
if command -v systemd-analyze >/dev/null; then
  # A root for systemd-analyze: the system's units (the targets the unit's
  # default dependencies name), the packaged unit with an instance, and the
  # command it starts. --man=no: the page is checked above, not on this system.
  vroot=$work/verify-root
  mkdir -p "$vroot/lib/systemd/system" "$vroot/usr/bin"
  cp -r /lib/systemd/system/. "$vroot/lib/systemd/system/"
  cp "$unit" "$vroot/lib/systemd/system/"
  cp "$root/usr/bin/ublk-qcow2" "$vroot/usr/bin/"
  ln -s ublk-qcow2@.service "$vroot/lib/systemd/system/ublk-qcow2@test.service"
  systemd-analyze verify --man=no --root="$vroot" ublk-qcow2@test.service >"$work/verify.log" 2>&1 ||
    { cat "$work/verify.log"; fail "systemd-analyze verify"; }
  [[ ! -s $work/verify.log ]] || { cat "$work/verify.log"; fail "systemd-analyze verify warned"; }
  echo "systemd-analyze verify accepts the unit"
else
  # Checked last: the rest of the test still runs and fails on its own.
  [[ ${CI:-} == true ]] && fail "systemd-analyze not installed (CI=true: no skip)"
  skipped+="${skipped:+; }systemd-analyze not installed (scripts/setup.sh installs systemd)"
fi

# --- remove -------------------------------------------------------------
dpkg_root --purge ublk-qcow2 >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log"; fail "dpkg --purge"; }
left=$(cd "$root" && find . -path ./var/lib/dpkg -prune -o ! -type d -print)
[[ -z $left ]] || fail "files left after purge: $left"
if [[ -n ${skipped:-} ]]; then
  echo "package_test: SKIP: everything else passed, but $skipped"
  exit 77
fi
echo "package_test: PASS ($((SECONDS - start)) s)"
