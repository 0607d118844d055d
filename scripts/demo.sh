#!/usr/bin/env bash
# The main job, end to end: set up, build, then attach a demo qcow2 image (an
# overlay on a backing file with compressed clusters) as /dev/ublkbN, make a
# filesystem on it, mount it, write and read a file, unmount, detach and let
# `qemu-img check` judge the image.
#
# Where the running kernel has no ublk driver (/dev/ublk-control), the same
# steps run inside the project's test VM (Debian's 6.1 kernel source built with
# ublk, booted under qemu-system-x86_64).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --vm
build=${UQ_BUILD_DIR:-build}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"$(nproc)" --target ublk-qcow2 qcow2-img
build_abs=$(cd "$build" && pwd)

if [[ -e /dev/ublk-control ]]; then
  exec scripts/demo-steps.sh "$build_abs"
fi
echo "demo: this kernel ($(uname -r)) has no ublk driver (/dev/ublk-control is missing);"
echo "demo: running the demo inside the test VM (Linux 6.1 with ublk_drv, qemu-system-x86_64)."
exec scripts/vm-run.sh -- scripts/demo-steps.sh "$build_abs"
