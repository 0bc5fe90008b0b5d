#!/bin/bash
# Boots an image many times in a row under TCG with the host's other core
# busy, and counts stalls.
#
#   tests/bench/boot-soak.sh IMAGE [N] [--firmware bios|uefi|both] [--smp 4]
#                            [--no-hog] [--stall-seconds S] [--bin IMGFORGE]
#                            [--mttcg] [--keep-logs DIR]
#
# N boot-tests (default 20) with --accel tcg --json, one firmware each (with
# `both`, bios and uefi alternate, N each). A CPU hog runs on the other core
# unless --no-hog; it is killed on exit. Per boot: firmware, result, seconds
# (all attempts), attempts, the longest console silence before systemd
# (seconds, over all attempts), and what the first attempt did. A pass on a
# second attempt is printed "pass-after-stall" and its first attempt counts
# as a stall: the totals report first-attempt stalls separately from final
# results. Exit status 0 only with zero stalls and zero failures.
# The serial console log and JSON of every boot that is not a clean pass are
# kept in DIR (default /tmp/boot-soak-logs-TIME); each row also shows the
# host's 1-minute load average when the boot ended.
# --mttcg puts QEMU back on multi-threaded TCG (a wrapper on PATH rewrites
# boot-test's `-accel tcg,thread=single`): the "before" configuration.
set -u
cd "$(dirname "$0")/../.."
image=
n=20
firmware=bios
smp=4
hog=1
mttcg=0
extra=()
bin=${IMGFORGE:-target/release/imgforge}
keep=/tmp/boot-soak-logs-$(date +%Y%m%dT%H%M%S)
while [ $# -gt 0 ]; do
    case $1 in
    --firmware) firmware=$2; shift 2 ;;
    --smp) smp=$2; shift 2 ;;
    --no-hog) hog=0; shift ;;
    --stall-seconds) extra+=(--stall-seconds "$2"); shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    --mttcg) mttcg=1; shift ;;
    --keep-logs) keep=$2; shift 2 ;;
    -h | --help) sed -n '2,19p' "$0"; exit 0 ;;
    *)
        if [ -z "$image" ]; then image=$1; else n=$1; fi
        shift
        ;;
    esac
done
[ -n "$image" ] || { sed -n '2,19p' "$0"; exit 2; }
case $firmware in
bios | uefi) order=("$firmware") ;;
both) order=(bios uefi) ;;
*) echo "--firmware bios|uefi|both" >&2; exit 2 ;;
esac

