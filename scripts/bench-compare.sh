#!/usr/bin/env bash
# qcow2-img bench and qemu-img bench side by side on the same images: 4 KiB
# reads and writes at queue depth 1 and 64, on a preallocated
# (preallocation=metadata) and on an empty qcow2 image. Prints one table row
# per case with the median of RUNS runs and the ratio qemu/ours (> 1 means
# qcow2-img was faster). Timings are measured, never asserted.
#
#   scripts/bench-compare.sh [path/to/qcow2-img]
#
# Environment: COUNT requests per run (default 20000), RUNS per case
# (default 3), CACHE none|writeback (default writeback), SIZE image size
# (default 1G), WORKDIR (default a fresh temp dir).
set -euo pipefail

ours=${1:-${QCOW2_IMG:-build/tools/qcow2-img}}
count=${COUNT:-20000}
runs=${RUNS:-3}
cache=${CACHE:-writeback}
size=${SIZE:-1G}

command -v qemu-img >/dev/null || { echo "bench-compare: qemu-img not found" >&2; exit 77; }
[[ -x "$ours" ]] || { echo "bench-compare: $ours is not executable (build qcow2-img first)" >&2; exit 1; }

work=${WORKDIR:-$(mktemp -d /tmp/uq-bench-XXXXXX)}
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT

# make_image KIND PATH: a fresh qcow2 image, preallocated or empty.
make_image() {
  local kind=$1 path=$2
  rm -f "$path"
  if [[ $kind == prealloc ]]; then
    qemu-img create -q -f qcow2 -o preallocation=metadata "$path" "$size"
  else
    qemu-img create -q -f qcow2 "$path" "$size"
  fi
}

# run_once TOOL OP DEPTH KIND: seconds of one run ("Run completed in X seconds.").
run_once() {
  local tool=$1 op=$2 depth=$3 kind=$4
  local img="$work/$kind.qcow2"
  # Writes change the image: every write run starts from a fresh one so both
  # tools see the same state (an empty image stays empty).
  if [[ $op == write || ! -e $img ]]; then make_image "$kind" "$img"; fi
  local args=(bench -c "$count" -d "$depth" -s 4k -t "$cache" -f qcow2)
  [[ $op == write ]] && args+=(-w)
  if [[ $tool == qemu ]]; then
    qemu-img "${args[@]}" -i io_uring "$img"
  else
    "$ours" "${args[@]}" "$img"
  fi | sed -n 's/^Run completed in \([0-9.]*\) seconds\./\1/p'
}

median() { sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

printf '# qcow2-img bench vs qemu-img bench\n\n'
printf 'count=%s requests of 4 KiB per run, median of %s runs, cache=%s, image size %s\n' \
  "$count" "$runs" "$cache" "$size"
printf 'qemu-img: %s; qcow2-img: %s\n\n' "$(qemu-img --version | head -1)" "$ours"
printf '| op | depth | image | qemu-img (s) | qcow2-img (s) | qemu/ours |\n'
printf '|---|---:|---|---:|---:|---:|\n'
for kind in prealloc empty; do
  for op in read write; do
    for depth in 1 64; do
      q=$(for _ in $(seq "$runs"); do run_once qemu "$op" "$depth" "$kind"; done | median)
      o=$(for _ in $(seq "$runs"); do run_once ours "$op" "$depth" "$kind"; done | median)
      if [[ -z $q || -z $o ]]; then
        printf '| %s | %s | %s | %s | %s | failed |\n' "$op" "$depth" "$kind" "${q:-error}" "${o:-error}"
        continue
      fi
      ratio=$(awk -v q="$q" -v o="$o" 'BEGIN { if (o > 0) printf "%.2f", q / o; else print "inf" }')
      printf '| %s | %s | %s | %s | %s | %s |\n' "$op" "$depth" "$kind" "$q" "$o" "$ratio"
    done
  done
done
