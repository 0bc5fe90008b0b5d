#!/usr/bin/env bash
# Upload latency benchmark (issue 22, item 8): where an upload's time goes
# when every AWS call takes LATENCY ms longer (an endpoint seen from a CI
# runner outside AWS), against a local moto through the recording proxy
# (tests/support/aws_proxy.py --latency-ms).
#
# Makes an 8 GiB sparse image with BENCH_DATA_MIB (default 256) MiB of
# random data and its build manifest (as `imgforge build` leaves it), runs
# `imgforge upload --no-register` through the proxy, and prints the phases
# from the proxy's log: start-up (process start to the first request),
# snapshot start, the blocks (first to last PutSnapshotBlock), completion,
# the wait for `completed`, exit; and the bound at --workers requests in
# flight (data blocks / workers x latency). BENCH_NO_MANIFEST=1 uploads
# without the manifest (then the image is hashed first).
#
# Needs: python3 with `pip install 'moto[server]'`, cargo.
# Usage: tests/bench/upload-latency.sh [--latency-ms MS] [--workers N] [WORKDIR]
#   IMGFORGE=PATH uses that binary instead of building the release one.

set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
latency=50
workers=64
work=
while [ $# -gt 0 ]; do
    case $1 in
        --latency-ms) latency=$2; shift 2 ;;
        --workers) workers=$2; shift 2 ;;
        *) work=$1; shift ;;
    esac
done
own_work=
if [ -z "$work" ]; then
    work=$(mktemp -d /var/tmp/imgforge-latency.XXXXXX)
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

data_mib=${BENCH_DATA_MIB:-256}
image=$work/latency.raw
echo "== an 8 GiB sparse image with $data_mib MiB of data"
rm -f "$image" "$image.json" "$image.upload-journal.json"
truncate -s 8G "$image"
for offset_mib in 0 2048 4608 7936; do
    dd if=/dev/urandom of="$image" bs=1M count=$((data_mib / 4)) seek=$offset_mib conv=notrunc status=none
done
if [ "${BENCH_NO_MANIFEST:-0}" != 1 ]; then
    python3 - "$image" <<'EOF'
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
EOF
fi

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
log=$work/proxy.jsonl
rm -f "$log"
python3 "$repo/tests/support/aws_proxy.py" --listen "$proxy_port" --upstream "$moto_port" \
    --log "$log" --latency-ms "$latency" >/dev/null 2>&1 &
proxy_pid=$!
cleanup() {
    kill "$proxy_pid" "$moto_pid" 2>/dev/null || true
    wait "$proxy_pid" "$moto_pid" 2>/dev/null || true
    if [ -n "$own_work" ]; then rm -rf "$work"; fi
}
trap cleanup EXIT
wait_port "$moto_port"
wait_port "$proxy_port"

echo "== upload through a proxy adding $latency ms to every call, --workers $workers"
started=$(python3 -c 'import time; print(time.time())')
"$imgforge" upload "$image" --no-register --json --workers "$workers" --output-dir "$work" \
    --endpoint-url "http://127.0.0.1:$proxy_port" --arch x86_64 >"$work/result.json"
ended=$(python3 -c 'import time; print(time.time())')

python3 - "$log" "$started" "$ended" "$latency" "$workers" "$work/result.json" <<'EOF'
import json, sys
log, started, ended, latency, workers, result = sys.argv[1:]
started, ended, latency, workers = float(started), float(ended), int(latency), int(workers)
entries = [json.loads(l) for l in open(log)]
ops = lambda name: [e for e in entries if e["operation"] == name]
first = min(e["time"] for e in entries)
start = ops("StartSnapshot")[0]["time"]
puts = [e["time"] for e in ops("PutSnapshotBlock")]
complete = ops("CompleteSnapshot")[0]["time"]
describes = [e["time"] for e in ops("DescribeSnapshots") if e["time"] >= complete]
last = max(e["time"] for e in entries)
blocks = len(puts)
bound = blocks / workers * latency / 1000
print(f"blocks sent: {blocks}; bound at {workers} in flight: {bound:.2f} s "
      f"({blocks} / {workers} x {latency} ms)")
rows = [
    ("start-up (process start to first request)", first - started),
    ("before StartSnapshot (first request to StartSnapshot)", start - first),
    ("StartSnapshot to first block", min(puts) - start),
    ("blocks (first to last PutSnapshotBlock)", max(puts) - min(puts)),
    ("last block to CompleteSnapshot", complete - max(puts)),
    (f"wait for completed ({len(describes)} DescribeSnapshots)", last - complete),
    ("after the last request to exit", ended - last),
]
for name, seconds in rows:
    print(f"  {name:<58} {seconds:6.2f} s")
ratio = f"  ({(ended - started) / bound:.1f}x the bound)" if bound else ""
print(f"  {'total':<58} {ended - started:6.2f} s{ratio}")
r = json.load(open(result))
print(f"bytes read {r['bytes_read']}, elapsed (imgforge) {r['elapsed_seconds']:.2f} s")
EOF
