#!/bin/bash
# Counts early-boot kernel stalls under QEMU TCG, per configuration.
#
#   tests/bench/stall-matrix.sh KERNEL|IMAGE [-n BOOTS] [-t SECONDS] [--no-hog]
#                               [--starve K] [--initrd FILE] [--config NAME]...
#                               [--list]
#
# Boots the image's kernel directly (-kernel, no initrd, -no-reboot,
# panic=-1): the kernel runs all its initcalls (where the boot-test stall was
# seen, right after "sched_clock: Marking stable"), panics at the root mount
# and QEMU exits, in a few seconds. A boot that has not ended within -t
# seconds (default 40; a good boot takes ~3-10 s here) is a stall. With an
# IMAGE, the newest /boot/vmlinuz-* is read from its root partition with
# debugfs, and its /boot/initrd.img-* too. With an initrd, every boot loads
# it and has boot-test's devices (NVMe with a blank disk, virtio-net), with
# rdinit=/nonexistent: the kernel unpacks the initrd during its initcalls as
# in a real boot, then still panics at the root mount. A CPU hog runs on the
# other core unless --no-hog (killed on exit). --starve K instead pins QEMU
# and K CPU hogs to the last core, so QEMU gets about 1/(K+1) of it in
# scheduler slices: the host starvation a busy CI machine causes now and then,
# made frequent.
#
# Each boot's TSC calibration is classified from its console: "fast" (the
# kernel's quick PIT calibration), "ref" (the slow path, HPET or PM-timer
# reference taken), "pit" (the slow path, PIT and reference agree) or
# "wrong" (the kernel's "PIT calibration deviates" case, where it keeps the
# PIT's figure: the guest's clock then runs at the wrong rate). The worst
# detected MHz is printed against the host's.
#
# Prints a table: configuration, boots, stalls, median seconds per boot, the
# calibration counts; the console of each stalled or wrongly calibrated boot
# is kept in $STALL_LOGS (default /tmp/stall-matrix-logs) and its last line
# (or calibration line) is printed.
set -u
boots=20
limit=40
hog=1
starve=0
only=()
list=0
target=
initrd=
while [ $# -gt 0 ]; do
    case $1 in
    -n) boots=$2; shift 2 ;;
    -t) limit=$2; shift 2 ;;
    --no-hog) hog=0; shift ;;
    --starve) starve=$2; shift 2 ;;
    --config) only+=("$2"); shift 2 ;;
    --list) list=1; shift ;;
    --initrd) initrd=$2; shift 2 ;;
    -h | --help) sed -n '2,33p' "$0"; exit 0 ;;
    *) target=$1; shift ;;
    esac
done

# The host's clock rate, which a correctly calibrated guest detects.
host_mhz=$(awk -F': *' '/^cpu MHz/ {printf "%.0f", $2; exit}' /proc/cpuinfo)

# The image's own tokens (boot/size-classes.toml, small class).
ISO="isolcpus=managed_irq,domain,2-N nohz_full=2-N rcu_nocbs=2-N irqaffinity=0-1"
COMMON="skew_tick=1 nosoftlockup rcupdate.rcu_normal_after_boot=1 intel_idle.max_cstate=1 processor.max_cstate=1 tsc=reliable transparent_hugepage=never"
IMAGE_TOKENS="$ISO $COMMON"
NO_TSC_RELIABLE=${IMAGE_TOKENS/tsc=reliable /}
NO_ISOLATION="$COMMON"

