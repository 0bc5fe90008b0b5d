#!/bin/bash
# A DKMS module built during the build for the IMAGE's kernel (a --script
# installs acpi-call-dkms from Debian main with the image kernel's
# headers; `uname -r` in the script is the image's), then loaded in the
# booted image: a unit prints `IMGFORGE-DKMS loaded=N` on the serial
# console after modules-load.d loaded it. Prints the build and boot times
# and the verdict. Root, the host's mirror and QEMU needed; about 10 min.
#
#   tests/bench/dkms.sh            (IMGFORGE_BIN=target/debug/imgforge to skip the release build)
set -u
cd "$(dirname "$0")/../.."
bin=${IMGFORGE_BIN:-target/release/imgforge}
if [ -z "${IMGFORGE_BIN:-}" ]; then
    cargo build --release --quiet || exit 1
fi
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
tmp=$(mktemp -d /var/tmp/imgforge-bench-dkms-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/dkms.sh" <<'EOF'
#!/bin/sh
set -e
apt-get install -y --no-install-recommends "linux-headers-$(uname -r)" acpi-call-dkms
ls /lib/modules/"$IMGFORGE_KERNEL_VERSION"/updates/dkms/acpi_call.ko*
echo acpi_call > /etc/modules-load.d/acpi_call.conf
cat > /etc/systemd/system/imgforge-dkms-report.service <<'UNIT'
[Unit]
After=systemd-modules-load.service
[Service]
Type=oneshot
StandardOutput=tty
TTYPath=/dev/ttyS0
ExecStart=/bin/sh -c 'echo "IMGFORGE-DKMS loaded=$(grep -c ^acpi_call /proc/modules)"'
[Install]
WantedBy=multi-user.target
UNIT
systemctl enable imgforge-dkms-report.service
EOF
start=$EPOCHREALTIME
"$bin" build --script "$tmp/dkms.sh" -o "$tmp/dkms.raw" --seed dkms-bench >"$tmp/build.log" 2>&1 \
    || { tail -30 "$tmp/build.log"; echo "build: FAILED"; exit 1; }
printf 'build (with the DKMS module): %s s\n' "$(elapsed "$start")"
start=$EPOCHREALTIME
"$bin" boot-test "$tmp/dkms.raw" --firmware bios --log "$tmp/console.log" >"$tmp/boot.log" 2>&1 || true
printf 'boot-test: %s s\n' "$(elapsed "$start")"
line=$(grep -a -o 'IMGFORGE-DKMS loaded=[0-9]*' "$tmp/console.log" | head -1)
echo "${line:-no IMGFORGE-DKMS line on the console}"
[ "$line" = "IMGFORGE-DKMS loaded=1" ] && echo "DKMS module loads in the booted image: yes" \
    || { echo "DKMS module loads in the booted image: NO"; tail -20 "$tmp/boot.log"; exit 1; }
