# shellcheck shell=bash
# imgforge tuning: helpers shared by tune-system, tune-nic, imgforge-verify and
# tuning-report. Bash only (plus coreutils): the same file works on x86_64 and
# arm64, on every distro.

# The IMGFORGE_* overrides are for testing the scripts off the image.
IMGFORGE_RUN=${IMGFORGE_RUN_DIR:-/run/imgforge}
EXPECT_FILE=${IMGFORGE_EXPECT:-/etc/imgforge/tuning.expect}
EXPECT_DIR=${IMGFORGE_EXPECT_DIR:-/etc/imgforge/tuning.expect.d}

declare -gA EXPECT=() SYSCTL=() UNIT=()
SYSCTL_ORDER=()
UNIT_ORDER=()

# Reads /etc/imgforge/tuning.expect, then tuning.expect.d/*.conf.
expect_load() {
    local f key rest name value
    for f in "$EXPECT_FILE" "$EXPECT_DIR"/*.conf; do
        [ -r "$f" ] || continue
        while read -r key rest; do
            case "$key" in '' | '#'*) continue ;; esac
            case "$key" in
                sysctl | unit)
                    name=${rest%%[[:space:]]*}
                    value=${rest#"$name"}
                    value=$(squeeze "$value")
                    if [ "$key" = sysctl ]; then
                        [ -n "${SYSCTL[$name]+x}" ] || SYSCTL_ORDER+=("$name")
                        SYSCTL[$name]=$value
                    else
                        [ -n "${UNIT[$name]+x}" ] || UNIT_ORDER+=("$name")
                        UNIT[$name]=$value
                    fi
                    ;;
                *) EXPECT[$key]=$rest ;;
            esac
        done < "$f"
    done
}

# Whitespace runs to one space, none at the ends.
squeeze() {
    local -a words
    read -ra words <<< "$*"
    printf '%s' "${words[*]}"
}

# `0-2,5` -> `0 1 2 5`
cpulist_expand() {
    local part a b i out=""
    local -a parts
    IFS=, read -ra parts <<< "$1"
    for part in "${parts[@]}"; do
        part=${part//[[:space:]]/}
        [ -n "$part" ] || continue
        if [[ $part == *-* ]]; then
            a=${part%-*}
            b=${part#*-}
            for ((i = a; i <= b; i++)); do out+="$i "; done
        else
            out+="$part "
        fi
    done
    printf '%s' "${out% }"
}

# `0 1 2 5` (ascending) -> `0-2,5`
cpus_compress() {
    local c start="" prev="" out=""
    for c in $1; do
        if [ -z "$start" ]; then
            start=$c
        elif [ "$c" -ne $((prev + 1)) ]; then
            out+=$([ "$start" = "$prev" ] && echo "$start" || echo "$start-$prev"),
            start=$c
        fi
        prev=$c
    done
    [ -n "$start" ] && out+=$([ "$start" = "$prev" ] && echo "$start" || echo "$start-$prev")
    printf '%s' "$out"
}

# A hex mask (`00000000,00000003`) -> `0 1`
mask_to_cpus() {
    local hex=${1//,/} out="" i pos d bit
    hex=${hex//[[:space:]]/}
    for ((i = ${#hex} - 1, pos = 0; i >= 0; i--, pos += 4)); do
        d=$((16#${hex:i:1}))
        for bit in 0 1 2 3; do
            ((d >> bit & 1)) && out+="$((pos + bit)) "
        done
    done
    printf '%s' "${out% }"
}

# `0 1` -> `3`; 32-bit groups separated by commas, as the kernel prints them.
cpus_to_mask() {
    local c max=0 n i out=""
    local -a nib=()
    for c in $1; do ((c > max)) && max=$c; done
    n=$((max / 4 + 1))
    for ((i = 0; i < n; i++)); do nib[i]=0; done
    for c in $1; do nib[c / 4]=$((nib[c / 4] | 1 << (c % 4))); done
    for ((i = n - 1; i >= 0; i--)); do
        out+=$(printf '%x' "${nib[i]}")
        ((i > 0 && i % 8 == 0)) && out+=,
    done
    printf '%s' "$out"
}

first_line() {
    local line=""
    [ -r "$1" ] && IFS= read -r line < "$1"
    printf '%s' "$line"
}

online_cpus() { cpulist_expand "$(first_line /sys/devices/system/cpu/online)"; }
vcpu_count() { local -a c; read -ra c <<< "$(online_cpus)"; echo "${#c[@]}"; }
last_cpu() { local -a c; read -ra c <<< "$(online_cpus)"; echo "${c[-1]:-0}"; }

# This instance's housekeeping CPUs (`0 1`) and isolated CPUs (`2 3`).
housekeeping_here() {
    local hk=${EXPECT[housekeeping_count]:-1} c out=""
    for c in $(online_cpus); do ((c < hk)) && out+="$c "; done
    printf '%s' "${out% }"
}
isolated_here() {
    local hk=${EXPECT[housekeeping_count]:-1} c out=""
    for c in $(online_cpus); do ((c >= hk)) && out+="$c "; done
    printf '%s' "${out% }"
}

# Whether every CPU of list $1 (`0 1`) is in list $2.
cpus_within() {
    local c
    for c in $1; do
        [[ " $2 " == *" $c "* ]] || return 1
    done
}

# Huge pages wanted: hugepages_percent of MemTotal, in default-size pages.
hugepages_wanted() {
    local key value unit mem=0 size=0
    while read -r key value unit; do
        case "$key" in
            MemTotal:) mem=$value ;;
            Hugepagesize:) size=$value ;;
        esac
    done < /proc/meminfo
    if [ "$size" -gt 0 ]; then
        echo $((mem * ${EXPECT[hugepages_percent]:-0} / 100 / size))
    else
        echo 0
    fi
}

# Every IRQ onto the housekeeping CPUs. IRQs the kernel refuses to move
# (kernel-managed queue interrupts, the timer) are listed in
# /run/imgforge/irq-kernel-managed for imgforge-verify.
apply_irq_affinity() {
    local hk_list=$1 dir irq refused=""
    mkdir -p "$IMGFORGE_RUN"
    for dir in /proc/irq/[0-9]*; do
        irq=${dir##*/}
        [ -w "$dir/smp_affinity_list" ] || continue
        if ! echo "$hk_list" > "$dir/smp_affinity_list" 2> /dev/null; then
            refused+="$irq "
        fi
    done
    printf '%s\n' $refused > "$IMGFORGE_RUN/irq-kernel-managed.tmp"
    mv "$IMGFORGE_RUN/irq-kernel-managed.tmp" "$IMGFORGE_RUN/irq-kernel-managed"
    echo "$(($(ls -d /proc/irq/[0-9]* | wc -l))) IRQs, refused by the kernel: ${refused:-none}"
}
