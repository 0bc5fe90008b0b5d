//! The guest's report line and what it must show.
//!
//! The image's `imgforge-report.service` prints
//! `IMGFORGE-REPORT {json}` on the serial console at multi-user (see
//! `rootfs/base/usr/local/libexec/imgforge/report`). Every value is a string;
//! a field the guest could not read is empty.

use serde::{Deserialize, Serialize};

use crate::image::firmware::Firmware;
use crate::sizeclass::SizeClass;

pub const MARKER: &str = "IMGFORGE-REPORT ";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct GuestReport {
    pub v: String,
    /// `bios` or `uefi`: what the guest sees (`/sys/firmware/efi`).
    pub firmware: String,
    pub kernel: String,
    pub cmdline: String,
    /// /sys/devices/system/cpu/online, e.g. `0-3`.
    pub cpus_online: String,
    /// /sys/devices/system/cpu/isolated.
    pub isolated: String,
    /// /sys/devices/system/cpu/nohz_full.
    pub nohz_full: String,
    /// `findmnt -no SOURCE /`.
    pub root_source: String,
    pub root_fstype: String,
    /// The block device behind / (from its device number).
    pub root_dev: String,
    /// The UUID in that device's ext4 superblock.
    pub root_uuid: String,
    /// What /dev/disk/by-uuid/<root_uuid> resolves to.
    pub root_by_uuid: String,
    /// The first field of /etc/fstab's line for /.
    pub fstab_root: String,
    pub net_iface: String,
    pub net_addr: String,
    pub net_gateway: String,
    /// `yes` when the address came from DHCP.
    pub dhcp: String,
    /// `active` when ssh.service or sshd.service is.
    pub sshd: String,
    /// `yes` when something listens on TCP port 22.
    pub ssh_listen: String,
    /// `systemctl is-active multi-user.target`.
    pub multi_user: String,
    /// Failed units, space separated.
    pub failed_units: String,
    /// Seconds since the kernel started.
    pub uptime: String,
    /// `imgforge-verify`'s verdict at boot: `pass`, `fail`, or empty when
    /// the image has no imgforge-verify (an untuned profile).
    pub verify: String,
    /// The names of the checks imgforge-verify found failing, `; ` separated,
    /// each with its expected and actual value.
    pub verify_failures: String,
    /// `present` when /root/trading_system_tuning_report.txt was written.
    pub tuning_report: String,
    /// `enabled` when Secure Boot was enforced (the kernel's own line, else
    /// the firmware's SecureBoot variable), `disabled`, or empty.
    pub secure_boot: String,
    /// The kernel log's Secure Boot line (`Secure boot enabled` on x86).
    pub secure_boot_line: String,
    /// /sys/class/tpm/tpm0/tpm_version_major (`2`), empty without a TPM.
    pub tpm_version: String,
    /// Bytes of /sys/kernel/security/tpm0/binary_bios_measurements (the
    /// firmware's measured-boot event log), empty when the kernel has none.
    pub tpm_event_log: String,
    /// PCR 7 of the SHA-256 bank in hex, read with tpm2_pcrread in the
    /// guest; empty without a TPM or without tpm2-tools (`build --tpm-tools`).
    pub tpm_pcr7: String,
    /// Modules under /lib/modules/$(uname -r)/updates (DKMS's), `NAME=loaded`
    /// or `NAME=not-loaded`, space separated.
    pub updates_modules: String,
    /// The kernel's line when it refused a module's signature, if any.
    pub module_rejected: String,
    /// The image's first-boot units (`ConditionFirstBoot=yes` under
    /// /etc/systemd/system), `NAME=STATE` space separated: `ran`, `skipped`
    /// (systemd did not count the boot as the first) or the unit's state.
    /// Arch's keyring unit, imgforge-pacman-init.service, is one.
    pub first_boot_units: String,
}

/// The report in a console line, if the line carries a whole one. A line
/// that another writer broke up gives `None` (the caller keeps waiting).
pub fn parse_line(line: &str) -> Option<GuestReport> {
    let at = line.find(MARKER)?;
    let json = line[at + MARKER.len()..].trim();
    let end = json.rfind('}')?;
    serde_json::from_str(&json[..=end]).ok()
}

/// One promise checked against the report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub expected: String,
    pub actual: String,
}

impl Check {
    fn new(name: &str, ok: bool, expected: impl Into<String>, actual: impl Into<String>) -> Self {
        Self {
            name: name.to_string(),
            ok,
            expected: expected.into(),
            actual: actual.into(),
        }
    }

