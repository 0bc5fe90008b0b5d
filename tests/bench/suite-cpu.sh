#!/usr/bin/env bash
# Where the test suite's CPU goes: runs `.ci/run` (the whole suite, as CI
# does) with the kernel's process accounting on, then prints the CPU
# seconds of each command name (qemu-system-x86, tar, python3, ...), the
# total, and how busy both cores were (vmstat). As root; installs `acct`
# when its tools are missing. Process accounting is on for the run only
# and turned off at the end, also on Ctrl-C (it was off before: a host
# that accounts processes already should not run this).
#
#   tests/bench/suite-cpu.sh [TOP]     # TOP command names shown (default 20)
#
# Cold figures need an empty imgforge cache and target folder: run it from
# a fresh clone with XDG_CACHE_HOME pointed at an empty folder.
set -euo pipefail
cd "$(dirname "$0")/../.."
top=${1:-20}
if [[ $(id -u) -ne 0 ]]; then
    echo "suite-cpu.sh: run as root (the suite builds images; accton needs root)" >&2
    exit 2
fi
if ! command -v accton >/dev/null || ! command -v sa >/dev/null; then
    apt-get install -y --no-install-recommends acct >/dev/null
fi
work=$(mktemp -d /var/tmp/imgforge-suite-cpu-XXXXXX)
accounting=$work/pacct
touch "$accounting"
cleanup() {
    accton off >/dev/null 2>&1 || true
    [[ -n ${vmstat_pid:-} ]] && kill "$vmstat_pid" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

accton "$accounting" >/dev/null
vmstat 10 >"$work/vmstat" &
vmstat_pid=$!
started=$SECONDS
status=0
.ci/run 2>&1 | tee "$work/ci.log" || status=$?
wall=$((SECONDS - started))
cleanup

echo
echo "== suite-cpu: .ci/run exited $status after $wall s (log: $work/ci.log)"
# sa: one line per command name (-a keeps the rare ones), with each one's
# share (-c). Its CPU column ("cp") is in minutes: shown here in seconds.
sa -a -c "$accounting" | awk -v top="$top" '
    NR == 1 { printf "all commands: %.0f CPU s in %d processes\n", $5 * 60, $1; next }
    NR <= top + 1 { printf "  %-24s %8.0f CPU s %8s %8d processes\n", $NF, $5 * 60, $6, $1 }'
# vmstat columns 13-15: us sy id; the first line is the average since boot.
awk 'NR > 3 && $15 ~ /^[0-9]+$/ { busy += 100 - $15; n++ }
     END { if (n) printf "both cores busy: %.0f %% on average (%d samples of 10 s)\n", busy / n, n }' \
    "$work/vmstat"
exit "$status"
