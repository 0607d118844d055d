#!/usr/bin/env bash
# Sets up a Debian 12 machine, builds everything and runs every test tier:
# unit, engine simulation, interop (QEMU's tools as oracle), and the VM tier
# (every scenario on two kernels with ublk, Debian's 6.1 and 6.12, built here
# and booted under qemu-system-x86_64).
#
#   scripts/test.sh              everything
#   UQ_TEST_LABELS=unit scripts/test.sh   only tests with that ctest label (regex)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --vm

jobs=$(nproc)
build=${UQ_BUILD_DIR:-build}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DUQ_WERROR=ON
cmake --build "$build" -j"$jobs"

# The VM tier's kernels, 6.1 and 6.12: built once per machine and cached outside
# the checkout (scripts/lib/kernel-cache.sh: ~/.cache/ublk-qcow2/kernels, or
# $UQ_KERNEL_CACHE), so a fresh clone reuses them; a no-op when up to date or
# when this kernel has ublk itself. Built before the tests rather than inside
# ctest so its minutes do not compete with the other tiers.
if [[ -z "${UQ_TEST_LABELS:-}" || "vm" =~ ${UQ_TEST_LABELS} ]]; then
  tests/vm/ctest-vm.sh kernel
fi

# The sanitizer stages build only what they run: the executables of the
# selected tests, named by their paths in the main build (test discovery needs
# built executables, so the main build answers; ninja takes an output's path
# as a target), plus the commands those tests call. Scripts (not build
# outputs) drop out.
build_abs=$(cd "$build" && pwd)
test_executables() {  # ctest selection arguments
  ctest --test-dir "$build" -N -V "$@" |
    sed -n "s|^[0-9]*: Test command: $build_abs/\([^ \"]*\).*|\1|p" | sort -u
}
commands=(ublk-qcow2 ublk-qcow2-udev qcow2-img)
asan_cli_tests='MalformedCliTest|CliErrorsTest'

label_args=()
if [[ -n "${UQ_TEST_LABELS:-}" ]]; then label_args=(-L "$UQ_TEST_LABELS"); fi
ctest --test-dir "$build" --output-on-failure -j"$jobs" "${label_args[@]}"

# Again under AddressSanitizer + UBSan: the unit tier, the fault matrix
# (label sanitize) and the malformed-header CLI tests: bad images must give an
# error line, never a crash or undefined behaviour.
if [[ -z "${UQ_TEST_LABELS:-}" ]]; then
  asan=${build}-asan
  cmake -S . -B "$asan" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DUQ_WERROR=ON \
    -DSANITIZE=address,undefined
  mapfile -t targets < <(test_executables -L 'unit|sanitize'; test_executables -R "$asan_cli_tests")
  cmake --build "$asan" -j"$jobs" --target "${targets[@]}" "${commands[@]}"
  ctest --test-dir "$asan" --output-on-failure -j"$jobs" -L 'unit|sanitize'
  ctest --test-dir "$asan" --output-on-failure -j"$jobs" -R "$asan_cli_tests"
fi

# Again under ThreadSanitizer: the tests labelled `tsan` (the engine, cache and
# io tests, among them the simulation and power-loss runs with 2 and 4 real
# threads sharing one image). Only their executables are built. setarch -R:
# GCC 12's TSan aborts on kernels with high mmap randomisation ("unexpected
# memory mapping"); without ASLR its shadow layout always fits. The
# PowerLossFile model test is single-threaded and takes minutes under TSan.
if [[ -z "${UQ_TEST_LABELS:-}" || "tsan" =~ ${UQ_TEST_LABELS} ]]; then
  tsan=${build}-tsan
  cmake -S . -B "$tsan" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DUQ_WERROR=ON \
    -DSANITIZE=thread
  mapfile -t targets < <(test_executables -L tsan)
  cmake --build "$tsan" -j"$jobs" --target "${targets[@]}"
  TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 ${TSAN_OPTIONS:-}" \
    setarch "$(uname -m)" -R ctest --test-dir "$tsan" --output-on-failure -j"$jobs" -L tsan \
    -E '^PowerLossFileTest\.RandomOpsMatchModel$'
fi