    fn equal(name: &str, expected: &str, actual: &str) -> Self {
        Self::new(name, expected == actual, expected, actual)
    }
}

/// What the guest is expected to show.
#[derive(Debug, Clone)]
pub struct Expectations {
    pub firmware: Firmware,
    pub smp: u32,
    /// The image's size class, when its manifest names one.
    pub class: Option<SizeClass>,
    /// The manifest's command line tokens that carry the class's CPU lists
    /// (see [`super::expect::class_tokens`]).
    pub class_tokens: Vec<String>,
    /// Tokens the manifest says the kernel command line has.
    pub manifest_cmdline: Vec<String>,
    /// The root filesystem's UUID from the manifest.
    pub root_uuid: Option<String>,
    /// `--secure-boot`: the guest must report Secure Boot enforced.
    pub secure_boot: bool,
    /// `--tpm`: the guest must see a TPM 2.0 and the firmware's event log.
    pub tpm: bool,
    /// The manifest says `tpm_tools` (`build --tpm-tools`): with `--tpm`,
    /// the guest must read PCR 7 with them.
    pub tpm_tools: bool,
    /// Modules the build signed with the owner's key (`--secure-boot-key`),
    /// by the kernel's name: under `--secure-boot` each must be loaded.
    pub signed_modules: Vec<String>,
}

/// Every check, in a fixed order.
pub fn check(report: &GuestReport, want: &Expectations) -> Vec<Check> {
    let mut checks = vec![
        Check::equal("firmware", want.firmware.as_str(), &report.firmware),
        Check::equal("multi-user", "active", &report.multi_user),
        Check::equal("cpus online", &cpu_range(want.smp), &report.cpus_online),
    ];
    let tokens: Vec<&str> = report.cmdline.split_whitespace().collect();
    let missing = |wanted: &[String]| -> Vec<String> {
        wanted
            .iter()
            .filter(|t| !tokens.contains(&t.as_str()))
            .cloned()
            .collect()
    };
    // The image isolates CPUs when its profile put `nohz_full=` on the
    // command line (an untuned profile does not: then nothing is isolated).
    let isolates = want
        .manifest_cmdline
        .iter()
        .map(String::as_str)
        .chain(tokens.iter().copied())
        .any(|t| t.starts_with("nohz_full="));
    if let Some(class) = &want.class {
        if isolates && !want.class_tokens.is_empty() {
            checks.push(class_lists_check(&class.name, &want.class_tokens, &tokens));
        }
        let isolated = if isolates {
            class.isolated_on(want.smp)
        } else {
            String::new()
        };
        checks.push(Check::equal(
            &format!("isolated CPUs on {} vCPUs", want.smp),
            &isolated,
            &report.isolated,
        ));
        checks.push(Check::equal(
            &format!("nohz_full CPUs on {} vCPUs", want.smp),
            &isolated,
            &report.nohz_full,
        ));
    }
    if !want.manifest_cmdline.is_empty() {
        let absent = missing(&want.manifest_cmdline);
        checks.push(Check::new(
            "manifest kernel_cmdline tokens",
            absent.is_empty(),
            want.manifest_cmdline.join(" "),
            if absent.is_empty() {
                "all present".to_string()
            } else {
                format!("missing: {}", absent.join(" "))
            },
        ));
    }
    checks.extend(root_checks(report, want.root_uuid.as_deref()));
    // A tuned image runs imgforge-verify at boot; its verdict must be `pass`.
    if isolates || !report.verify.is_empty() {
        checks.push(Check::new(
            "imgforge-verify in the guest",
            report.verify == "pass",
            "pass",
            match (report.verify.as_str(), report.verify_failures.as_str()) {
                ("", _) => "no verdict (imgforge-verify did not run)".to_string(),
                (verdict, "") => verdict.to_string(),
                (verdict, failures) => format!("{verdict}: {failures}"),
            },
        ));
    }
    checks.push(Check::new(
        "network by DHCP",
        report.dhcp == "yes" && !report.net_addr.is_empty(),
        "an IPv4 address from DHCP",
        format!(
            "{} {} dhcp={}",
            report.net_iface, report.net_addr, report.dhcp
        ),
    ));
    checks.push(Check::new(
        "sshd",
        report.sshd == "active" && report.ssh_listen == "yes",
        "active, listening on port 22",
        format!("{}, listening={}", report.sshd, report.ssh_listen),
    ));
    checks.extend(first_boot_check(report));
    checks.extend(trust_checks(report, want));
    checks
}

