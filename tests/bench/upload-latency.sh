#!/usr/bin/env bash
# Upload latency benchmark (issue 22, item 8): where an upload's time goes
# when every AWS call takes LATENCY ms longer (an endpoint seen from a CI
# runner outside AWS).
#
# Two endpoints (--endpoint):
#   standin (default): tests/bench/ebs_standin.py, a fast stand-in for the
#     EBS direct APIs' write path (StartSnapshot, PutSnapshotBlock with the
#     checksums checked as EBS checks them, CompleteSnapshot with the LINEAR
#     aggregate, EC2 DescribeSnapshots), adding LATENCY ms to every answer.
#     It shows the client's own cost.
#   moto: a local moto behind the recording proxy
#     (tests/support/aws_proxy.py --latency-ms). moto handles blocks more
#     slowly than the client sends them, so this shows moto's cost more than
#     imgforge's.
#
# Makes an 8 GiB sparse image with BENCH_DATA_MIB (default 256) MiB of
# random data and its build manifest (as `imgforge build` leaves it), runs
# `imgforge upload --no-register` against the endpoint (a fresh endpoint for
# each of --runs runs), and prints the phases from the endpoint's request
# log: start-up (process start to the first request), snapshot start, the
# blocks (first PutSnapshotBlock to the last one's answer), completion, the
# wait for `completed`, exit; the bound at --workers requests in flight
# (data blocks / workers x latency) and the ratios to it. Request times are
# arrivals; the stand-in also logs when it answered (moto's proxy does not:
# there the last block and the last request count at their arrival, and the
# time to their answer lands in the next phase). BENCH_NO_MANIFEST=1 uploads
# without the manifest (the image is hashed first).
#
# Needs: python3, cargo; for --endpoint moto, `pip install 'moto[server]'`.
# Usage: tests/bench/upload-latency.sh [--latency-ms MS] [--workers N]
#            [--endpoint standin|moto] [--runs N] [--complete-after-ms MS]
#            [--pin] [WORKDIR]
#   --complete-after-ms (stand-in only): the snapshot turns `completed` that long
#   after CompleteSnapshot (default 0), to see how soon the client notices.
#   --pin: the endpoint on CPU 1 and imgforge on CPU 0 (taskset), so the
#   endpoint does not take imgforge's CPU time, as a remote one would not
#   (imgforge then has one core of its own).
#   IMGFORGE=PATH uses that binary instead of building the release one (the
#   output names the binary: say which build a figure is from).
#   COLDSNAP=PATH (stand-in only) also uploads the same image with coldsnap
#   (`cargo install coldsnap`; `upload --wait --omit-zero-blocks --workers N`)
#   against a fresh stand-in in each run, and prints its time.

set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
latency=50
workers=64
endpoint=standin
runs=1
complete_after=0
work=
pin_endpoint=()
pin_client=()
while [ $# -gt 0 ]; do
    case $1 in
        --latency-ms) latency=$2; shift 2 ;;
        --workers) workers=$2; shift 2 ;;
        --endpoint) endpoint=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --complete-after-ms) complete_after=$2; shift 2 ;;
        --pin) pin_endpoint=(taskset -c 1); pin_client=(taskset -c 0); shift ;;
        *) work=$1; shift ;;
    esac
done
case $endpoint in
    standin|moto) ;;
    *) echo "--endpoint must be standin or moto, not $endpoint" >&2; exit 2 ;;
esac
own_work=
if [ -z "$work" ]; then
    work=$(mktemp -d /var/tmp/imgforge-latency.XXXXXX)
    own_work=1
fi
mkdir -p "$work"
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true

