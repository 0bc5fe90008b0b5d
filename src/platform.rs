//! The CPU architecture axis: `boot/architectures.toml`, one row per
//! architecture with every tool's name for it (the distro's, GRUB's, EFI's,
//! QEMU's, EC2's), its firmware, root partition type and console. The
//! stages, inspect, boot-test and upload read an [`Architecture`]; none of
//! them tests an architecture's name.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

use crate::sizeclass::SizeClass;
use crate::sys::tool::HostTool;

const TABLE_PATH: &str = "boot/architectures.toml";
const TABLE: &str = include_str!("../boot/architectures.toml");

/// The parsed table, checked by a unit test; rows live for the whole run.
static ARCHITECTURES: LazyLock<BTreeMap<String, Architecture>> = LazyLock::new(|| {
    let mut rows: BTreeMap<String, Architecture> =
        toml::from_str(TABLE).expect("boot/architectures.toml is valid (checked by a unit test)");
    for (name, row) in rows.iter_mut() {
        row.name = name.clone();
    }
    rows
});

#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error("unknown architecture `{given}`; choose one of: {known} ({TABLE_PATH})")]
    Unknown { given: String, known: String },
}

/// One row of the table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Architecture {
    /// imgforge's name: `x86_64`, `arm64` (the table's key).
    #[serde(skip_deserializing)]
    pub name: String,
    /// Other names for it (Debian's `amd64`, the kernel's `aarch64`).
    pub aliases: Vec<String>,
    /// EC2 RegisterImage's `Architecture`.
    pub ec2: String,
    /// Whether its machines have a BIOS (and images a BIOS boot partition).
    pub bios: bool,
    /// grub-mkimage formats built into the image, in boot/bootloaders.toml.
    pub grub_targets: Vec<String>,
    /// The root partition's GPT type GUID, upper case.
    pub root_type: String,
    /// The kernel's `console=` tokens.
    pub console: Vec<String>,
    /// grub.cfg's terminal lines.
    pub grub_terminal: String,
    /// Kernel parameters this architecture's kernel does not have.
    pub cmdline_unknown: Vec<String>,
    pub threads_per_core: u32,
    /// Cores of an `xlarge` instance (with one thread per core).
    pub cores_per_xlarge: u32,
    /// How to launch an instance so that the size class's CPU lists hold.
    pub launch_note: String,
    pub binfmt: BinfmtEntry,
    pub qemu: QemuMachine,
}

/// `[ARCH.binfmt]`: the binfmt_misc entry that runs this architecture's
/// programs on another host through qemu-user-static.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BinfmtEntry {
    /// The entry's name under /proc/sys/fs/binfmt_misc (Debian's).
    pub name: String,
    pub interpreter: PathBuf,
    /// The Debian package of `interpreter`.
    pub package: String,
    /// ELF header bytes and mask, in binfmt_misc's `\xNN` notation.
    pub magic: String,
    pub mask: String,
}

/// `[ARCH.qemu]`: boot-test's machine.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QemuMachine {
    pub binary: String,
    /// The Debian package of `binary`.
    pub package: String,
    pub machine: String,
    /// `-cpu` under TCG on a host of another architecture; None: the boot
    /// test's own choice (the host's CPU model under KVM).
    #[serde(default)]
    pub tcg_cpu: Option<String>,
    /// A `-device` that receives the firmware's debug output (none on arm64).
    #[serde(default)]
    pub firmware_debug_device: Option<String>,
    /// The Debian package of the UEFI firmware.
    pub firmware_package: String,
    /// (code, variable store) candidates, first that exists wins.
    pub firmware: Vec<(PathBuf, PathBuf)>,
    /// `boot-test --tpm`: the TPM device model QEMU attaches swtpm through
    /// (x86: `tpm-crb`, as NitroTPM; arm virt: `tpm-tis-device`).
    #[serde(default)]
    pub tpm_device: Option<String>,
    /// `boot-test --secure-boot`'s machine; none: not supported.
    #[serde(default)]
    pub secure_boot: Option<SecureBootMachine>,
}

/// `[ARCH.qemu.secure_boot]`: the firmware that enforces Secure Boot and
/// what the machine needs for it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SecureBootMachine {
    /// `-machine` (x86: SMM, without which the secure firmware aborts).
    pub machine: String,
    /// Further QEMU arguments (x86: the pflash only SMM code may write).
    #[serde(default)]
    pub args: Vec<String>,
    /// (code, variable store with Microsoft's keys enrolled and Secure
    /// Boot on) candidates, first that exists wins.
    pub firmware: Vec<(PathBuf, PathBuf)>,
}

/// Every architecture, by name.
pub fn all() -> impl Iterator<Item = &'static Architecture> {
    ARCHITECTURES.values()
}

pub fn names() -> Vec<&'static str> {
    all().map(|a| a.name.as_str()).collect()
}

/// The architecture called `name`, or one of whose aliases or EC2 names it
/// is (`amd64` is x86_64), case-insensitively.
pub fn lookup(name: &str) -> Result<&'static Architecture, PlatformError> {
    all()
        .find(|a| a.answers_to(name))
        .ok_or_else(|| PlatformError::Unknown {
            given: name.to_string(),
            known: names().join(", "),
        })
}

/// The architecture whose root partition type this is.
pub fn by_root_type(type_guid: &str) -> Option<&'static Architecture> {
    all().find(|a| a.root_type.eq_ignore_ascii_case(type_guid))
}

/// The architecture of the machine imgforge runs on.
pub fn host() -> Option<&'static Architecture> {
    lookup(std::env::consts::ARCH).ok()
}

impl Architecture {
    fn answers_to(&self, name: &str) -> bool {
        std::iter::once(&self.name)
            .chain(&self.aliases)
            .chain(std::iter::once(&self.ec2))
            .any(|n| n.eq_ignore_ascii_case(name))
    }

