//! What a Secure Boot refusal looks like on the serial console: a boot the
//! firmware, shim or GRUB stopped ends at once with what refused it and
//! why, instead of running on to the timeout (shim falls back to the
//! firmware's boot menu, which waits forever).

/// Console text of a refusal and what it means, first match wins.
const REFUSALS: &[(&str, &str)] = &[
    (
        "Verification failed",
        "shim refused the next loader (GRUB on the ESP): it is not signed by a key shim \
         trusts (its built-in distribution key, db or MOK)",
    ),
    (
        "bad shim signature",
        "GRUB refused the kernel: shim says it is not signed by a trusted key",
    ),
    (
        "prohibited by secure boot policy",
        "GRUB refused an unsigned module or command under Secure Boot",
    ),
    (
        "Access Denied",
        "the firmware refused the ESP's loader (EFI/BOOT/BOOT*.EFI): it is not signed by a \
         key in db (an unsigned GRUB, or a shim the store's keys do not cover)",
    ),
];

/// Why `line` (a console line, escapes removed) dooms the boot under
/// Secure Boot, if it does.
pub fn refused_by(line: &str) -> Option<String> {
    REFUSALS
        .iter()
        .find(|(text, _)| line.contains(text))
        .map(|(_, meaning)| {
            format!("Secure Boot refused the boot chain: {meaning} (console: {line})")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shims_verification_failure_names_shim_and_the_line() {
        let why = refused_by("Verification failed: (0x1A) Security Violation").unwrap();
        assert!(why.contains("shim refused"), "{why}");
        assert!(why.contains("(0x1A) Security Violation"), "{why}");
    }

    #[test]
    fn the_firmware_refusing_the_loader_is_named() {
        let line = "BdsDxe: failed to load Boot0001 \"UEFI QEMU NVMe Ctrl\" from PciRoot(0x0): Access Denied";
        assert!(refused_by(line).unwrap().contains("the firmware refused"));
    }

    #[test]
    fn ordinary_boot_lines_are_not_refusals() {
        for line in [
            "[    0.000000] secureboot: Secure boot enabled",
            "EFI stub: UEFI Secure Boot is enabled.",
            "Booting `debian bookworm (small)'",
        ] {
            assert_eq!(refused_by(line), None, "{line}");
        }
    }
}
