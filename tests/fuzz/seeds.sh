#!/usr/bin/env bash
# Fills tests/fuzz/corpus/<target>/ with seeds: the text seeds committed in
# tests/fuzz/seeds/, and small disk and FAT images made here (sgdisk,
# mkfs.vfat, mtools): a 256 KiB GPT disk with a BIOS boot partition, GRUB-like
# MBR code pointing at it, and a FAT12 ESP holding EFI/BOOT/BOOTX64.EFI and
# imgforge/manifest.json. Existing corpus files are kept.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
corpus=$here/corpus
for t in gpt_image esp_fat manifest_json report_line journal; do
    mkdir -p "$corpus/$t"
done
for t in manifest_json report_line journal; do
    cp -n "$here/seeds/$t"/* "$corpus/$t/"
done
if [ -e "$corpus/gpt_image/seed-disk.raw" ] && [ -e "$corpus/esp_fat/seed-esp.fat" ]; then
    exit 0
fi
for tool in sgdisk mkfs.vfat mcopy mmd; do
    command -v "$tool" >/dev/null || { echo "seeds.sh: $tool missing (apt-get install gdisk dosfstools mtools)" >&2; exit 1; }
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
disk=$tmp/disk.raw
truncate -s 256K "$disk"            # 512 sectors
# BIOS boot LBA 34-97, ESP LBA 98-478 (the last usable sector).
sgdisk -a 1 -n 1:34:97 -t 1:EF02 -c 1:bios -n 2:98:478 -t 2:EF00 -c 2:esp "$disk" >/dev/null
esp=$tmp/esp.fat
esp_sectors=$((478 - 98 + 1))
truncate -s $((esp_sectors * 512)) "$esp"
mkfs.vfat -F 12 -n EFI "$esp" >/dev/null
printf 'MZ fake bootloader' > "$tmp/BOOTX64.EFI"
mmd -i "$esp" ::/EFI ::/EFI/BOOT ::/imgforge
mcopy -i "$esp" "$tmp/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$esp" "$here/seeds/manifest_json/debian-small.json" ::/imgforge/manifest.json
dd if="$esp" of="$disk" bs=512 seek=98 conv=notrunc status=none
# MBR boot code (nonzero) whose core image pointer (offset 0x5c) is LBA 34,
# and a nonzero "core image" there.
printf '\xeb\x63\x90GRUB-like' | dd of="$disk" bs=1 conv=notrunc status=none
printf '\x22\x00\x00\x00\x00\x00\x00\x00' | dd of="$disk" bs=1 seek=$((0x5c)) conv=notrunc status=none
printf 'core.img' | dd of="$disk" bs=512 seek=34 conv=notrunc status=none
cp "$disk" "$corpus/gpt_image/seed-disk.raw"
cp "$esp" "$corpus/esp_fat/seed-esp.fat"
