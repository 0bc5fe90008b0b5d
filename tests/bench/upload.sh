#!/usr/bin/env bash
# Upload benchmark: imgforge vs coldsnap against the same local moto server.
#
# Makes an 8 GiB sparse image holding 1 GiB of random data in four extents,
# then, for each uploader, with the image's page cache dropped and a fresh
# moto on the same port: wall time, and the bytes read (/proc/PID/io
# read_bytes, i.e. from storage, and rchar, i.e. through read calls) sampled
# while it runs. Then imgforge's hashing and zero-detection throughput
# (`imgforge upload --hash-only`).
#
# imgforge reads the data twice: a first pass hashes every block (the
# ClientToken and the journal need the content's digest before
# StartSnapshot), the upload pass reads each block again and checks it
# against that digest. read_bytes shows the storage reads (once); rchar
# counts both passes (the second is served from the page cache).
#
# Needs: python3 with `pip install 'moto[server]'`, cargo (coldsnap is
# installed with `cargo install coldsnap` when missing), util-linux.
# Usage: tests/bench/upload.sh [WORKDIR]   (default: a temporary directory)

set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
work=${1:-}
own_work=
if [ -z "$work" ]; then
    work=$(mktemp -d /var/tmp/imgforge-bench.XXXXXX)
    own_work=1
fi
mkdir -p "$work"
image=$work/bench.raw
gib=$((1 << 30))
mib=$((1 << 20))

export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true

python3 -c 'import moto.server' 2>/dev/null || {
    echo "moto's server is missing: pip install 'moto[server]'" >&2
    exit 1
}

echo "== building imgforge (release)"
cargo build --release --manifest-path "$repo/Cargo.toml" --quiet
imgforge=$repo/target/release/imgforge

if ! command -v coldsnap >/dev/null; then
    echo "== installing coldsnap (cargo install coldsnap)"
    cargo install coldsnap --quiet
fi
coldsnap=$(command -v coldsnap || echo "$HOME/.cargo/bin/coldsnap")

echo "== making an 8 GiB sparse image with 1 GiB of random data in $image"
rm -f "$image"
truncate -s $((8 * gib)) "$image"
for offset_mib in 0 2048 4608 7936; do
    dd if=/dev/urandom of="$image" bs=1M count=256 seek=$offset_mib conv=notrunc status=none
done
sync "$image"
echo "   apparent size $(du --apparent-size -h "$image" | cut -f1), allocated $(du -h "$image" | cut -f1)"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
endpoint=http://127.0.0.1:$port
moto_pid=
start_moto() {
    python3 "$repo/tests/support/moto_server.py" 127.0.0.1 "$port" >"$work/moto.log" 2>&1 &
    moto_pid=$!
    for _ in $(seq 200); do
        if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$port),1)" 2>/dev/null; then
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
    # An 8 GiB (sparse) image: remove it unless the caller chose the folder.
    if [ -n "$own_work" ]; then rm -rf "$work"; fi
}
trap cleanup EXIT

# Evicts the image from the page cache, so both uploaders read from storage.
drop_cache() {
    dd if="$image" iflag=nocache count=0 status=none
    echo "   page cache holding the image: $(fincore --bytes --noheadings --output RES "$image" 2>/dev/null || echo '?') bytes"
}

# Runs a command with its output in LOG; prints "seconds read_bytes rchar"
# (the /proc/PID/io figures sampled every 20 ms until it exits).
measure() {
    python3 - "$@" <<'EOF'
import subprocess, sys, time
log = open(sys.argv[1], "w")
start = time.monotonic()
proc = subprocess.Popen(sys.argv[2:], stdout=log, stderr=log)
last = {"read_bytes": 0, "rchar": 0}
while proc.poll() is None:
    try:
        with open(f"/proc/{proc.pid}/io") as f:
            last = {k: int(v) for k, v in (line.split(": ") for line in f) if k in last}
    except (OSError, ValueError):
        pass
    time.sleep(0.02)
elapsed = time.monotonic() - start
if proc.returncode != 0:
    sys.exit(f"{sys.argv[2]} failed with status {proc.returncode}; see {sys.argv[1]}")
print(f"{elapsed:.2f} {last['read_bytes']} {last['rchar']}")
EOF
}

echo "== imgforge upload (64 workers) to $endpoint"
start_moto
drop_cache
read -r if_time if_read if_rchar < <(measure "$work/imgforge.log" "$imgforge" upload "$image" \
    --endpoint-url "$endpoint" --no-register --name bench-imgforge)
stop_moto

# coldsnap's best case: --omit-zero-blocks (off by default), and --wait so
# that both wait for `completed`; the same 64 workers as imgforge.
echo "== coldsnap upload --omit-zero-blocks to the same endpoint"
start_moto
drop_cache
read -r cs_time cs_read cs_rchar < <(measure "$work/coldsnap.log" "$coldsnap" --endpoint "$endpoint" --region us-east-1 \
    upload --omit-zero-blocks --wait --no-progress --workers 64 "$image")
stop_moto

# coldsnap as most people run it (every block, zeros included): optional,
# as it sends 8 GiB and moto keeps it all in memory.
if [ "${BENCH_COLDSNAP_DEFAULT:-0}" = 1 ]; then
    echo "== coldsnap upload (defaults) to the same endpoint"
    start_moto
    drop_cache
    read -r csd_time csd_read csd_rchar < <(measure "$work/coldsnap-default.log" "$coldsnap" --endpoint "$endpoint" \
        --region us-east-1 upload --wait --no-progress "$image")
    stop_moto
fi

echo "== imgforge hashing and zero detection (--hash-only, image in page cache)"
cat "$image" >/dev/null # warm the cache: this measures the CPU path, not the disk
hash_line=$("$imgforge" upload "$image" --hash-only)

echo
echo "Results (8 GiB image, 1 GiB of data):"
printf "  imgforge:                    %7.2f s  %7.1f MiB/s of data  read_bytes %6d MiB  rchar %6d MiB\n" \
    "$if_time" "$(echo "1024 / $if_time" | bc -l)" $((if_read / mib)) $((if_rchar / mib))
printf "  coldsnap --omit-zero-blocks: %7.2f s  %7.1f MiB/s of data  read_bytes %6d MiB  rchar %6d MiB\n" \
    "$cs_time" "$(echo "1024 / $cs_time" | bc -l)" $((cs_read / mib)) $((cs_rchar / mib))
printf "  imgforge is %.2fx as fast as coldsnap --omit-zero-blocks\n" "$(echo "$cs_time / $if_time" | bc -l)"
if [ -n "${csd_time:-}" ]; then
    printf "  coldsnap (defaults): %7.2f s  read_bytes %6d MiB  rchar %6d MiB; imgforge is %.2fx as fast\n" \
        "$csd_time" $((csd_read / mib)) $((csd_rchar / mib)) "$(echo "$csd_time / $if_time" | bc -l)"
fi
echo "  $hash_line"
