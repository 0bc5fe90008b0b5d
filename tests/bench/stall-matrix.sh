#!/bin/bash
# Counts early-boot kernel stalls under QEMU TCG, per configuration.
#
#   tests/bench/stall-matrix.sh KERNEL|IMAGE [-n BOOTS] [-t SECONDS] [--no-hog]
#                               [--initrd FILE] [--config NAME]... [--list]
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
# other core unless --no-hog (killed on exit).
#
# Prints a table: configuration, boots, stalls, median seconds per boot; the
# console of each stalled boot is kept in $STALL_LOGS (default
# /tmp/stall-matrix-logs) and its last line is printed.
set -u
boots=20
limit=40
hog=1
only=()
list=0
target=
initrd=
while [ $# -gt 0 ]; do
    case $1 in
    -n) boots=$2; shift 2 ;;
    -t) limit=$2; shift 2 ;;
    --no-hog) hog=0; shift ;;
    --config) only+=("$2"); shift 2 ;;
    --list) list=1; shift ;;
    --initrd) initrd=$2; shift 2 ;;
    -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
    *) target=$1; shift ;;
    esac
done

# The image's own tokens (boot/size-classes.toml, small class).
ISO="isolcpus=managed_irq,domain,2-N nohz_full=2-N rcu_nocbs=2-N irqaffinity=0-1"
COMMON="skew_tick=1 nosoftlockup rcupdate.rcu_normal_after_boot=1 intel_idle.max_cstate=1 processor.max_cstate=1 tsc=reliable transparent_hugepage=never"
IMAGE_TOKENS="$ISO $COMMON"
NO_TSC_RELIABLE=${IMAGE_TOKENS/tsc=reliable /}
NO_ISOLATION="$COMMON"

# name|-accel value|-cpu|-smp|kernel tokens
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
)
if [ "$list" = 1 ]; then
    printf '%s\n' "${configs[@]}" | cut -d'|' -f1
    exit 0
fi
[ -n "$target" ] || { sed -n '2,17p' "$0"; exit 2; }

work=$(mktemp -d /tmp/stall-matrix-XXXXXX)
logs=${STALL_LOGS:-/tmp/stall-matrix-logs}
mkdir -p "$logs"
hog_pid=
cleanup() {
    [ -n "$hog_pid" ] && kill "$hog_pid" 2>/dev/null
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
echo "# kernel $kernel${initrd:+, initrd $initrd and the boot-test devices}, hog $hog, limit $limit s"

if [ "$hog" = 1 ]; then
    sh -c 'while :; do :; done' &
    hog_pid=$!
fi

median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) print "-"; else if (NR%2) printf "%.1f", a[(NR+1)/2]; else printf "%.1f", (a[NR/2]+a[NR/2+1])/2}'; }

printf '%-48s %6s %6s %8s\n' configuration boots stalls s/boot
for entry in "${configs[@]}"; do
    IFS='|' read -r name accel cpu smp tokens <<<"$entry"
    if [ ${#only[@]} -gt 0 ]; then
        match=0
        for o in "${only[@]}"; do [ "$o" = "$name" ] && match=1; done
        [ "$match" = 1 ] || continue
    fi
    stalls=0
    : >"$work/times"
    for i in $(seq 1 "$boots"); do
        out=$work/console
        start=$EPOCHREALTIME
        timeout -s KILL "$limit" qemu-system-x86_64 -accel "$accel" -machine q35 -cpu "$cpu" \
            -smp "$smp" -m 1024 -nodefaults -no-user-config -display none -monitor none \
            -no-reboot -serial stdio -kernel "$kernel" "${extra[@]}" \
            -append "$tokens console=ttyS0 panic=-1 $rd" >"$out" 2>&1 </dev/null
        rc=$?
        secs=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
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
    printf '%-48s %6d %6d %8s\n' "$name" "$boots" "$stalls" "$(median <"$work/times")"
done
