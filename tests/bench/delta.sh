#!/usr/bin/env bash
# Delta publishing figures (issue 12, part 4): for each case, a parent image
# and a child image, against a fresh local moto server:
#   1. upload the parent in full (its block digests go to the digest store);
#   2. upload the child in full, timed;
#   3. upload the child with --parent (the parent's snapshot), timed;
# and print the child's data blocks (512 KiB blocks that are not all zeros),
# the blocks the delta sent (changed + became zeros), their share, and the
# two times. moto ignores ParentSnapshotId, so the times measure imgforge's
# side (read, hash, compare, send) against a local peer, not EBS.
#
# Cases are LABEL=PARENT:CHILD arguments (image paths). With BENCH_BUILD=1
# and no arguments it builds the issue's cases with target/release/imgforge
# build (needs root, the tree cache; --packages htop bootstraps anew):
#   a-rebuild   two builds of the same input (identical only once builds are
#               reproducible),
#   b-htop      a build, and a build with --packages htop,
#   c-layer     a build with an extra layer, and one with a file in it changed;
#   b-htop-layout-from, c-layer-layout-from
#               the same children built with --layout-from PARENT (the root
#               filesystem laid out on the parent's: unchanged files keep
#               their blocks).
# With neither, it makes synthetic cases from BENCH_BASE (an image; default:
# a 2 GiB sparse image with 256 MiB of random data):
#   same        the image twice (goal: 0 blocks sent),
#   one-block   a copy with 4 KiB changed at one place (1 block).
#
# Needs: python3 with `pip install 'moto[server]'`, cargo, util-linux.
# Usage: tests/bench/delta.sh [LABEL=PARENT:CHILD ...]
#        BENCH_WORK=DIR keeps the work folder (default: a temporary one).

set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
work=${BENCH_WORK:-}
own_work=
if [ -z "$work" ]; then
    work=$(mktemp -d /var/tmp/imgforge-delta.XXXXXX)
    own_work=1
fi
mkdir -p "$work"

export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
export IMGFORGE_STATE_DIR=$work/state

python3 -c 'import moto.server' 2>/dev/null || {
    echo "moto's server is missing: pip install 'moto[server]'" >&2
    exit 1
}

echo "== building imgforge (release)"
cargo build --release --manifest-path "$repo/Cargo.toml" --quiet
imgforge=$repo/target/release/imgforge

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
endpoint=http://127.0.0.1:$port
moto_pid=
start_moto() {
    python3 "$repo/tests/support/moto_server.py" 127.0.0.1 "$port" >"$work/moto.log" 2>&1 &
    moto_pid=$!
    for _ in $(seq 200); do
        if python3 -c "import socket; socket.create_connection(('127.0.0.1',$port),1)" 2>/dev/null; then
            return
        fi
        sleep 0.1
    done
    echo "moto did not start; see $work/moto.log" >&2
    exit 1
}
stop_moto() {
    if [ -n "$moto_pid" ]; then
        kill "$moto_pid" 2>/dev/null || true
        wait "$moto_pid" 2>/dev/null || true
        moto_pid=
    fi
}
cleanup() {
    stop_moto
    if [ -n "$own_work" ]; then rm -rf "$work"; fi
}
trap cleanup EXIT

cases=("$@")

build() { # OUTPUT [imgforge build flags...]
    local out=$1
    shift
    echo "== imgforge build -o $out $*"
    # One seed for all: the disk ids of a new version of an image stay put
    # (by default they follow the output's file name, which differs here).
    "$imgforge" build --distro debian --size-class small --size 2G --seed delta-bench \
        -o "$out" "$@" >"$out.build.log" 2>&1 || {
        echo "build failed; see $out.build.log" >&2
        exit 1
    }
}

