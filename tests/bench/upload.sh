#!/usr/bin/env bash
# Upload benchmark: imgforge vs coldsnap against the same local moto server.
#
# Makes an 8 GiB sparse image holding BENCH_DATA_MIB (default 256) MiB of
# random data in four extents, then, for each uploader, with the image's
# page cache dropped and a fresh moto on the same port: wall time, and the
# bytes read (/proc/PID/io read_bytes, i.e. from storage, and rchar, i.e.
# through read calls) sampled while it runs. Then imgforge's hashing and
# zero-detection throughput (`imgforge upload --hash-only`).
#
# imgforge reads the data once: block digests are computed while blocks are
# sent (the ClientToken comes from the build manifest's sha256, or a nonce
# kept in the journal). rchar equal to the data size shows it.
#
# BENCH_BASELINE=PATH also runs another imgforge binary the same way (e.g.
# one built before the one-read change) and prints the ratio.
# coldsnap: used when on PATH (or in ~/.cargo/bin); BENCH_INSTALL_COLDSNAP=1
# installs it with `cargo install coldsnap` (a long build) when missing;
# otherwise the coldsnap run is skipped and said so.
#
# Needs: python3 with `pip install 'moto[server]'`, cargo, util-linux.
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
# Digests of the snapshots the bench publishes stay in the work folder.
export IMGFORGE_STATE_DIR=$work/state

python3 -c 'import moto.server' 2>/dev/null || {
    echo "moto's server is missing: pip install 'moto[server]'" >&2
    exit 1
}

data_mib=${BENCH_DATA_MIB:-256}
extent_mib=$((data_mib / 4))

echo "== building imgforge (release)"
cargo build --release --manifest-path "$repo/Cargo.toml" --quiet
imgforge=$repo/target/release/imgforge

coldsnap=$(command -v coldsnap || true)
if [ -z "$coldsnap" ] && [ -x "$HOME/.cargo/bin/coldsnap" ]; then coldsnap=$HOME/.cargo/bin/coldsnap; fi
if [ -z "$coldsnap" ] && [ "${BENCH_INSTALL_COLDSNAP:-0}" = 1 ]; then
    echo "== installing coldsnap (cargo install coldsnap)"
    cargo install coldsnap --quiet
    coldsnap=$HOME/.cargo/bin/coldsnap
fi
[ -n "$coldsnap" ] || echo "== coldsnap is not installed: its run is skipped (BENCH_INSTALL_COLDSNAP=1 installs it)"

echo "== making an 8 GiB sparse image with $data_mib MiB of random data in $image"
rm -f "$image"
truncate -s $((8 * gib)) "$image"
for offset_mib in 0 2048 4608 7936; do
    dd if=/dev/urandom of="$image" bs=1M count=$extent_mib seek=$offset_mib conv=notrunc status=none
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

if [ -n "${BENCH_BASELINE:-}" ]; then
    echo "== baseline $BENCH_BASELINE upload (64 workers) to $endpoint"
    start_moto
    drop_cache
    read -r bl_time bl_read bl_rchar < <(measure "$work/baseline.log" "$BENCH_BASELINE" upload "$image" \
        --endpoint-url "$endpoint" --no-register --name bench-imgforge --journal "$work/baseline-journal.json")
    stop_moto
fi

# coldsnap's best case: --omit-zero-blocks (off by default), and --wait so
# that both wait for `completed`; the same 64 workers as imgforge.
if [ -n "$coldsnap" ]; then
    echo "== coldsnap upload --omit-zero-blocks to the same endpoint"
    start_moto
    drop_cache
    read -r cs_time cs_read cs_rchar < <(measure "$work/coldsnap.log" "$coldsnap" --endpoint "$endpoint" --region us-east-1 \
        upload --omit-zero-blocks --wait --no-progress --workers 64 "$image")
    stop_moto
fi

# coldsnap as most people run it (every block, zeros included): optional,
# as it sends 8 GiB and moto keeps it all in memory.
if [ -n "$coldsnap" ] && [ "${BENCH_COLDSNAP_DEFAULT:-0}" = 1 ]; then
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
echo "Results (8 GiB image, $data_mib MiB of data):"
printf "  imgforge:                    %7.2f s  %7.1f MiB/s of data  read_bytes %6d MiB  rchar %6d MiB\n" \
    "$if_time" "$(echo "$data_mib / $if_time" | bc -l)" $((if_read / mib)) $((if_rchar / mib))
if [ -n "${bl_time:-}" ]; then
    printf "  baseline imgforge:           %7.2f s  %7.1f MiB/s of data  read_bytes %6d MiB  rchar %6d MiB\n" \
        "$bl_time" "$(echo "$data_mib / $bl_time" | bc -l)" $((bl_read / mib)) $((bl_rchar / mib))
    printf "  imgforge takes %.2fx the baseline's time\n" "$(echo "$if_time / $bl_time" | bc -l)"
fi
if [ -n "${cs_time:-}" ]; then
    printf "  coldsnap --omit-zero-blocks: %7.2f s  %7.1f MiB/s of data  read_bytes %6d MiB  rchar %6d MiB\n" \
        "$cs_time" "$(echo "$data_mib / $cs_time" | bc -l)" $((cs_read / mib)) $((cs_rchar / mib))
    printf "  imgforge takes %.2fx coldsnap --omit-zero-blocks's time\n" "$(echo "$if_time / $cs_time" | bc -l)"
fi
if [ -n "${csd_time:-}" ]; then
    printf "  coldsnap (defaults): %7.2f s  read_bytes %6d MiB  rchar %6d MiB; imgforge takes %.2fx its time\n" \
        "$csd_time" $((csd_read / mib)) $((csd_rchar / mib)) "$(echo "$if_time / $csd_time" | bc -l)"
fi
echo "  $hash_line"
