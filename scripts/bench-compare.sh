#!/usr/bin/env bash
# qcow2-img bench beside qemu-img bench, 4 KiB requests. Two tables:
#
#  1. Targets (depth 64), each ours against its baseline, best of RUNS runs:
#     - reads and overwrites of a fully allocated image holding real data
#       (random bytes), against `qemu-img bench -f raw` on the raw copy of
#       the same data: the raw limit;
#     - allocating writes to an empty image, against `qemu-img bench -w` on
#       the same kind of image;
#     - first writes to an overlay over the real-data image (every first
#       write of a cluster copies the rest of it from the backing file),
#       against `qemu-img bench -w` on the same kind of overlay.
#  2. The request path alone: depth 1 and 64 on a preallocated
#     (preallocation=metadata) and an empty image, whose reads hit holes.
#
# Ratios are baseline time / our time (> 1 means qcow2-img was faster).
# Timings are measured, never asserted.
#
#   scripts/bench-compare.sh [path/to/qcow2-img]
#
# Environment: COUNT requests per run (default 20000), RUNS per case
# (default 3), CACHE none|writeback (default writeback), SIZE image size
# (default 1G), WORKDIR (default a fresh temp dir), TABLES (default
# "targets path").
set -euo pipefail

ours=${1:-${QCOW2_IMG:-build/tools/qcow2-img}}
count=${COUNT:-20000}
runs=${RUNS:-3}
cache=${CACHE:-writeback}
size=${SIZE:-1G}
tables=${TABLES:-targets path}

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
best() { sort -g | head -1; }

# time_bench TOOL FMT IMG [bench options...]: seconds of one bench run.
time_bench() {
  local tool=$1 fmt=$2 img=$3
  shift 3
  local args=(bench -c "$count" -d 64 -s 4k -t "$cache" -f "$fmt" --pattern=90 "$@")
  if [[ $tool == qemu ]]; then
    qemu-img "${args[@]}" -i io_uring "$img"
  else
    "$ours" "${args[@]}" "$img"
  fi | sed -n 's/^Run completed in \([0-9.]*\) seconds\./\1/p'
}

# target_case TOOL KIND OP: one run of a target case on fresh state where
# the case needs it. KIND: raw (the raw copy), real (the real-data qcow2),
# empty, overlay.
target_case() {
  local tool=$1 kind=$2 op=$3 w=()
  [[ $op == read ]] || w=(-w)
  case $kind in
    raw) time_bench "$tool" raw "$work/real.raw" "${w[@]}" ;;
    real) time_bench "$tool" qcow2 "$work/real.qcow2" "${w[@]}" ;;
    sparse)
      rm -f "$work/sparse.raw"
      truncate -s "$size" "$work/sparse.raw"
      time_bench "$tool" raw "$work/sparse.raw" "${w[@]}"
      ;;
    empty)
      rm -f "$work/empty-w.qcow2"
      qemu-img create -q -f qcow2 "$work/empty-w.qcow2" "$size"
      time_bench "$tool" qcow2 "$work/empty-w.qcow2" "${w[@]}"
      ;;
    overlay)
      rm -f "$work/overlay.qcow2"
      qemu-img create -q -f qcow2 -F qcow2 -b "$work/real.qcow2" "$work/overlay.qcow2"
      time_bench "$tool" qcow2 "$work/overlay.qcow2" "${w[@]}"
      ;;
  esac
}

# target_row LABEL TARGET BASE_TOOL BASE_KIND OUR_KIND OP
target_row() {
  local label=$1 target=$2 base_tool=$3 base_kind=$4 our_kind=$5 op=$6
  local b o bs=() os=()
  # Interleaved, so that a change of machine load hits both sides alike.
  for _ in $(seq "$runs"); do
    bs+=("$(target_case "$base_tool" "$base_kind" "$op")")
    os+=("$(target_case ours "$our_kind" "$op")")
  done
  b=$(printf '%s\n' "${bs[@]}" | grep . | best || true)
  o=$(printf '%s\n' "${os[@]}" | grep . | best || true)
  if [[ -z $b || -z $o ]]; then
    printf '| %s | %s | %s | failed | %s |\n' "$label" "${b:-error}" "${o:-error}" "$target"
    return
  fi
  awk -v l="$label" -v b="$b" -v o="$o" -v t="$target" 'BEGIN {
    r = (o > 0) ? b / o : 1e9
    printf "| %s | %s | %s | %.2fx | >= %sx: %s |\n", l, b, o, r, t, (r >= t) ? "met" : "NOT met"
  }'
}

targets_table() {
  # Real data: random bytes in every cluster, so reads and overwrites touch
  # the disk, not holes.
  head -c "$(numfmt --from=iec "$size")" /dev/urandom > "$work/real.raw"
  qemu-img convert -O qcow2 "$work/real.raw" "$work/real.qcow2"
  sync # no dirty page cache left for the first O_DIRECT runs to wait on
  printf '## Targets: depth 64, best of %s runs, cache=%s\n\n' "$runs" "$cache"
  printf '| case | baseline (s) | qcow2-img (s) | baseline/ours | target |\n'
  printf '|---|---:|---:|---:|---|\n'
  target_row "read, real data, vs qemu-img -f raw on the raw copy" 0.95 qemu raw real read
  target_row "overwrite, real data, vs qemu-img -f raw on the raw copy" 0.95 qemu raw real write
  target_row "allocating write, empty image, vs qemu-img" 1.5 qemu empty empty write
  target_row "first write to an overlay, vs qemu-img" 1.2 qemu overlay overlay write
  # For reference: the disk's own cost of writing into new space, and
  # qemu-img on the same qcow2 image.
  target_row "allocating write, empty image, vs qemu-img -f raw into a sparse raw file" 1.0 qemu sparse empty write
  target_row "read, real data, vs qemu-img on the qcow2 image" 1.0 qemu real real read
  target_row "overwrite, real data, vs qemu-img on the qcow2 image" 1.0 qemu real real write
  printf '\n'
}

path_table() {
  printf '## Request path: reads of holes, median of %s runs, cache=%s\n\n' "$runs" "$cache"
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
  printf '\n'
}

printf '# qcow2-img bench vs qemu-img bench\n\n'
printf 'count=%s requests of 4 KiB per run, cache=%s, image size %s\n' "$count" "$cache" "$size"
printf 'qemu-img: %s; qcow2-img: %s\n\n' "$(qemu-img --version | head -1)" "$ours"
for t in $tables; do
  case $t in
    targets) targets_table ;;
    path) path_table ;;
    *) echo "bench-compare: unknown table '$t' (targets, path)" >&2; exit 1 ;;
  esac
done
