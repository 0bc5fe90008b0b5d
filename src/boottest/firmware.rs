//! The machine's firmware: SeaBIOS, or UEFI (OVMF, AAVMF) found where the
//! architecture's row of boot/architectures.toml says distributions put
//! it, with a per-run copy of its variable store; with `--secure-boot` the
//! build that enforces Secure Boot and the machine it needs, and the
//! shipped Secure Boot variables written into the copy.

use std::path::{Path, PathBuf};

use crate::platform::{Architecture, SecureBootMachine};
use crate::secureboot::edk2::{self, Edk2Error};
use crate::secureboot::efi::Variable;

#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    #[error(
        "{arch} UEFI firmware for QEMU not found; looked for {looked}. Install the Debian \
         package `{package}` (apt-get install {package}), or set IMGFORGE_OVMF_CODE and \
         IMGFORGE_OVMF_VARS"
    )]
    OvmfMissing {
        arch: String,
        looked: String,
        package: String,
    },
    #[error(
        "--secure-boot: boot/architectures.toml has no [{0}.qemu.secure_boot] (the firmware \
         that enforces Secure Boot on {0}): boot-test the image without --secure-boot"
    )]
    NoSecureBoot(String),
    #[error("cannot write the Secure Boot variables into {path}: {source}")]
    SecureVars {
        path: PathBuf,
        #[source]
        source: Edk2Error,
    },
    #[error("cannot copy the OVMF variable store {path}")]
    OvmfVars {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// UEFI firmware: the read-only code and a template of the variable store
/// (each run gets its own copy of the variables).
#[derive(Debug, Clone)]
pub struct Ovmf {
    pub code: PathBuf,
    pub vars: PathBuf,
}

/// Finds the architecture's UEFI firmware (OVMF, AAVMF) where its row in
/// boot/architectures.toml says distributions put it;
/// `IMGFORGE_OVMF_CODE`/`IMGFORGE_OVMF_VARS` override the search.
pub fn find_ovmf(arch: &Architecture) -> Result<Ovmf, FirmwareError> {
    let from_env = (
        std::env::var_os("IMGFORGE_OVMF_CODE"),
        std::env::var_os("IMGFORGE_OVMF_VARS"),
    );
    let candidates: Vec<(PathBuf, PathBuf)> = match from_env {
        (Some(code), Some(vars)) => vec![(code.into(), vars.into())],
        _ => arch.qemu.firmware.clone(),
    };
    for (code, vars) in &candidates {
        if code.is_file() && vars.is_file() {
            return Ok(Ovmf {
                code: code.clone(),
                vars: vars.clone(),
            });
        }
    }
    Err(FirmwareError::OvmfMissing {
        arch: arch.name.clone(),
        package: arch.qemu.firmware_package.clone(),
        looked: candidates
            .iter()
            .map(|(c, _)| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// The architecture's Secure Boot firmware (`boot-test --secure-boot`):
/// its row's `[qemu.secure_boot]` and the first of its file pairs that
/// exists.
pub fn find_secure_ovmf(
    arch: &'static Architecture,
) -> Result<(Ovmf, &'static SecureBootMachine), FirmwareError> {
    let secure = arch
        .qemu
        .secure_boot
        .as_ref()
        .ok_or_else(|| FirmwareError::NoSecureBoot(arch.name.clone()))?;
    secure
        .firmware
        .iter()
        .find(|(code, vars)| code.is_file() && vars.is_file())
        .map(|(code, vars)| {
            let ovmf = Ovmf {
                code: code.clone(),
                vars: vars.clone(),
            };
            (ovmf, secure)
        })
        .ok_or_else(|| FirmwareError::OvmfMissing {
            arch: format!("{} (Secure Boot)", arch.name),
            package: arch.qemu.firmware_package.clone(),
            looked: secure
                .firmware
                .iter()
                .map(|(c, v)| format!("{} with {}", c.display(), v.display()))
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Which firmware the machine starts with.
#[derive(Debug, Clone)]
pub enum MachineFirmware {
    /// QEMU's default firmware (SeaBIOS).
    Bios,
    /// OVMF with a per-run copy of the variable store at `vars_copy`;
    /// `secure`: the Secure Boot firmware's machine (`--secure-boot`).
    Uefi {
        ovmf: Ovmf,
        vars_copy: PathBuf,
        secure: Option<&'static SecureBootMachine>,
    },
}

impl MachineFirmware {
    /// For UEFI, copies the variable store template into `dir`, with
    /// `variables` (the shipped Secure Boot set) written into the copy.
    pub fn uefi(
        ovmf: &Ovmf,
        dir: &Path,
        secure: Option<&'static SecureBootMachine>,
        variables: &[Variable],
    ) -> Result<Self, FirmwareError> {
        let vars_copy = dir.join("OVMF_VARS.fd");
        let copy_error = |source| FirmwareError::OvmfVars {
            path: ovmf.vars.clone(),
            source,
        };
        if variables.is_empty() {
            std::fs::copy(&ovmf.vars, &vars_copy).map_err(copy_error)?;
        } else {
            let mut store = std::fs::read(&ovmf.vars).map_err(copy_error)?;
            edk2::set(&mut store, variables).map_err(|source| FirmwareError::SecureVars {
                path: ovmf.vars.clone(),
                source,
            })?;
            std::fs::write(&vars_copy, store).map_err(copy_error)?;
        }
        Ok(MachineFirmware::Uefi {
            ovmf: ovmf.clone(),
            vars_copy,
            secure,
        })
    }
}