/// A first-boot unit that ran and failed (Arch's keyring unit, say) is
/// not among the failed units once it stops, so it is checked on its own;
/// none when the image has no first-boot unit.
fn first_boot_check(report: &GuestReport) -> Option<Check> {
    if report.first_boot_units.is_empty() {
        return None;
    }
    let failed: Vec<&str> = report
        .first_boot_units
        .split_whitespace()
        .filter(|unit| unit.ends_with("=failed"))
        .collect();
    Some(Check::new(
        "first-boot units did not fail",
        failed.is_empty(),
        "none failed",
        if failed.is_empty() {
            report.first_boot_units.clone()
        } else {
            failed.join(" ")
        },
    ))
}

/// `--secure-boot` and `--tpm`: what the guest must have been given.
fn trust_checks(report: &GuestReport, want: &Expectations) -> Vec<Check> {
    let mut checks = Vec::new();
    if want.secure_boot {
        checks.push(Check::new(
            "Secure Boot enforced",
            report.secure_boot == "enabled",
            "enabled (the kernel: Secure boot enabled)",
            match (
                report.secure_boot.as_str(),
                report.secure_boot_line.as_str(),
            ) {
                ("", _) => "not reported (an image whose report predates Secure Boot?)".into(),
                (state, "") => state.to_string(),
                (state, line) => format!("{state} (the kernel: {line})"),
            },
        ));
    }
    if want.secure_boot {
        let loaded: Vec<&str> = report.updates_modules.split_whitespace().collect();
        for name in &want.signed_modules {
            let state = loaded
                .iter()
                .find_map(|m| m.strip_prefix(&format!("{name}=")))
                .unwrap_or("not in the image's updates folder");
            checks.push(Check::new(
                &format!("module {name} (signed with your key) loaded"),
                state == "loaded",
                "loaded",
                match (state, report.module_rejected.as_str()) {
                    ("loaded", _) | (_, "") => state.to_string(),
                    (state, line) => format!("{state} (the kernel: {line})"),
                },
            ));
        }
    }
    if want.tpm {
        checks.push(Check::equal("TPM version", "2", &report.tpm_version));
        let bytes: u64 = report.tpm_event_log.parse().unwrap_or(0);
        checks.push(Check::new(
            "measured-boot event log",
            bytes > 0,
            "binary_bios_measurements present",
            if report.tpm_event_log.is_empty() {
                "missing".to_string()
            } else {
                format!("{bytes} bytes")
            },
        ));
        if want.tpm_tools {
            checks.push(Check::new(
                "PCR 7 read with tpm2_pcrread",
                !report.tpm_pcr7.is_empty(),
                "a SHA-256 value",
                if report.tpm_pcr7.is_empty() {
                    "nothing read".to_string()
                } else {
                    report.tpm_pcr7.clone()
                },
            ));
        }
    }
    checks
}

/// The class's CPU-list tokens must reach the guest's command line: for
/// each, a token with the same key ending in the same CPU list (shown as
/// `key=..list`).
fn class_lists_check(class: &str, wanted: &[String], tokens: &[&str]) -> Check {
    let key_and_list = |token: &str| {
        let (key, value) = token.split_once('=').unwrap_or((token, ""));
        let list = value.rsplit(',').next().unwrap_or(value);
        (format!("{key}="), list.to_string())
    };
    let lists: Vec<(String, String)> = wanted.iter().map(|t| key_and_list(t)).collect();
    let wrong: Vec<String> = lists
        .iter()
        .filter(|(key, list)| {
            !tokens
                .iter()
                .any(|t| t.starts_with(key.as_str()) && t.ends_with(list.as_str()))
        })
        .map(|(key, list)| format!("{key}..{list}"))
        .collect();
    Check::new(
        &format!("size class {class} CPU lists on the cmdline"),
        wrong.is_empty(),
        lists
            .iter()
            .map(|(key, list)| format!("{key}..{list}"))
            .collect::<Vec<_>>()
            .join(" "),
        if wrong.is_empty() {
            "all present".to_string()
        } else {
            format!("missing: {}", wrong.join(" "))
        },
    )
}