if [ ${#cases[@]} -eq 0 ] && [ "${BENCH_BUILD:-0}" = 1 ]; then
    build "$work/base.raw"
    build "$work/base-again.raw"
    build "$work/htop.raw" --packages htop
    mkdir -p "$work/layer1/etc/imgforge-bench" "$work/layer2/etc/imgforge-bench"
    echo "setting = 1" >"$work/layer1/etc/imgforge-bench/bench.conf"
    echo "setting = 2" >"$work/layer2/etc/imgforge-bench/bench.conf"
    build "$work/layer1.raw" --layer "$work/layer1"
    build "$work/layer2.raw" --layer "$work/layer2"
    # The same children laid out on their parents' root filesystems.
    build "$work/htop-laid-out.raw" --packages htop --layout-from "$work/base.raw"
    build "$work/layer2-laid-out.raw" --layer "$work/layer2" --layout-from "$work/layer1.raw"
    cases=("a-rebuild=$work/base.raw:$work/base-again.raw"
        "b-htop=$work/base.raw:$work/htop.raw"
        "b-htop-layout-from=$work/base.raw:$work/htop-laid-out.raw"
        "c-layer=$work/layer1.raw:$work/layer2.raw"
        "c-layer-layout-from=$work/layer1.raw:$work/layer2-laid-out.raw")
elif [ ${#cases[@]} -eq 0 ]; then
    base=$work/base.raw
    if [ -n "${BENCH_BASE:-}" ]; then
        cp --sparse=always "$BENCH_BASE" "$base"
    else
        truncate -s 2G "$base"
        for offset_mib in 0 512 1024 1792; do
            dd if=/dev/urandom of="$base" bs=1M count=64 seek=$offset_mib conv=notrunc status=none
        done
    fi
    cp --sparse=always "$base" "$work/same.raw"
    cp --sparse=always "$base" "$work/one-block.raw"
    dd if=/dev/urandom of="$work/one-block.raw" bs=4096 count=1 seek=$((1024 * 256 + 3)) \
        conv=notrunc status=none
    cases=("same=$base:$work/same.raw" "one-block=$base:$work/one-block.raw")
fi

# Runs imgforge upload with --json; prints "seconds data_blocks blocks_sent snapshot".
timed_upload() {
    local log=$1
    shift
    local start end
    start=$(date +%s.%N)
    "$imgforge" upload "$@" --endpoint-url "$endpoint" --no-register --json >"$log.json" 2>"$log" || {
        echo "upload failed; see $log" >&2
        exit 1
    }
    end=$(date +%s.%N)
    python3 - "$log.json" "$start" "$end" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{float(sys.argv[3]) - float(sys.argv[2]):.2f} {r['data_blocks']} {r['blocks_sent']} {r['snapshot_id']}")
EOF
}

rows=()
for case in "${cases[@]}"; do
    label=${case%%=*}
    pair=${case#*=}
    parent=${pair%%:*}
    child=${pair#*:}
    echo "== $label: parent $parent, child $child"
    start_moto
    read -r _ _ _ parent_snapshot < <(timed_upload "$work/$label-parent.log" "$parent" \
        --name "$label-parent" --family "bench-$label" --journal "$work/$label.journal")
    read -r full_s data full_sent _ < <(timed_upload "$work/$label-full.log" "$child" \
        --name "$label-full" --family "bench-$label-full" --journal "$work/$label.journal")
    read -r delta_s _ delta_sent _ < <(timed_upload "$work/$label-delta.log" "$child" \
        --name "$label-delta" --family "bench-$label" --parent "$parent_snapshot" \
        --journal "$work/$label.journal")
    stop_moto
    share=$(python3 -c "print(f'{100 * $delta_sent / max($data, 1):.2f}')")
    rows+=("$(printf "%-20s %11d %11d %11d %8s%% %8.2f s %8.2f s" "$label" "$data" "$full_sent" \
        "$delta_sent" "$share" "$full_s" "$delta_s")")
done

echo
printf "%-20s %11s %11s %11s %9s %10s %10s\n" case data_blocks full_sent delta_sent sent/data full delta
for row in "${rows[@]}"; do echo "$row"; done
