#!/usr/bin/env bash
# Runs one libFuzzer target (fuzz/<target>_fuzz.cc) for a while.
#
#   scripts/fuzz.sh TARGET MINUTES [--add]
#     TARGET   header | image | opstream
#     MINUTES  wall-clock minutes to fuzz (one process, one core)
#     --add    at the end, merge the inputs that add coverage back into
#              fuzz/corpus/TARGET (otherwise the checked-in corpus is untouched)
#
# Builds with clang (clang++-14 or clang++), libFuzzer, AddressSanitizer and
# UBSan in its own build directory (UQ_FUZZ_BUILD_DIR, default build-fuzz) and
# fuzzes a copy of fuzz/corpus/TARGET. A crash, leak, sanitizer report or
# timeout (60 s) is saved under $UQ_FUZZ_BUILD_DIR/findings/TARGET/ and fuzzing
# resumes for the time left (at most 10 findings per run); to keep a finding,
# fix it and copy the file into fuzz/corpus/TARGET (the replay test then runs
# it on every ctest run). At the end it prints executions, CPU-minutes and
# findings. Extra libFuzzer flags: UQ_FUZZ_FLAGS.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $# -lt 2 ]]; then
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
target=$1
minutes=$2
add=${3:-}
[[ -f fuzz/${target}_fuzz.cc ]] || { echo "fuzz.sh: no target fuzz/${target}_fuzz.cc" >&2; exit 2; }
[[ -d fuzz/corpus/$target ]] || { echo "fuzz.sh: no corpus fuzz/corpus/$target" >&2; exit 2; }
[[ -z "$add" || "$add" == --add ]] || { echo "fuzz.sh: unknown option $add" >&2; exit 2; }

if command -v clang++-14 >/dev/null; then cc=clang-14 cxx=clang++-14; else cc=clang cxx=clang++; fi
build=${UQ_FUZZ_BUILD_DIR:-build-fuzz}
CC=$cc CXX=$cxx cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DUQ_BUILD_FUZZ=ON -DUQ_BUILD_TESTS=OFF -DSANITIZE=address,undefined >/dev/null
cmake --build "$build" --target "${target}_fuzzer"
fuzzer=$build/fuzz/${target}_fuzzer

# Per-target input size limit: whole small images for `image`, a config and
# 64 requests for `opstream`.
case $target in
  image) max_len=90112 ;;
  opstream) max_len=512 ;;
  *) max_len=8192 ;;
esac

work=$(mktemp -d "${TMPDIR:-/tmp}/uq-fuzz-$target.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/corpus" "$build/findings/$target"
cp fuzz/corpus/"$target"/* "$work/corpus/"

deadline=$(($(date +%s) + minutes * 60))
execs=0
findings=0
log=$build/findings/$target/last-run.log
: >"$log"
TIMEFORMAT='%U %S'
# One libFuzzer process at a time until the time is up; a finding ends a
# process (libFuzzer's default), so the loop starts the next one.
cpu=$({ time {
  while (($(date +%s) < deadline && findings < 10)); do
    left=$((deadline - $(date +%s)))
    rc=0
    # shellcheck disable=SC2086
    "$fuzzer" "$work/corpus" -max_total_time="$left" -max_len="$max_len" -timeout=60 \
      -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$build/findings/$target/" ${UQ_FUZZ_FLAGS:-} >>"$log" 2>&1 || rc=$?
    if ((rc != 0)); then findings=$((findings + 1)); fi
  done
} >/dev/null; } 2>&1)
execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | awk '{s += $1} END {print s + 0}')
# Crashes, leaks, timeouts and out-of-memory inputs (slow units are saved too
# but are not findings).
findings=$(grep -c 'Test unit written to .*/\(crash\|leak\|timeout\|oom\)-' "$log" || true)
cpu_minutes=$(echo "$cpu" | awk '{printf "%.1f", ($1 + $2) / 60}')

if [[ "$add" == --add ]]; then
  before=$(ls fuzz/corpus/"$target" | wc -l)
  "$fuzzer" -merge=1 -max_len="$max_len" fuzz/corpus/"$target" "$work/corpus" >>"$log" 2>&1
  echo "fuzz.sh: corpus fuzz/corpus/$target: $before -> $(ls fuzz/corpus/"$target" | wc -l) files"
fi
echo "fuzz.sh: $target: $execs executions, $cpu_minutes CPU-minutes, $findings findings" \
  "(log $log, findings in $build/findings/$target/)"
