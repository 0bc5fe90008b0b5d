//! GRUB's targets (`boot/bootloaders.toml`: per firmware, its grub-mkimage
//! format, modules and ESP path; the early config; the base kernel command
//! line) and the kernel command line made from them: what the bootloader
//! stage builds and what the plan shows.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::template::{self, TemplateError};
use crate::data::{DataDir, DataError};
use crate::image::firmware::Firmware;
use crate::platform::Architecture;
use crate::profile::{Profile, ProfileError};
use crate::sizeclass::SizeClass;

pub const TARGETS: &str = "boot/bootloaders.toml";

#[derive(Debug, thiserror::Error)]
pub enum GrubError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error("boot/bootloaders.toml: {0}")]
    Targets(String),
    #[error(
        "boot/bootloaders.toml has no [[target]] with format `{format}`, which the {arch} row \
         of boot/architectures.toml lists in grub_targets"
    )]
    NoTarget { arch: String, format: String },
}

/// `boot/bootloaders.toml`.
#[derive(Debug, Deserialize)]
pub struct Targets {
    /// GRUB's built-in config: finds the root by UUID, loads grub.cfg.
    pub early_config: String,
    pub base_cmdline: String,
    pub target: Vec<Target>,
}

/// One GRUB image: the firmware it boots under, grub-mkimage's format and
/// modules, and where on the ESP it goes (none: BIOS boot code).
#[derive(Debug, Deserialize)]
pub struct Target {
    pub firmware: Firmware,
    pub format: String,
    #[serde(default)]
    pub esp_path: Option<String>,
    pub modules: Vec<String>,
}

pub fn targets(data: &DataDir) -> Result<Targets, GrubError> {
    toml::from_str(&data.read_to_string(TARGETS)?).map_err(|e| GrubError::Targets(e.to_string()))
}

/// The targets `arch` builds, in the order its row lists them.
pub fn targets_for(all: Vec<Target>, arch: &Architecture) -> Result<Vec<Target>, GrubError> {
    let mut all = all;
    arch.grub_targets
        .iter()
        .map(|format| {
            let at = all
                .iter()
                .position(|t| &t.format == format)
                .ok_or_else(|| GrubError::NoTarget {
                    arch: arch.name.clone(),
                    format: format.clone(),
                })?;
            Ok(all.swap_remove(at))
        })
        .collect()
}

/// The ESP paths of the UEFI bootloaders `arch` gets (`EFI/BOOT/BOOTAA64.EFI`).
pub fn esp_paths(data: &DataDir, arch: &Architecture) -> Result<Vec<String>, GrubError> {
    Ok(targets_for(targets(data)?.target, arch)?
        .into_iter()
        .filter_map(|t| t.esp_path)
        .collect())
}

/// The kernel command line: the root by UUID, the base tokens with the
/// architecture's consoles, the profile's tokens for the size class that
/// the architecture's kernel has.
/// The command line with the build's `--kernel-arg`s after it: the size
/// class's tokens stay, the user's come last (the kernel's last one wins).
pub fn with_kernel_args(cmdline: String, kernel_args: &[String]) -> String {
    std::iter::once(cmdline)
        .chain(kernel_args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn kernel_cmdline(
    data: &DataDir,
    root_uuid: &str,
    class: &SizeClass,
    profile: &Profile,
    arch: &Architecture,
) -> Result<String, GrubError> {
    let vars = BTreeMap::from([("console", arch.console.join(" "))]);
    let base = template::render(&targets(data)?.base_cmdline, &vars, Path::new(TARGETS))?;
    let mut tokens = vec![format!("root=UUID={root_uuid}"), base];
    tokens.extend(
        profile
            .cmdline_for(class)?
            .into_iter()
            .filter(|t| arch.keep_cmdline_token(t)),
    );
    Ok(tokens.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform;

    #[test]
    fn targets_parse() {
        let t = targets(&DataDir::open(None).unwrap()).unwrap();
        assert!(t.early_config.contains("{{root_uuid}}"));
        let x86 = targets_for(t.target, platform::lookup("x86_64").unwrap()).unwrap();
        let formats: Vec<_> = x86.iter().map(|t| t.format.as_str()).collect();
        assert_eq!(formats, ["i386-pc", "x86_64-efi"]);
        assert_eq!(x86[0].firmware, Firmware::Bios);
        assert_eq!(x86[1].esp_path.as_deref(), Some("EFI/BOOT/BOOTX64.EFI"));
    }

    #[test]
    fn arm64_gets_only_uefi_grub_as_bootaa64() {
        let data = DataDir::open(None).unwrap();
        let arm = platform::lookup("arm64").unwrap();
        let arm_targets = targets_for(targets(&data).unwrap().target, arm).unwrap();
        assert_eq!(arm_targets.len(), 1);
        assert_eq!(arm_targets[0].format, "arm64-efi");
        assert_eq!(arm_targets[0].firmware, Firmware::Uefi);
        assert_eq!(
            esp_paths(&data, arm).unwrap(),
            ["EFI/BOOT/BOOTAA64.EFI"],
            "the removable-media path for arm64"
        );
    }

    #[test]
    fn cmdline_has_the_architectures_consoles_and_only_its_parameters() {
        let data = DataDir::open(None).unwrap();
        let profile = crate::profile::Profiles::load(&data)
            .unwrap()
            .choose(None)
            .unwrap();
        let small = crate::sizeclass::lookup("small").unwrap();
        let x86 = kernel_cmdline(
            &data,
            "U",
            &small,
            &profile,
            platform::lookup("x86_64").unwrap(),
        )
        .unwrap();
        assert!(
            x86.starts_with("root=UUID=U ro console=tty0 console=ttyS0,115200n8 nvme_core"),
            "{x86}"
        );
        assert!(x86.contains(" clocksource=tsc tsc=reliable"), "{x86}");
        let arm = kernel_cmdline(
            &data,
            "U",
            &small,
            &profile,
            platform::lookup("arm64").unwrap(),
        )
        .unwrap();
        assert!(
            arm.starts_with(
                "root=UUID=U ro console=ttyAMA0,115200n8 console=ttyS0,115200n8 nvme_core"
            ),
            "{arm}"
        );
        for gone in ["tsc", "intel_idle", "processor.max_cstate"] {
            assert!(!arm.contains(gone), "{gone}: {arm}");
        }
        assert!(
            arm.contains("nohz_full=2-N") && arm.contains("irqaffinity=0-1"),
            "{arm}"
        );
    }
}