    /// Whether this architecture's programs run natively on this host (else
    /// a bootstrap needs qemu-user and binfmt, and a boot test TCG).
    pub fn is_host(&self) -> bool {
        host().is_some_and(|h| h.name == self.name)
    }

    /// The profile's command line tokens that this architecture's kernel
    /// knows (a token's parameter is the part before `=`).
    pub fn keep_cmdline_token(&self, token: &str) -> bool {
        let parameter = token.split_once('=').map_or(token, |(p, _)| p);
        !self.cmdline_unknown.iter().any(|u| u == parameter)
    }

    /// The instance sizes (`xlarge` multiples) whose core count falls in
    /// the class, e.g. `xlarge-2xlarge` for small on Graviton.
    pub fn instance_sizes(&self, class: &SizeClass) -> String {
        let size = |cores: u32| match cores / self.cores_per_xlarge {
            0 => "large".to_string(),
            1 => "xlarge".to_string(),
            n => format!("{n}xlarge"),
        };
        format!(
            "{}-{}",
            size(class.min_vcpus.div_ceil(self.cores_per_xlarge) * self.cores_per_xlarge),
            size(class.max_vcpus)
        )
    }

    /// QEMU's binary for this architecture, as a host tool to require.
    pub fn qemu_tool(&'static self) -> HostTool {
        HostTool::new(&self.qemu.binary, &self.qemu.package)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sizeclass;

    #[test]
    fn table_parses_with_both_rows() {
        assert_eq!(names(), ["arm64", "x86_64"]);
        for arch in all() {
            assert!(!arch.grub_targets.is_empty(), "{}", arch.name);
            let efi = arch.grub_targets.iter().filter(|t| t.ends_with("-efi"));
            assert_eq!(efi.count(), 1, "{}", arch.name);
            assert_eq!(arch.root_type, arch.root_type.to_uppercase());
            assert!(!arch.qemu.firmware.is_empty());
        }
    }

    #[test]
    fn every_name_finds_its_row() {
        for (given, expected) in [
            ("x86_64", "x86_64"),
            ("amd64", "x86_64"),
            ("arm64", "arm64"),
            ("aarch64", "arm64"),
            ("ARM64", "arm64"),
        ] {
            assert_eq!(lookup(given).unwrap().name, expected, "{given}");
        }
        let err = lookup("riscv64").unwrap_err().to_string();
        assert!(
            err.contains("`riscv64`") && err.contains("arm64, x86_64"),
            "{err}"
        );
    }

    #[test]
    fn graviton_row_is_uefi_only_with_both_consoles() {
        let arm = lookup("arm64").unwrap();
        assert!(!arm.bios);
        assert_eq!(arm.grub_targets, ["arm64-efi"]);
        assert_eq!(arm.ec2, "arm64");
        assert_eq!(arm.root_type, "B921B045-1DF0-41C3-AF44-4C6F280D3FAE");
        assert!(arm.console.iter().any(|c| c.starts_with("console=ttyS0")));
        assert!(arm.console.iter().any(|c| c.starts_with("console=ttyAMA0")));
        assert_eq!(
            arm.console.last().unwrap(),
            "console=ttyS0,115200n8",
            "EC2's serial port is /dev/console"
        );
        assert_eq!(arm.qemu.binary, "qemu-system-aarch64");
        assert_eq!(arm.qemu.machine, "virt");
        assert_eq!(
            arm.qemu.firmware[0].0,
            std::path::Path::new("/usr/share/AAVMF/AAVMF_CODE.fd")
        );
        assert_eq!(
            by_root_type(&arm.root_type.to_lowercase()).unwrap().name,
            "arm64"
        );
    }

    #[test]
    fn x86_row_keeps_what_x86_images_always_had() {
        let x86 = lookup("x86_64").unwrap();
        assert!(x86.bios);
        assert_eq!(x86.grub_targets, ["i386-pc", "x86_64-efi"]);
        assert_eq!(x86.console, ["console=tty0", "console=ttyS0,115200n8"]);
        assert!(x86.cmdline_unknown.is_empty());
        assert_eq!(x86.qemu.binary, "qemu-system-x86_64");
        assert_eq!(x86.qemu.machine, "q35");
        assert_eq!(
            by_root_type("4f68bce3-e8cd-4db1-96e7-fbcaf984b709")
                .unwrap()
                .name,
            "x86_64"
        );
    }

    #[test]
    fn x86_only_parameters_are_left_out_on_arm64() {
        let arm = lookup("arm64").unwrap();
        for token in ["clocksource=tsc", "tsc=reliable", "intel_idle.max_cstate=1"] {
            assert!(!arm.keep_cmdline_token(token), "{token}");
        }
        for token in [
            "nohz_full=2-N",
            "isolcpus=managed_irq,domain,2-N",
            "nosoftlockup",
        ] {
            assert!(arm.keep_cmdline_token(token), "{token}");
        }
        let x86 = lookup("x86_64").unwrap();
        assert!(x86.keep_cmdline_token("clocksource=tsc"));
    }

    #[test]
    fn instance_sizes_differ_by_threads_per_core() {
        let small = sizeclass::lookup("small").unwrap();
        let large = sizeclass::lookup("large").unwrap();
        let arm = lookup("arm64").unwrap();
        let x86 = lookup("x86_64").unwrap();
        assert_eq!(arm.instance_sizes(&small), "xlarge-2xlarge");
        assert_eq!(arm.instance_sizes(&large), "12xlarge-24xlarge");
        assert_eq!(x86.instance_sizes(&small), "2xlarge-4xlarge");
        assert_eq!(arm.threads_per_core, 1);
        assert_eq!(x86.threads_per_core, 2);
    }
}