/// Root must be mounted by UUID: the kernel was told `root=UUID=<uuid>`, the
/// device it mounted carries that UUID in its superblock, and that is the
/// UUID the manifest records (fstab, when it names /, says the same).
fn root_checks(report: &GuestReport, manifest_uuid: Option<&str>) -> Vec<Check> {
    let cmdline_root = report
        .cmdline
        .split_whitespace()
        .find_map(|t| t.strip_prefix("root="))
        .unwrap_or("")
        .to_string();
    let expected_uuid = manifest_uuid
        .map(str::to_lowercase)
        .unwrap_or_else(|| report.root_uuid.to_lowercase());
    let by_uuid = format!("UUID={expected_uuid}");
    let mut checks = vec![
        Check::new(
            "root= on the kernel command line",
            cmdline_root.eq_ignore_ascii_case(&by_uuid) && !expected_uuid.is_empty(),
            by_uuid.clone(),
            format!("root={cmdline_root}"),
        ),
        Check::new(
            "mounted root filesystem UUID",
            !expected_uuid.is_empty() && report.root_uuid.eq_ignore_ascii_case(&expected_uuid),
            expected_uuid.clone(),
            format!(
                "{} on {} ({})",
                empty_as(&report.root_uuid, "no ext4 UUID"),
                empty_as(&report.root_dev, "?"),
                report.root_source
            ),
        ),
    ];
    if !report.root_by_uuid.is_empty() && !report.root_dev.is_empty() {
        checks.push(Check::equal(
            "/dev/disk/by-uuid link of root",
            &report.root_dev,
            &report.root_by_uuid,
        ));
    }
    if !report.fstab_root.is_empty() {
        checks.push(Check::new(
            "fstab names root by UUID",
            report.fstab_root.eq_ignore_ascii_case(&by_uuid),
            by_uuid,
            report.fstab_root.clone(),
        ));
    }
    checks
}

fn empty_as<'a>(value: &'a str, placeholder: &'a str) -> &'a str {
    if value.is_empty() { placeholder } else { value }
}

