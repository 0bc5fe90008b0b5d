#!/bin/bash
# Seconds from QEMU's start to the guest's IMGFORGE-REPORT line, per firmware,
# under TCG (the accelerator this project's machines can use).
#
#   tests/bench/boot.sh [IMAGE] [RUNS]
#
# Without IMAGE, builds a Debian small image into a temporary directory
# (root needed). Target: under 120 s per firmware.
set -u
cd "$(dirname "$0")/../.."
runs=${2:-1}
cargo build --release --quiet || exit 1
bin=target/release/imgforge
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
tmp=$(mktemp -d /tmp/imgforge-bench-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
image=${1:-}
if [ -z "$image" ]; then
    image=$tmp/debian-small.raw
    start=$EPOCHREALTIME
    "$bin" build --distro debian --size-class small -o "$image" >/dev/null || exit 1
    printf 'build: %s s\n' "$(elapsed "$start")"
fi
status=0
for firmware in bios uefi; do
    for run in $(seq 1 "$runs"); do
        out=$tmp/$firmware-$run.json
        wall_start=$EPOCHREALTIME
        "$bin" boot-test "$image" --firmware "$firmware" --accel tcg --json >"$out" 2>"$tmp/err" || status=1
        wall=$(elapsed "$wall_start")
        seconds=$(sed -n 's/^ *"seconds": \([0-9.]*\),*$/\1/p' "$out" | head -1)
        passed=$(sed -n 's/^ *"passed": \(true\|false\),*$/\1/p' "$out" | tail -1)
        uptime=$(sed -n 's/^ *"uptime": "\([0-9.]*\)",*$/\1/p' "$out" | head -1)
        printf '%s run %d: %s s to the report line (guest uptime %s s, imgforge wall %s s), passed=%s\n' \
            "$firmware" "$run" "${seconds:-?}" "${uptime:-?}" "$wall" "${passed:-false}"
        [ "$passed" = true ] || { status=1; tail -45 "$tmp/err"; }
    done
done
exit $status
