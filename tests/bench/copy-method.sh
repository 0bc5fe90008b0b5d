#!/usr/bin/env bash
# --copy-method copy vs upload (issue 22, item 7): the time until the AMI is
# available in 3 regions (us-east-1 and two --copy-to regions), against a
# local moto through the recording proxy, optionally with --latency-ms added
# to every call. The image: BENCH_SIZE_GIB (default 2) GiB, sparse, with
# BENCH_DATA_MIB (default 64) MiB of random data and its build manifest.
#
# moto makes a copy `available` at once, so `copy` here is a lower bound of
# what CopyImage takes on AWS (minutes to tens of minutes for real copies);
# `upload` pays for writing every region's snapshot itself.
#
# Needs: python3 with `pip install 'moto[server]'`, cargo.
# Usage: tests/bench/copy-method.sh [--latency-ms MS] [WORKDIR]
#   IMGFORGE=PATH uses that binary instead of building the release one.

set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
latency=0
work=
while [ $# -gt 0 ]; do
    case $1 in
        --latency-ms) latency=$2; shift 2 ;;
        *) work=$1; shift ;;
    esac
done
own_work=
if [ -z "$work" ]; then
    work=$(mktemp -d /var/tmp/imgforge-copy-method.XXXXXX)
    own_work=1
fi
mkdir -p "$work"
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true IMGFORGE_STATE_DIR=$work/state

imgforge=${IMGFORGE:-}
if [ -z "$imgforge" ]; then
    echo "== building imgforge (release)"
    cargo build --release --manifest-path "$repo/Cargo.toml" --quiet
    imgforge=$repo/target/release/imgforge
fi

image=$work/regions.raw
rm -f "$image" "$image".*
truncate -s "${BENCH_SIZE_GIB:-2}G" "$image"
dd if=/dev/urandom of="$image" bs=1M count="${BENCH_DATA_MIB:-64}" seek=1 conv=notrunc status=none
python3 - "$image" <<'PY'
import hashlib, json, os, sys, time
path = sys.argv[1]
h = hashlib.sha256()
with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
time.sleep(0.01)
json.dump({"imgforge_version": "bench", "distro": "debian", "release": "bookworm",
           "architecture": "x86_64", "size_class": "small", "kernel_version": "6.1",
           "kernel_cmdline": "", "boot_modes": ["bios"],
           "disk": {"size_bytes": os.path.getsize(path), "disk_guid": "0", "partitions": []},
           "layers": [], "packages": [], "build_time": 0, "sha256": h.hexdigest()},
          open(path + ".json", "w"))
PY

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 200); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1',$1),1)" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    exit 1
}
moto_port=$(free_port)
proxy_port=$(free_port)
python3 "$repo/tests/support/moto_server.py" 127.0.0.1 "$moto_port" >"$work/moto.log" 2>&1 &
moto_pid=$!
python3 "$repo/tests/support/aws_proxy.py" --listen "$proxy_port" --upstream "$moto_port" \
    --log "$work/proxy.jsonl" --latency-ms "$latency" >/dev/null 2>&1 &
proxy_pid=$!
cleanup() {
    kill "$proxy_pid" "$moto_pid" 2>/dev/null || true
    wait "$proxy_pid" "$moto_pid" 2>/dev/null || true
    if [ -n "$own_work" ]; then rm -rf "$work"; fi
}
trap cleanup EXIT
wait_port "$moto_port"
wait_port "$proxy_port"

echo "== available in 3 regions, $latency ms added to every call"
for method in copy upload; do
    rm -f "$image".upload-journal.json*
    start=$(date +%s.%N)
    "$imgforge" upload "$image" --name "bench-$method" --arch x86_64 --boot-mode legacy-bios \
        --copy-to eu-west-1,us-west-2 --copy-method "$method" --json --output-dir "$work" \
        --endpoint-url "http://127.0.0.1:$proxy_port" >"$work/$method.json"
    end=$(date +%s.%N)
    python3 - "$work/$method.json" "$method" "$start" "$end" <<'PY'
import json, sys
result, method, start, end = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
r = json.load(open(result))
states = {x["region"]: (x["origin"], x["state"]) for x in r["regions"]}
print(f"  --copy-method {method:<7} {end - start:6.2f} s  {states}")
PY
done