pids=()
stop_endpoint() {
    if [ ${#pids[@]} -gt 0 ]; then
        kill "${pids[@]}" 2>/dev/null || true
        wait "${pids[@]}" 2>/dev/null || true
    fi
    pids=()
}
cleanup() {
    stop_endpoint
    if [ -n "$own_work" ]; then rm -rf "$work"; fi
}
trap cleanup EXIT

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

# A fresh endpoint (no snapshot of an earlier run answers the ClientToken).
start_endpoint() {
    port=$(free_port)
    if [ "$endpoint" = standin ]; then
        what="the EBS stand-in (tests/bench/ebs_standin.py), adding $latency ms to every answer"
        what+=", completed $complete_after ms after CompleteSnapshot"
        "${pin_endpoint[@]}" python3 "$repo/tests/bench/ebs_standin.py" --listen "$port" --log "$log" \
            --latency-ms "$latency" --complete-after-ms "$complete_after" >"$work/standin.log" 2>&1 &
        pids+=($!)
    else
        what="moto behind tests/support/aws_proxy.py, adding $latency ms to every request"
        local moto_port
        moto_port=$(free_port)
        "${pin_endpoint[@]}" python3 "$repo/tests/support/moto_server.py" 127.0.0.1 "$moto_port" >"$work/moto.log" 2>&1 &
        pids+=($!)
        "${pin_endpoint[@]}" python3 "$repo/tests/support/aws_proxy.py" --listen "$port" --upstream "$moto_port" \
            --log "$log" --latency-ms "$latency" >/dev/null 2>&1 &
        pids+=($!)
        wait_port "$moto_port"
    fi
    wait_port "$port"
}

report() {
    python3 - "$log" "$started" "$ended" "$latency" "$workers" "$work/result.json" \
        "$(cat "$work/cpu")" "$endpoint_cpu" <<'EOF'
import json, sys
log, started, ended, latency, workers, result, cpu, endpoint_cpu = sys.argv[1:]
started, ended, latency, workers = float(started), float(ended), int(latency), int(workers)
entries = [json.loads(l) for l in open(log)]
for e in entries:
    e.setdefault("answered", e["time"])  # the proxy logs arrivals only
ops = lambda name: [e for e in entries if e["operation"] == name]
first = min(e["time"] for e in entries)
start = ops("StartSnapshot")[0]["time"]
puts = ops("PutSnapshotBlock")
first_put = min(e["time"] for e in puts)
last_put = max(e["answered"] for e in puts)
complete = ops("CompleteSnapshot")[0]["time"]
describes = [e for e in ops("DescribeSnapshots") if e["time"] >= complete]
last = max(e["answered"] for e in entries)
blocks = len(puts)
bound = blocks / workers * latency / 1000
print(f"blocks sent: {blocks}; bound at {workers} in flight: {bound:.2f} s "
      f"({blocks} / {workers} x {latency} ms)")
rows = [
    ("start-up (process start to first request)", first - started),
    ("before StartSnapshot (first request to StartSnapshot)", start - first),
    ("StartSnapshot to first block", first_put - start),
    ("blocks (first PutSnapshotBlock to the last one's answer)", last_put - first_put),
    ("last block's answer to CompleteSnapshot", complete - last_put),
    (f"CompleteSnapshot to completed ({len(describes)} DescribeSnapshots)", last - complete),
    ("after the last answer to exit", ended - last),
]
for name, seconds in rows:
    print(f"  {name:<62} {seconds:6.2f} s")
total = ended - started
block_phase = last_put - first_put
if bound:
    print(f"  {'total':<62} {total:6.2f} s  ({total / bound:.1f}x the bound)")
    print(f"  {'block phase':<62} {block_phase:6.2f} s  ({block_phase / bound:.1f}x the bound)")
else:
    print(f"  {'total':<62} {total:6.2f} s  (no latency added: no bound)")
bad = [e for e in entries if e["status"] is None or e["status"] >= 300]
if bad:
    print(f"  requests answered with an error: {len(bad)} (first: {bad[0]['operation']} {bad[0]['status']})")
r = json.load(open(result))
print(f"  bytes read {r['bytes_read']}, blocks sent {r['blocks_sent']}, "
      f"elapsed (imgforge's own figure) {r['elapsed_seconds']:.2f} s")
user, system = (float(x) for x in cpu.split())
print(f"  CPU: imgforge {user:.2f} s user + {system:.2f} s system; endpoint {endpoint_cpu} s")
EOF
}

for run in $(seq "$runs"); do
    log=$work/requests.jsonl
    rm -f "$log" "$image.upload-journal.json"
    rm -rf "$work/state"
    export IMGFORGE_STATE_DIR=$work/state
    start_endpoint
    echo "== run $run of $runs; endpoint: $what"
    echo "== binary: $imgforge; upload --no-register --workers $workers${pin_client:+ (pinned: endpoint CPU 1, imgforge CPU 0)}"
    started=$EPOCHREALTIME
    TIMEFORMAT='%U %S'
    { time "${pin_client[@]}" "$imgforge" upload "$image" --no-register --json --workers "$workers" \
        --output-dir "$work" --endpoint-url "http://127.0.0.1:$port" --arch x86_64 \
        >"$work/result.json" 2>"$work/stderr" || { cat "$work/stderr" >&2; exit 1; }; } 2>"$work/cpu"
    ended=$EPOCHREALTIME
    # CPU seconds of the endpoint's processes (utime + stime, in clock ticks).
    endpoint_cpu=$(for pid in "${pids[@]}"; do cut -d' ' -f14,15 "/proc/$pid/stat"; done |
        awk -v hz="$(getconf CLK_TCK)" '{ t += $1 + $2 } END { printf "%.2f", t / hz }')
    stop_endpoint
    report
    if [ -n "${COLDSNAP:-}" ] && [ "$endpoint" = standin ]; then
        log=$work/coldsnap-requests.jsonl
        rm -f "$log"
        start_endpoint
        started=$EPOCHREALTIME
        "${pin_client[@]}" "$COLDSNAP" --endpoint "http://127.0.0.1:$port" --region us-east-1 \
            upload --wait --omit-zero-blocks --workers "$workers" --no-progress "$image" \
            >"$work/coldsnap.out" 2>&1 || { cat "$work/coldsnap.out" >&2; exit 1; }
        ended=$EPOCHREALTIME
        stop_endpoint
        python3 - "$log" "$started" "$ended" <<'EOF'
import json, sys
entries = [json.loads(l) for l in open(sys.argv[1])]
puts = [e for e in entries if e["operation"] == "PutSnapshotBlock"]
blocks = max(e["answered"] for e in puts) - min(e["time"] for e in puts)
total = float(sys.argv[3]) - float(sys.argv[2])
print(f"  coldsnap: total {total:.2f} s, blocks {blocks:.2f} s, {len(puts)} blocks sent")
EOF
    fi
done
