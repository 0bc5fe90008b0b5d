#!/usr/bin/env bash
# Build benchmark: prints the figures the build issue asks for.
#   1. warm-cache end-to-end time of `imgforge build --distro debian --size-class small`
#   2. assemble + bootloader time vs a bare `mkfs.ext4 -d` of the same tree
#      into a file of the same size
#   3. imgforge's own peak memory (VmHWM of its process, sampled)
# Usage: tests/bench/build.sh [runs]   (as root; builds the release binary)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-3}
cargo build --release -q
bin=$PWD/target/release/imgforge
work=$(mktemp -d /var/tmp/imgforge-bench-XXXXXX)
trap 'rm -rf "$work"' EXIT

# Peak RSS of one process: sample VmHWM (monotonic) until it exits.
run_sampled() {
    "$@" > "$work/out.json" &
    local pid=$! hwm=0 v
    while kill -0 "$pid" 2>/dev/null; do
        v=$(awk '/VmHWM/ {print $2}' /proc/$pid/status 2>/dev/null || true)
        [[ -n "$v" && "$v" -gt "$hwm" ]] && hwm=$v
        sleep 0.05
    done
    wait "$pid"
    echo "$hwm" > "$work/hwm"
}

echo "== warming the cache (a first build of this package set bootstraps)"
"$bin" build --distro debian --size-class small -o "$work/image.raw" --json > /dev/null

printf '%-5s %9s %10s %10s %8s %12s\n' run total_s bootloader assemble seal peak_MiB
for i in $(seq 1 "$runs"); do
    run_sampled "$bin" build --distro debian --size-class small -o "$work/image.raw" --json
    python3 - "$work/out.json" "$(cat "$work/hwm")" "$i" <<'PY' | tee -a "$work/rows"
import json, sys
s = json.load(open(sys.argv[1]))
t = {x["stage"]: x["seconds"] for x in s["stages"]}
print(f'{sys.argv[3]:<5} {s["seconds"]:9.1f} {t["bootloader"]:10.2f} {t["assemble"]:10.2f} {t["seal"]:8.2f} {int(sys.argv[2])/1024:12.1f}')
PY
done

echo "== warm package cache only: --refresh-cache bootstraps again (downloads come from the cache)"
"$bin" build --distro debian --size-class small --refresh-cache -o "$work/image.raw" --json > "$work/refresh.json"
python3 -c "
import json; s = json.load(open('$work/refresh.json'))
t = {x['stage']: x['seconds'] for x in s['stages']}
print(f'bootstrap again, warm package cache: {s[\"seconds\"]:.1f} s total, bootstrap {t[\"bootstrap\"]:.1f} s (target < 90 s)')"

echo "== bare mkfs.ext4 -d of the same tree, same size"
tree=$(ls -t ~/.cache/imgforge/rootfs/debian-bookworm-*.tar | head -1)
mkdir "$work/tree"
tar --numeric-owner --xattrs --xattrs-include='*' -xpf "$tree" -C "$work/tree"
root_kib=$(python3 -c "
import json; m = json.load(open('$work/image.raw.json'))
p = [p for p in m['disk']['partitions'] if p['name'] == 'root'][0]
print((p['last_lba'] - p['first_lba'] + 1) * 512 // 1024)")
for i in $(seq 1 "$runs"); do
    rm -f "$work/bare.img"; truncate -s "${root_kib}k" "$work/bare.img"
    start=$(date +%s.%N)
    mkfs.ext4 -F -q -d "$work/tree" "$work/bare.img" "${root_kib}k"
    end=$(date +%s.%N)
    python3 -c "print($end - $start)"
done | tee "$work/bare" | awk '{printf "bare mkfs.ext4 -d: %.2f s\n", $1}'

python3 - "$work/rows" "$work/bare" <<'PY'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1])]
bare = st.median(float(l) for l in open(sys.argv[2]))
total = st.median(float(r[1]) for r in rows)
ab = st.median(float(r[2]) + float(r[3]) for r in rows)
abs_ = st.median(float(r[2]) + float(r[3]) + float(r[4]) for r in rows)
peak = max(float(r[5]) for r in rows)
print(f"median warm-cache build:          {total:.1f} s   (target < 90 s)")
print(f"median assemble+bootloader:       {ab:.2f} s = {ab/bare:.2f}x bare mkfs.ext4 -d {bare:.2f} s (target < 1.5x)")
print(f"  with seal (sha256 of the image): {abs_:.2f} s = {abs_/bare:.2f}x")
print(f"imgforge peak memory (VmHWM):     {peak:.1f} MiB (target < 512 MiB)")
PY
