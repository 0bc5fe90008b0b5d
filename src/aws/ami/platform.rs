//! What RegisterImage is told about the machine: the architecture and the
//! boot mode, both read from the image (its manifest, its root partition
//! type, its bootloaders), never assumed. A flag may say what the image
//! cannot; a flag that contradicts the image is an error, before anything
//! is uploaded.

use std::path::{Path, PathBuf};

use super::register::{AmiArchitecture, BootMode};
use crate::image::inspect::{self, ImageInfo};
use crate::platform::{self, Architecture};

#[derive(Debug, thiserror::Error)]
pub enum InstancePlatformError {
    #[error(
        "--arch {given} contradicts the image: {path} is {image} (from its {source_of}); \
         leave --arch out, or upload an image built for {given} (imgforge build --arch {given})"
    )]
    Contradicts {
        given: String,
        image: String,
        source_of: String,
        path: PathBuf,
    },
    #[error(
        "cannot tell the CPU architecture of {0}: it has no imgforge manifest and no root \
         partition type imgforge knows; pass --arch x86_64 or --arch arm64"
    )]
    Unknown(PathBuf),
    #[error(
        "--boot-mode {mode} needs a BIOS, and {path} is a {arch} image ({arch} machines boot \
         UEFI only): pass --boot-mode uefi or leave it out"
    )]
    NeedsBios {
        mode: &'static str,
        arch: String,
        path: PathBuf,
    },
    #[error(
        "boot/architectures.toml names EC2 architecture `{0}`, which RegisterImage's values \
         (x86_64, arm64) do not include"
    )]
    Ec2Name(String),
}

/// The architecture and boot mode an AMI is registered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registration {
    pub architecture: AmiArchitecture,
    pub boot_mode: BootMode,
}

/// Reads the image (GPT, ESP, manifest) and decides; an image that is not
/// a GPT disk tells nothing, and then the flags must.
pub fn decide_for(
    path: &Path,
    architecture: Option<&'static Architecture>,
    boot_mode: Option<BootMode>,
) -> Result<Registration, InstancePlatformError> {
    let info = match inspect::read_image(path) {
        Ok(info) => Some(info),
        Err(err) => {
            log::warn!("cannot read the image's partitions and manifest ({err})");
            None
        }
    };
    decide(path, info.as_ref(), architecture, boot_mode)
}

/// The decision, from what the image says (`info`) and the flags.
pub fn decide(
    path: &Path,
    info: Option<&ImageInfo>,
    architecture: Option<&'static Architecture>,
    boot_mode: Option<BootMode>,
) -> Result<Registration, InstancePlatformError> {
    let from_image = info.and_then(|i| i.architecture.as_ref());
    let arch = match (from_image, architecture) {
        (Some(found), given) => {
            let row = platform::lookup(&found.name).expect("inspect names table rows");
            if let Some(given) = given.filter(|g| g.ec2 != row.ec2) {
                return Err(InstancePlatformError::Contradicts {
                    given: given.name.clone(),
                    image: row.name.clone(),
                    source_of: found.source.clone(),
                    path: path.to_path_buf(),
                });
            }
            row
        }
        (None, Some(given)) => given,
        (None, None) => return Err(InstancePlatformError::Unknown(path.to_path_buf())),
    };
    let boot_mode = match boot_mode {
        // uefi-preferred is allowed: it means UEFI where there is no BIOS.
        Some(mode @ BootMode::LegacyBios) if !arch.bios => {
            return Err(InstancePlatformError::NeedsBios {
                mode: mode.as_str(),
                arch: arch.name.clone(),
                path: path.to_path_buf(),
            });
        }
        Some(mode) => mode,
        // No BIOS on the architecture: UEFI whatever the image carries.
        None if !arch.bios => BootMode::Uefi,
        None => boot_mode_from_bootloaders(path, info),
    };
    Ok(Registration {
        architecture: ec2_architecture(&arch.ec2)?,
        boot_mode,
    })
}

/// Both bootloaders: uefi-preferred; only UEFI: uefi; only BIOS, or an
/// image imgforge cannot read: legacy-bios, said out loud.
fn boot_mode_from_bootloaders(path: &Path, info: Option<&ImageInfo>) -> BootMode {
    let Some(info) = info else {
        log::warn!(
            "cannot tell which bootloaders {} has; registering it as legacy-bios \
(pass --boot-mode to choose)",
            path.display()
        );
        return BootMode::LegacyBios;
    };
    let modes = info.boot_modes;
    BootMode::from_bootloaders(modes.bios, modes.uefi).unwrap_or_else(|| {
        log::warn!(
            "{} has neither a BIOS nor a UEFI bootloader that imgforge recognizes; \
registering it as legacy-bios (pass --boot-mode to choose)",
            path.display()
        );
        BootMode::LegacyBios
    })
}