# name|-accel value|-cpu|-smp|kernel tokens[|-machine, default q35]
configs=(
    "image-tokens mttcg max smp4|tcg,thread=multi|max|4|$IMAGE_TOKENS"
    "image-tokens stcg max smp4|tcg,thread=single|max|4|$IMAGE_TOKENS"
    "image-tokens mttcg max smp2|tcg,thread=multi|max|2|$IMAGE_TOKENS"
    "image-tokens mttcg max smp1|tcg,thread=multi|max|1|$IMAGE_TOKENS"
    "image-tokens mttcg qemu64 smp4|tcg,thread=multi|qemu64|4|$IMAGE_TOKENS"
    "image-tokens mttcg Skylake-Server smp4|tcg,thread=multi|Skylake-Server|4|$IMAGE_TOKENS"
    "image-tokens mttcg max,+invtsc smp4|tcg,thread=multi|max,+invtsc|4|$IMAGE_TOKENS"
    "no tsc=reliable mttcg max smp4|tcg,thread=multi|max|4|$NO_TSC_RELIABLE"
    "tsc=reliable clocksource=tsc mttcg max smp4|tcg,thread=multi|max|4|$IMAGE_TOKENS clocksource=tsc"
    "no isolation (common only) mttcg max smp4|tcg,thread=multi|max|4|$NO_ISOLATION"
    "no skew_tick mttcg max smp4|tcg,thread=multi|max|4|${IMAGE_TOKENS/skew_tick=1 /}"
    "nohz_full only mttcg max smp4|tcg,thread=multi|max|4|nohz_full=2-N"
    "rcu_nocbs only mttcg max smp4|tcg,thread=multi|max|4|rcu_nocbs=2-N"
    "no tokens mttcg max smp4|tcg,thread=multi|max|4|"
    "no tokens stcg max smp4|tcg,thread=single|max|4|"
    "image-tokens stcg max,tsc-frequency smp4|tcg,thread=single|max,tsc-frequency=$((host_mhz * 1000000))|4|$IMAGE_TOKENS"
    "image-tokens stcg max smp4 pit=off|tcg,thread=single|max|4|$IMAGE_TOKENS|q35,pit=off"
    "image-tokens stcg max smp4 hpet=off|tcg,thread=single|max|4|$IMAGE_TOKENS|q35,hpet=off"
    "image-tokens+tsc_early_khz stcg max smp4|tcg,thread=single|max|4|$IMAGE_TOKENS tsc_early_khz=$((host_mhz * 1000))"
)
if [ "$list" = 1 ]; then
    printf '%s\n' "${configs[@]}" | cut -d'|' -f1
    exit 0
fi
[ -n "$target" ] || { sed -n '2,33p' "$0"; exit 2; }