tmp=$(mktemp -d /tmp/boot-soak-XXXXXX)
hog_pid=
cleanup() {
    [ -n "$hog_pid" ] && kill "$hog_pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
if [ "$mttcg" = 1 ]; then
    real=$(command -v qemu-system-x86_64)
    mkdir "$tmp/wrap"
    cat >"$tmp/wrap/qemu-system-x86_64" <<EOF
#!/bin/bash
args=()
for a in "\$@"; do args+=("\${a/tcg,thread=single/tcg,thread=multi}"); done
exec "$real" "\${args[@]}"
EOF
    chmod +x "$tmp/wrap/qemu-system-x86_64"
    export PATH=$tmp/wrap:$PATH
fi
if [ "$hog" = 1 ]; then
    sh -c 'while :; do :; done' &
    hog_pid=$!
fi

echo "# boot-soak: $image, $n boot(s) per firmware (${order[*]}), smp $smp, hog $([ "$hog" = 1 ] && echo on || echo off), TCG $([ "$mttcg" = 1 ] && echo 'multi-threaded (--mttcg)' || echo 'as boot-test sets it'), $(date -Is)"
echo "# $("$bin" --version 2>/dev/null), $(qemu-system-x86_64 --version | head -1)"
echo "# logs of boots that are not a clean pass: $keep"
printf '%-4s %-5s %-17s %8s %8s %8s %5s  %s\n' boot fw result seconds attempts silence load "first attempt"
: >"$tmp/rows"
i=0
for run in $(seq 1 "$n"); do
    for fw in "${order[@]}"; do
        i=$((i + 1))
        out=$tmp/$i.json
        start=$EPOCHREALTIME
        "$bin" boot-test "$image" --firmware "$fw" --accel tcg --smp "$smp" --json "${extra[@]}" \
            --log "$tmp/$i.log" >"$out" 2>"$tmp/$i.err"
        wall=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
        # One row: fw result seconds attempts first-outcome silence first-detail
        python3 - "$out" "$fw" "$wall" >>"$tmp/rows" <<'EOF' || echo "$fw fail $wall 1 error - no-json" >>"$tmp/rows"
import json, sys
path, fw, wall = sys.argv[1], sys.argv[2], float(sys.argv[3])
summary = json.load(open(path))
r = summary["results"][0]
attempts = r.get("attempts") or [{"attempt": 1, "outcome": "passed" if r["passed"] else "failed", "seconds": r["seconds"]}]
first = attempts[0]
if r["passed"]:
    result = "pass" if first["outcome"] == "passed" else "pass-after-stall"
elif r.get("stalled"):
    result = "stall"
else:
    result = "fail"
seconds = r.get("total_seconds") or sum(a["seconds"] for a in attempts)
detail = first["outcome"]
if first["outcome"] == "stalled":
    detail += " after: " + first.get("after", "")
elif first["outcome"] == "failed":
    detail += ": " + "; ".join(r.get("failures", []))[:160]
silence = max(a.get("longest_silence_seconds", 0) for a in attempts)
print(fw, result, "%.1f" % seconds, len(attempts), first["outcome"], "%.1f" % silence, detail.replace("\n", " "))
EOF
        row=$(tail -1 "$tmp/rows")
        read -r rfw result seconds attempts first silence detail <<<"$row"
        load=$(cut -d' ' -f1 /proc/loadavg)
        if [ "$result" != pass ]; then
            mkdir -p "$keep"
            cp "$tmp/$i.log" "$keep/$i-$rfw.console.log" 2>/dev/null
            cp "$out" "$keep/$i-$rfw.json"
            cp "$tmp/$i.err" "$keep/$i-$rfw.err"
        fi
        printf '%-4d %-5s %-17s %8s %8s %8s %5s  %s\n' "$i" "$rfw" "$result" "$seconds" "$attempts" "$silence" "$load" "$detail"
    done
done

echo
printf '%-5s %5s %6s %18s %14s %8s %8s %8s\n' fw boots passes first-att-stalls final-stalls failures median max
for fw in "${order[@]}"; do
    counts=$(awk -v fw="$fw" '
        $1 == fw {
            boots++
            if ($2 == "pass" || $2 == "pass-after-stall") passes++
            if ($5 == "stalled") first_stalls++
            if ($2 == "stall") final_stalls++
            if ($2 == "fail") failures++
        }
        END { printf "%d %d %d %d %d", boots, passes, first_stalls, final_stalls, failures }' "$tmp/rows")
    stats=$(awk -v fw="$fw" '$1 == fw { print $3 }' "$tmp/rows" | sort -n | awk '
        { s[NR] = $1 }
        END {
            if (NR == 0) { print "0 0"; exit }
            m = NR % 2 ? s[(NR + 1) / 2] : (s[NR / 2] + s[NR / 2 + 1]) / 2
            printf "%.1f %.1f", m, s[NR]
        }')
    read -r boots passes first_stalls final_stalls failures <<<"$counts"
    read -r median max <<<"$stats"
    printf '%-5s %5d %6d %18d %14d %8d %8s %8s\n' "$fw" "$boots" "$passes" "$first_stalls" \
        "$final_stalls" "$failures" "$median" "$max"
done
awk '$5 == "stalled" || $2 == "fail" || $2 == "stall" { bad = 1 } END { exit bad }' "$tmp/rows"
