#!/usr/bin/env bash
# qcow2-img convert beside qemu-img convert on the same inputs, with each
# ratio beside its target (issue "convert: packed compressed clusters ..."):
#   - convert -O raw of a 2 GiB qcow2 image that is half unallocated;
#   - convert -O qcow2 of a sparse 2 GiB raw file (the same data);
#   - convert -c (zlib, and zstd) of a 1 GiB raw disk holding an ext4 file
#     system filled from /usr: time, and output size against qemu-img's.
# Both tools run with their defaults (qemu-img convert: cache=unsafe on the
# target, writeback on the source). Best of RUNS runs, interleaved; ratios
# are qemu-img time / ours (> 1: ours was faster). Timings are measured,
# never asserted.
#
#   scripts/bench-convert.sh [path/to/qcow2-img]
#
# Environment: RUNS (default 3), WORKDIR (default a fresh temp dir on /tmp,
# which must be a real disk file system, not tmpfs, to mean anything),
# WARM_MIB (memory filled and freed before each timed run, default 2048; 0:
# none; see fresh below).
set -euo pipefail

ours=${1:-${QCOW2_IMG:-build/tools/qcow2-img}}
runs=${RUNS:-3}
command -v qemu-img >/dev/null || { echo "bench-convert: qemu-img not found" >&2; exit 77; }
command -v mke2fs >/dev/null || { echo "bench-convert: mke2fs not found (e2fsprogs)" >&2; exit 77; }
[[ -x "$ours" ]] || { echo "bench-convert: $ours is not executable (build qcow2-img first)" >&2; exit 1; }

work=${WORKDIR:-$(mktemp -d /tmp/uq-bench-convert-XXXXXX)}
mkdir -p "$work"
trap 'rm -rf "$work" "/dev/shm/uq-bench-convert-warm.$$"' EXIT

# Seconds taken by one command (its output is discarded).
seconds() {
  local t0 t1
  t0=$(date +%s.%N)
  "$@" > /dev/null
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'
}
best() { sort -g | head -1; }

# Untimed, before each timed run: remove the command's target (its last
# argument), write back every dirty page, then fill and free WARM_MIB of
# memory. Without the first two a run pays for the previous run's gigabyte
# of dirty page cache (writeback, and truncating the old target), so
# whichever tool ran second in a pair looked slower: the raw -> qcow2 row
# read 0.90x in one order and about 1.5x in the other. The third is for
# virtual machines whose kernel hands free memory back to the host (free
# page reporting, virtio-balloon): a run whose page cache lands on memory
# the host took back pays a host fault per page, and the same convert took
# 0.15 s or 1 s by whether the run before it had just freed a gigabyte.
# Memory freed just now is not handed back yet, so each run gets the same.
warm_mib=${WARM_MIB:-2048}
warm_file=/dev/shm/uq-bench-convert-warm.$$
[[ -d /dev/shm ]] || warm_mib=0
fresh() {
  rm -f "${@: -1}"
  sync
  if ((warm_mib > 0)); then
    head -c "${warm_mib}M" /dev/zero > "$warm_file" || true
    rm -f "$warm_file"
  fi
}

# row LABEL TARGET QEMU_CMD... -- OUR_CMD...: best of RUNS for each, interleaved.
row() {
  local label=$1 target=$2
  shift 2
  local qemu=() mine=()
  while [[ $1 != -- ]]; do qemu+=("$1"); shift; done
  shift
  mine=("$@")
  local qs=() os=()
  for _ in $(seq "$runs"); do
    fresh "${qemu[@]}"
    qs+=("$(seconds "${qemu[@]}")")
    fresh "${mine[@]}"
    os+=("$(seconds "${mine[@]}")")
  done
  local q o
  q=$(printf '%s\n' "${qs[@]}" | best)
  o=$(printf '%s\n' "${os[@]}" | best)
  awk -v l="$label" -v q="$q" -v o="$o" -v t="$target" 'BEGIN {
    r = (o > 0) ? q / o : 1e9
    printf "| %s | %s | %s | %.2fx | >= %sx: %s |\n", l, q, o, r, t, (r >= t) ? "met" : "NOT met"
  }'
}

size_row() {
  local label=$1 q=$2 o=$3
  local qs os
  qs=$(stat -c %s "$q")
  os=$(stat -c %s "$o")
  awk -v l="$label" -v q="$qs" -v o="$os" 'BEGIN {
    r = o / q
    printf "| %s | %d | %d | %.3f | <= 1.02: %s |\n", l, q, o, r, (r <= 1.02) ? "met" : "NOT met"
  }'
}

# Inputs. Half unallocated: random data in every other 64 MiB of 2 GiB.
half=$work/half.raw
truncate -s 2G "$half"
for i in $(seq 0 2 31); do
  dd if=/dev/urandom of="$half" bs=1M count=64 seek=$((i * 64)) conv=notrunc status=none
done
qemu-img convert -O qcow2 "$half" "$work/half.qcow2"
# A real file system: ext4 on 1 GiB, filled from /usr (hard links into one
# tree, so mke2fs -d can copy it).
fsdir=$work/tree
mkdir -p "$fsdir"
for d in /usr/share/doc /usr/share/locale /usr/include /usr/lib/python3; do
  [[ -d $d ]] && cp -al "$d" "$fsdir/$(echo "${d#/}" | tr / _)" 2>/dev/null || true
done
fs=$work/fs.raw
rm -f "$fs"
mke2fs -q -t ext4 -d "$fsdir" "$fs" 1G
sync

printf '# qcow2-img convert vs qemu-img convert\n\n'
printf 'best of %s runs each, interleaved; %s; qcow2-img: %s\n' "$runs" \
  "$(qemu-img --version | head -1)" "$ours"
printf 'ext4 image: %s MiB used of 1024\n\n' "$(($(du -sk "$fs" | cut -f1) / 1024))"
printf '| case | qemu-img (s) | qcow2-img (s) | qemu/ours | target |\n'
printf '|---|---:|---:|---:|---|\n'
row "convert -O raw, 2 GiB qcow2 half unallocated" 1.25 \
  qemu-img convert -O raw "$work/half.qcow2" "$work/q.raw" -- \
  "$ours" convert -O raw "$work/half.qcow2" "$work/o.raw"
row "convert -O qcow2, sparse 2 GiB raw" 1.25 \
  qemu-img convert -f raw -O qcow2 "$half" "$work/q.qcow2" -- \
  "$ours" convert -f raw -O qcow2 "$half" "$work/o.qcow2"
row "convert -c (zlib), 1 GiB ext4 disk" 1.5 \
  qemu-img convert -f raw -c -O qcow2 "$fs" "$work/qz.qcow2" -- \
  "$ours" convert -f raw -c -O qcow2 "$fs" "$work/oz.qcow2"
row "convert -c (zstd), 1 GiB ext4 disk" 1.5 \
  qemu-img convert -f raw -c -O qcow2 -o compression_type=zstd "$fs" "$work/qs.qcow2" -- \
  "$ours" convert -f raw -c -O qcow2 -o compression_type=zstd "$fs" "$work/os.qcow2"
printf '\n| output size | qemu-img (bytes) | qcow2-img (bytes) | ours/qemu | target |\n'
printf '|---|---:|---:|---:|---|\n'
size_row "convert -c (zlib)" "$work/qz.qcow2" "$work/oz.qcow2"
size_row "convert -c (zstd)" "$work/qs.qcow2" "$work/os.qcow2"