work=$(mktemp -d /tmp/stall-matrix-XXXXXX)
logs=${STALL_LOGS:-/tmp/stall-matrix-logs}
mkdir -p "$logs"
hog_pids=()
cleanup() {
    [ ${#hog_pids[@]} -gt 0 ] && kill "${hog_pids[@]}" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

kernel=$target
if ! file -b "$target" | grep -q 'Linux kernel'; then
    # An image: find the root partition (the last ext4 one) and dump the kernel.
    for start in $(sgdisk -p "$target" 2>/dev/null | awk '/^ +[0-9]+ /{print $2}'); do
        offset=$((start * 512))
        name=$(debugfs -R 'ls -p /boot' "$target?offset=$offset" 2>/dev/null |
            awk -F/ '$6 ~ /^vmlinuz-/ {print $6}' | sort -V | tail -1)
        [ -n "$name" ] || continue
        debugfs -R "dump /boot/$name $work/vmlinuz" "$target?offset=$offset" >/dev/null 2>&1
        debugfs -R "dump /boot/initrd.img-${name#vmlinuz-} $work/initrd.img" \
            "$target?offset=$offset" >/dev/null 2>&1
        [ -n "$initrd" ] || [ ! -s "$work/initrd.img" ] || initrd=$work/initrd.img
    done
    [ -s "$work/vmlinuz" ] || { echo "no /boot/vmlinuz-* found in $target" >&2; exit 1; }
    kernel=$work/vmlinuz
fi

extra=()
rd=
if [ -n "$initrd" ]; then
    truncate -s 64M "$work/blank.raw"
    extra=(-initrd "$initrd"
        -drive "if=none,id=disk0,format=raw,file=$work/blank.raw"
        -device nvme,serial=imgforge-boot-test,drive=disk0
        -netdev user,id=net0 -device virtio-net-pci,netdev=net0)
    rd=rdinit=/nonexistent
fi
pin=()
if [ "$starve" -gt 0 ]; then
    core=$(($(nproc) - 1))
    pin=(taskset -c "$core")
    for _ in $(seq 1 "$starve"); do
        taskset -c "$core" sh -c 'while :; do :; done' &
        hog_pids+=($!)
    done
    what="QEMU and $starve hogs pinned to core $core"
elif [ "$hog" = 1 ]; then
    sh -c 'while :; do :; done' &
    hog_pids+=($!)
    what="hog on"
else
    what="no hog"
fi
echo "# kernel $kernel${initrd:+, initrd $initrd and the boot-test devices}, $what, limit $limit s, host ${host_mhz} MHz"

# The TSC calibration a console shows: fast, ref, pit or wrong (see above).
calibration() {
    if grep -aq 'PIT calibration deviates' "$1"; then echo wrong
    elif grep -aq 'Fast TSC calibration using PIT' "$1"; then echo fast
    elif grep -aq 'reference calibration' "$1"; then echo ref
    elif grep -aq 'PIT calibration matches' "$1"; then echo pit
    else echo none
    fi
}

median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) print "-"; else if (NR%2) printf "%.1f", a[(NR+1)/2]; else printf "%.1f", (a[NR/2]+a[NR/2+1])/2}'; }

printf '%-48s %6s %6s %8s %5s %5s %5s %5s %9s\n' configuration boots stalls s/boot \
    fast ref pit wrong worst-MHz
for entry in "${configs[@]}"; do
    IFS='|' read -r name accel cpu smp tokens machine <<<"$entry"
    if [ ${#only[@]} -gt 0 ]; then
        match=0
        for o in "${only[@]}"; do [ "$o" = "$name" ] && match=1; done
        [ "$match" = 1 ] || continue
    fi
    stalls=0
    : >"$work/times"
    : >"$work/calibrations"
    : >"$work/mhz"
    for i in $(seq 1 "$boots"); do
        out=$work/console
        start=$EPOCHREALTIME
        timeout -s KILL "$limit" "${pin[@]}" qemu-system-x86_64 -accel "$accel" -machine "${machine:-q35}" -cpu "$cpu" \
            -smp "$smp" -m 1024 -nodefaults -no-user-config -display none -monitor none \
            -no-reboot -serial stdio -kernel "$kernel" "${extra[@]}" \
            -append "$tokens console=ttyS0 panic=-1 $rd" >"$out" 2>&1 </dev/null
        rc=$?
        secs=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
        calibrated=$(calibration "$out")
        echo "$calibrated" >>"$work/calibrations"
        grep -ao 'Detected [0-9.]* MHz processor' "$out" | awk '{print $2}' | head -1 >>"$work/mhz"
        if [ "$calibrated" = wrong ] || [ "$calibrated" = none ]; then
            keep="$logs/$(echo "$name" | tr ' =,+' '____')-$i-clock.log"
            cp "$out" "$keep"
            printf '  calibration %s: %s boot %d: %s (%s)\n' "$calibrated" "$name" "$i" \
                "$(grep -ao 'tsc: [^\r]*' "$out" | tr '\n' ' ')" "$keep" >&2
        fi
        if [ "$rc" = 137 ]; then
            stalls=$((stalls + 1))
            keep="$logs/$(echo "$name" | tr ' =,+' '____')-$i.log"
            cp "$out" "$keep"
            printf '  stall: %s boot %d, last line: %s (%s)\n' "$name" "$i" \
                "$(grep -a . "$out" | tail -1 | tr -d '\r')" "$keep" >&2
        else
            echo "$secs" >>"$work/times"
            printf '  %s boot %d: %s s\n' "$name" "$i" "$secs" >&2
            grep -aq 'Kernel panic' "$out" ||
                printf '  note: %s boot %d ended (rc %s) without a panic line\n' "$name" "$i" "$rc" >&2
        fi
    done
    count() { grep -cx "$1" "$work/calibrations"; }
    # The detected frequency furthest from the host's.
    worst=$(awk -v h="$host_mhz" 'NF { d = $1 - h; if (d < 0) d = -d; if (d >= w) { w = d; f = $1 } }
        END { print (f == "" ? "-" : f) }' "$work/mhz")
    printf '%-48s %6d %6d %8s %5d %5d %5d %5d %9s\n' "$name" "$boots" "$stalls" \
        "$(median <"$work/times")" "$(count fast)" "$(count ref)" "$(count pit)" \
        "$(count wrong)" "$worst"
done
