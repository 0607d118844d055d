#!/usr/bin/env bash
# The bash completion (dist/bash-completion/ublk-qcow2) against the built
# binaries: commands, a command's options, an option's values, operands.
#   tests/dist/completion_test.sh UBLK_QCOW2 QCOW2_IMG
set -euo pipefail
ublk=$1 img=$2
source "$(dirname "$0")/../../dist/bash-completion/ublk-qcow2"
fails=0

# expect "WORDS..." "WANTED REPLY" : completes the last word of WORDS.
expect() {
  local line=$1 want=$2 got
  read -ra COMP_WORDS <<<"$line"
  [[ $line == *" " ]] && COMP_WORDS+=("")
  COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
  _uq_complete
  got=$(printf '%s\n' "${COMPREPLY[@]}" | sort | paste -sd ' ')
  if [[ $got != "$want" ]]; then
    echo "FAIL: '$line' completes to '$got', want '$want'"
    fails=$((fails + 1))
  fi
}

expect "$ublk par" "partitions"
expect "$ublk --v" "--version"
expect "$ublk mount --pa" "--partition"
expect "$ublk attach --no" "--no-user-copy"
expect "$ublk attach --format " "auto qcow2 raw"
expect "$ublk attach --format = r" "raw"
expect "$ublk partitions --output " "human json"
expect "$ublk list -o json --out" "--output"
expect "$img cre" "create"
expect "$img info --output=x --backing" "--backing-chain"
expect "$img info --backing-chain --al" "--allow-devices"

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkdir "$dir/sub"
touch "$dir/disk.qcow2"
expect "$ublk attach $dir/di" "$dir/disk.qcow2"
expect "$ublk mount $dir/disk.qcow2 $dir/" "$dir/sub"
expect "$ublk unmount $dir/d" ""
expect "$img info $dir/di" "$dir/disk.qcow2"
expect "$img re" "rebase resize"
expect "$img comm" "commit"
expect "$img am" "amend"
expect "$img amend --" "--allow-devices --format --help --quiet"
expect "$img dd " "bs= count= if= of= skip="
expect "$img dd bs = 1M i" "if="
expect "$img dd if = $dir/di" "$dir/disk.qcow2"
expect "$ublk attach --data-file $dir/di" "$dir/disk.qcow2"
expect "$ublk attach --cache " "none writeback"
expect "$ublk attach --al" "--allow-devices"
expect "$img map --al" "--allow-devices"
expect "$img compare -s --al" "--allow-devices"
expect "$img convert -O qcow2 --al" "--allow-devices"
expect "$img dd --al" "--allow-devices"
expect "$img rebase --al" "--allow-devices"
expect "$img commit --al" "--allow-devices"
expect "$img rebase --fo" "--force-share --format"
expect "$img convert --force" "--force-share"

((fails == 0)) || exit 1
echo "completion ok"
