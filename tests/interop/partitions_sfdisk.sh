#!/usr/bin/env bash
# `ublk-qcow2 partitions` with sfdisk as the oracle, on image files (no ublk
# needed): sfdisk partitions a raw file (GPT with names and attributes; MBR
# with logical partitions), mkfs.ext4 writes a labelled file system at one
# partition's offset, qemu-img converts the file to qcow2; `partitions
# --output=json` of both the raw file and the qcow2 image must report the
# partition table that `sfdisk -J` reports for the raw file, and the file
# system.
#   tests/interop/partitions_sfdisk.sh UBLK_QCOW2
# Exit 77 (skip) when a tool is missing, except under CI=true (a failure).
set -euo pipefail
uq=$1
work=$(mktemp -d /tmp/uq-partitions.XXXXXX)
trap 'rm -rf "$work"' EXIT
fail() { echo "partitions_sfdisk: FAIL: $*" >&2; exit 1; }
for tool in sfdisk qemu-img mkfs.ext4 jq; do
  if ! command -v "$tool" >/dev/null; then
    [[ ${CI:-} == true ]] && fail "$tool not installed (CI=true: no skip)"
    echo "partitions_sfdisk: SKIP: $tool not installed (scripts/setup.sh)"; exit 77
  fi
done
# The device name is each tool's own; nodes are compared by the number after
# it ("file1", but "disk.qcow2p1" after a digit, as the kernel names them).
norm='.partitiontable | .device as $d | del(.device)
      | .partitions |= map(.node |= (ltrimstr($d) | ltrimstr("p")))'

check() {  # NAME SFDISK_SCRIPT FS_PARTITION FS_START_SECTOR
  local raw=$work/$1.raw qcow2=$work/$1.qcow2
  truncate -s 64M "$raw"
  printf '%b' "$2" | sfdisk -q "$raw" >/dev/null || fail "sfdisk $1"
  mkfs.ext4 -q -F -L "lbl-$1" -E offset=$(($4 * 512)) "$raw" 8M || fail "mkfs.ext4 $1"
  qemu-img convert -f raw -O qcow2 "$raw" "$qcow2"
  sfdisk -J "$raw" | jq -S "$norm" >"$work/want.json"
  for args in "--format raw $raw" "$qcow2"; do
    # shellcheck disable=SC2086
    "$uq" partitions --output=json $args >"$work/ours.json" || fail "partitions $args"
    jq -S "$norm" "$work/ours.json" | diff -u "$work/want.json" - || fail "$args differs from sfdisk -J"
    jq -e --argjson n "$3" --arg l "lbl-$1" \
      '.filesystems | length == 1 and .[0].partition == $n and .[0].type == "ext4" and .[0].label == $l' \
      "$work/ours.json" >/dev/null || fail "$args: file systems $(jq -c .filesystems "$work/ours.json")"
  done
  # shellcheck disable=SC2086
  "$uq" partitions "$qcow2" | grep -Eq "^ +$3 +$4 .* ext4 +lbl-$1$" ||
    fail "human output of $1: $("$uq" partitions "$qcow2")"
  echo "$1: $(jq '.partitions | length' "$work/want.json") partitions match sfdisk -J"
}

check gpt 'label: gpt\nsize=1M, type=21686148-6449-6E6F-744E-656564454649, name="bios"\nsize=20M, type=L, name="root é", attrs="RequiredPartition LegacyBIOSBootable GUID:48,63"\nsize=10M, type=S\ntype=U\n' 2 4096
check dos 'label: dos\n,4M,83,*\n,,5\n,10M,83\n,20M,83\n' 5 12288
echo "partitions_sfdisk: PASS"