fn ec2_architecture(name: &str) -> Result<AmiArchitecture, InstancePlatformError> {
    name.parse()
        .map_err(|_| InstancePlatformError::Ec2Name(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::inspect::{BootModes, ImageArchitecture};

    fn image(arch: Option<&str>, source: &str, bios: bool, uefi: bool) -> ImageInfo {
        ImageInfo {
            path: "image.raw".into(),
            size_bytes: 2 << 30,
            disk_guid: String::new(),
            partitions: Vec::new(),
            boot_modes: BootModes { bios, uefi },
            architecture: arch.map(|name| ImageArchitecture {
                name: name.into(),
                source: source.into(),
            }),
            manifest: None,
        }
    }

    fn arch(name: &str) -> &'static Architecture {
        platform::lookup(name).unwrap()
    }

    fn path() -> &'static Path {
        Path::new("image.raw")
    }

    #[test]
    fn an_arm64_image_registers_arm64_uefi_without_flags() {
        let arm = image(Some("arm64"), "manifest", false, true);
        let decided = decide(path(), Some(&arm), None, None).unwrap();
        assert_eq!(decided.architecture, AmiArchitecture::Arm64);
        assert_eq!(decided.boot_mode, BootMode::Uefi);
        // From the root partition type alone, the same.
        let arm = image(Some("arm64"), "root partition type", false, true);
        let decided = decide(path(), Some(&arm), None, None).unwrap();
        assert_eq!(decided.architecture, AmiArchitecture::Arm64);
        // Agreeing flags are fine.
        let decided = decide(
            path(),
            Some(&arm),
            Some(arch("arm64")),
            Some(BootMode::Uefi),
        )
        .unwrap();
        assert_eq!(decided.boot_mode, BootMode::Uefi);
    }

    #[test]
    fn an_architecture_flag_that_contradicts_the_image_is_an_error() {
        let arm = image(Some("arm64"), "manifest", false, true);
        let err = decide(path(), Some(&arm), Some(arch("x86_64")), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--arch x86_64 contradicts the image")
                && err.contains("is arm64 (from its manifest)"),
            "{err}"
        );
        let x86 = image(Some("x86_64"), "manifest", true, true);
        let err = decide(path(), Some(&x86), Some(arch("arm64")), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is x86_64"), "{err}");
    }

    #[test]
    fn legacy_bios_is_refused_for_arm64() {
        let arm = image(Some("arm64"), "manifest", false, true);
        let err = decide(path(), Some(&arm), None, Some(BootMode::LegacyBios))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("legacy-bios") && err.contains("UEFI only"),
            "{err}"
        );
        // uefi-preferred means UEFI on a machine without a BIOS.
        let decided = decide(path(), Some(&arm), None, Some(BootMode::UefiPreferred)).unwrap();
        assert_eq!(decided.boot_mode, BootMode::UefiPreferred);
    }

    #[test]
    fn x86_images_keep_their_boot_modes() {
        let hybrid = image(Some("x86_64"), "manifest", true, true);
        let decided = decide(path(), Some(&hybrid), None, None).unwrap();
        assert_eq!(decided.architecture, AmiArchitecture::X86_64);
        assert_eq!(decided.boot_mode, BootMode::UefiPreferred);
        let bios = image(Some("x86_64"), "manifest", true, false);
        assert_eq!(
            decide(path(), Some(&bios), None, None).unwrap().boot_mode,
            BootMode::LegacyBios
        );
    }

    #[test]
    fn an_image_that_says_nothing_needs_the_flag() {
        let err = decide(path(), None, None, Some(BootMode::Uefi))
            .unwrap_err()
            .to_string();
        assert!(err.contains("pass --arch"), "{err}");
        let blank = image(None, "", false, false);
        assert!(decide(path(), Some(&blank), None, None).is_err());
        let decided = decide(path(), None, Some(arch("arm64")), None).unwrap();
        assert_eq!(
            decided,
            Registration {
                architecture: AmiArchitecture::Arm64,
                boot_mode: BootMode::Uefi
            },
            "arm64 boots UEFI even when the image cannot be read"
        );
    }
}
