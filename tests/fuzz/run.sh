#!/usr/bin/env bash
# Builds the fuzz targets (cargo-fuzz) and runs each for a bounded time.
#
#   tests/fuzz/run.sh [TARGET...]        (default: every target)
#
#   FUZZ_SECONDS    seconds per target (60)
#   FUZZ_RSS_MB     memory limit per fuzzer process, MiB (2048)
#   FUZZ_TIMEOUT    seconds one input may take before it counts as a hang (10)
#   FUZZ_SANITIZER  cargo fuzz --sanitizer (none: stable Rust plus
#                   RUSTC_BOOTSTRAP=1; `address` works too, slower)
#   FUZZ_BUILD_JOBS cargo build jobs (2)
#
# One fuzzing process at a time (-jobs=1 -workers=1), niced. Prints per
# target the executions, exec/s, corpus size and crashes found (artifacts
# written by this run under tests/fuzz/artifacts/TARGET/); exits 1 if any
# target crashed, 2 if the build failed. The corpus under
# tests/fuzz/corpus/ (not committed) grows from run to run.
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
fuzz=$root/tests/fuzz
seconds=${FUZZ_SECONDS:-60}
rss=${FUZZ_RSS_MB:-2048}
timeout=${FUZZ_TIMEOUT:-10}
sanitizer=${FUZZ_SANITIZER:-none}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(gpt_image esp_fat manifest_json report_line journal)

# cargo-fuzz passes nightly-only rustc flags (-Z...); stable rustc accepts
# them with RUSTC_BOOTSTRAP=1.
export RUSTC_BOOTSTRAP=1
export CARGO_BUILD_JOBS=${FUZZ_BUILD_JOBS:-2}
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked || exit 2
fi
bash "$fuzz/seeds.sh" || exit 2
nice cargo fuzz build --fuzz-dir "$fuzz" --sanitizer "$sanitizer" || exit 2
triple=$(rustc -vV | sed -n 's/^host: //p')
bin_dir=$fuzz/target/$triple/release

status=0
printf '%-14s %12s %9s %8s %8s\n' target executions exec/s corpus crashes
for t in "${targets[@]}"; do
    corpus=$fuzz/corpus/$t
    artifacts=$fuzz/artifacts/$t
    logs=$fuzz/artifacts/logs
    mkdir -p "$corpus" "$artifacts" "$logs"
    before=$(find "$artifacts" -type f | sort)
    # -jobs=1 runs one worker that logs to fuzz-0.log in the current directory.
    work=$(mktemp -d)
    (cd "$work" && nice "$bin_dir/$t" "$corpus" \
        -jobs=1 -workers=1 -max_total_time="$seconds" -rss_limit_mb="$rss" \
        -malloc_limit_mb="$rss" -timeout="$timeout" -print_final_stats=1 \
        -artifact_prefix="$artifacts/" >/dev/null 2>&1)
    rc=$?
    log=$logs/$t.log
    cat "$work"/fuzz-*.log >"$log" 2>/dev/null
    rm -rf "$work"
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    after=$(find "$artifacts" -type f | sort)
    new=$(comm -13 <(echo "$before") <(echo "$after") | grep -c .)
    size=$(find "$corpus" -type f | wc -l)
    if [ -z "$runs" ]; then
        # A crash ends libFuzzer before its final stats: take the last status line.
        runs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
        rate=$(grep -oE 'exec/s: [0-9]+' "$log" | tail -1 | awk '{print $2}')
    fi
    printf '%-14s %12s %9s %8s %8s\n' "$t" "${runs:-?}" "${rate:-?}" "$size" "$new"
    if [ "$new" -gt 0 ] || [ "$rc" -ne 0 ]; then
        status=1
        comm -13 <(echo "$before") <(echo "$after") | sed 's/^/    crash: /'
        grep -m3 -E "panicked at|ERROR: libFuzzer|SUMMARY" "$log" | sed 's/^/    /'
        echo "    log: $log"
    fi
done
exit $status