/// The kernel's notation for CPUs 0..n-1.
fn cpu_range(n: u32) -> String {
    match n {
        0 => String::new(),
        1 => "0".into(),
        n => format!("0-{}", n - 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sizeclass;

    const UUID: &str = "6f1c2a4e-0b7d-4c1e-9a52-3d8e5f6a7b8c";

    fn good_report() -> GuestReport {
        let mut cmdline =
            format!("BOOT_IMAGE=/boot/vmlinuz root=UUID={UUID} ro console=ttyS0,115200");
        for token in [
            "isolcpus=managed_irq,domain,2-N",
            "nohz_full=2-N",
            "rcu_nocbs=2-N",
            "irqaffinity=0-1",
            "skew_tick=1",
        ] {
            cmdline.push(' ');
            cmdline.push_str(token);
        }
        GuestReport {
            v: "1".into(),
            firmware: "uefi".into(),
            cmdline,
            cpus_online: "0-3".into(),
            isolated: "2-3".into(),
            nohz_full: "2-3".into(),
            root_source: "/dev/nvme0n1p3".into(),
            root_dev: "/dev/nvme0n1p3".into(),
            root_uuid: UUID.into(),
            root_by_uuid: "/dev/nvme0n1p3".into(),
            fstab_root: format!("UUID={UUID}"),
            net_iface: "enp0s2".into(),
            net_addr: "10.0.2.15/24".into(),
            dhcp: "yes".into(),
            sshd: "active".into(),
            ssh_listen: "yes".into(),
            multi_user: "active".into(),
            verify: "pass".into(),
            ..Default::default()
        }
    }

    fn expectations() -> Expectations {
        Expectations {
            firmware: Firmware::Uefi,
            smp: 4,
            class: Some(sizeclass::lookup("small").unwrap()),
            class_tokens: [
                "isolcpus=managed_irq,domain,2-N",
                "nohz_full=2-N",
                "rcu_nocbs=2-N",
                "irqaffinity=0-1",
            ]
            .map(String::from)
            .to_vec(),
            manifest_cmdline: vec!["console=ttyS0,115200".into()],
            root_uuid: Some(UUID.to_uppercase()),
            secure_boot: false,
            tpm: false,
            tpm_tools: false,
            signed_modules: Vec::new(),
        }
    }

    #[test]
    fn a_good_report_passes_every_check() {
        let checks = check(&good_report(), &expectations());
        let failed: Vec<_> = checks.iter().filter(|c| !c.ok).collect();
        assert!(failed.is_empty(), "{failed:#?}");
        assert!(checks.len() >= 10);
    }

    #[test]
    fn wrong_isolation_root_device_and_missing_token_fail() {
        let mut report = good_report();
        report.isolated = "1-3".into();
        report.cmdline = report
            .cmdline
            .replace(&format!("root=UUID={UUID}"), "root=/dev/nvme0n1p3")
            .replace("rcu_nocbs=2-N", "");
        report.sshd = "inactive".into();
        let failed: Vec<String> = check(&report, &expectations())
            .into_iter()
            .filter(|c| !c.ok)
            .map(|c| c.name)
            .collect();
        assert_eq!(
            failed,
            [
                "size class small CPU lists on the cmdline",
                "isolated CPUs on 4 vCPUs",
                "root= on the kernel command line",
                "sshd"
            ]
        );
    }

    #[test]
    fn a_signed_module_must_be_loaded_under_secure_boot_and_a_refusal_is_named() {
        let mut report = good_report();
        report.secure_boot = "enabled".into();
        report.secure_boot_line = "Secure boot enabled".into();
        report.updates_modules = "acpi_call=loaded other=not-loaded".into();
        let mut want = expectations();
        want.secure_boot = true;
        want.signed_modules = vec!["acpi_call".into()];
        assert!(check(&report, &want).iter().all(|c| c.ok));
        report.updates_modules = "acpi_call=not-loaded".into();
        report.module_rejected = "Loading of module with unavailable key is rejected".into();
        let checks = check(&report, &want);
        let failed: Vec<_> = checks.iter().filter(|c| !c.ok).collect();
        assert_eq!(failed.len(), 1, "{failed:#?}");
        assert!(failed[0].name.contains("acpi_call"));
        assert!(
            failed[0].actual.contains("unavailable key"),
            "{:?}",
            failed[0]
        );
        // A plain boot (no Secure Boot) does not ask for it.
        want.secure_boot = false;
        report.secure_boot = "disabled".into();
        assert!(check(&report, &want).iter().all(|c| c.ok));
    }

    #[test]
    fn a_failed_first_boot_unit_fails_the_boot_and_a_skipped_one_does_not() {
        let mut report = good_report();
        report.first_boot_units = "imgforge-pacman-init.service=ran".into();
        assert!(check(&report, &expectations()).iter().all(|c| c.ok));
        report.first_boot_units = "a.service=skipped imgforge-pacman-init.service=failed".into();
        let checks = check(&report, &expectations());
        let failed: Vec<_> = checks.iter().filter(|c| !c.ok).collect();
        assert_eq!(failed.len(), 1, "{failed:#?}");
        assert_eq!(failed[0].actual, "imgforge-pacman-init.service=failed");
    }

    #[test]
    fn a_failing_verify_fails_the_boot_and_names_what_failed() {
        let mut report = good_report();
        report.verify = "fail".into();
        report.verify_failures = "sysctl vm.swappiness: expected 10, actual 60".into();
        let failed: Vec<Check> = check(&report, &expectations())
            .into_iter()
            .filter(|c| !c.ok)
            .collect();
        assert_eq!(failed.len(), 1, "{failed:#?}");
        assert_eq!(failed[0].name, "imgforge-verify in the guest");
        assert!(failed[0].actual.contains("vm.swappiness"));
        report.verify = String::new();
        let failed: Vec<Check> = check(&report, &expectations())
            .into_iter()
            .filter(|c| !c.ok)
            .collect();
        assert!(failed[0].actual.contains("did not run"), "{failed:#?}");
    }

    #[test]
    fn an_untuned_image_isolates_nothing_and_needs_no_verify() {
        let mut report = good_report();
        report.cmdline = format!("root=UUID={UUID} ro console=ttyS0,115200");
        report.isolated = String::new();
        report.nohz_full = String::new();
        report.verify = String::new();
        let want = expectations();
        let checks = check(&report, &want);
        let failed: Vec<_> = checks.iter().filter(|c| !c.ok).collect();
        assert!(failed.is_empty(), "{failed:#?}");
        assert!(!checks.iter().any(|c| c.name.contains("verify")));
        // Isolated CPUs on an untuned image are a failure.
        report.isolated = "2-3".into();
        assert!(check(&report, &want).iter().any(|c| !c.ok));
    }

    #[test]
    fn parses_a_report_line_amid_console_noise() {
        let line = r#"[   31.2] foo IMGFORGE-REPORT {"v":"1","firmware":"bios","cmdline":"a \"b\" c\\d","extra":"x"}"#;
        let report = parse_line(line).unwrap();
        assert_eq!(report.firmware, "bios");
        assert_eq!(report.cmdline, r#"a "b" c\d"#);
        assert_eq!(report.isolated, "");
        assert!(parse_line(r#"IMGFORGE-REPORT {"v":"1","firm"#).is_none());
        assert!(parse_line("Reached target Multi-User System").is_none());
    }

    #[test]
    fn cpu_ranges() {
        assert_eq!(cpu_range(1), "0");
        assert_eq!(cpu_range(4), "0-3");
    }
}
