//! Everything that can be wrong before QEMU starts, and the machine the
//! image boots on: its architecture's row of the platform table
//! (`boot/architectures.toml`), the firmwares that row has, the size
//! class's vCPUs and the accelerator.

use std::path::Path;

use tempfile::TempDir;

use super::accel::{self, AccelChoice, AccelDecision};
use super::expect;
use super::firmware::{self, MachineFirmware, Ovmf};
use super::image::{self, QEMU_IMG, detect_format};
use super::qemu::Machine;
use super::report::Expectations;
use super::tpm;
use super::{BootTestError, BootTestRequest, progress};
use crate::image::firmware::Firmware;
use crate::image::inspect::ImageInfo;
use crate::platform::{self, Architecture, SecureBootMachine};
use crate::secureboot::{self, SecureBootError, efi::Variable, keys};
use crate::sizeclass::{self, SizeClass};
use crate::sys::interrupt;

/// Temporary directories of boot-test runs start with this.
const SCRATCH_PREFIX: &str = "imgforge-boot-test-";

/// vCPUs when neither the request nor a size class says.
const DEFAULT_VCPUS: u32 = 4;

/// What the preflight found: everything a boot of any firmware needs.
pub struct Preflight {
    /// The image's architecture: QEMU binary, machine, firmware.
    pub platform: &'static Architecture,
    /// The image's format (`raw`, `qcow2`, ...).
    pub format: String,
    pub info: ImageInfo,
    /// The firmwares to boot, those of the request that the machine has.
    pub firmwares: Vec<Firmware>,
    /// UEFI firmware files, when UEFI is among the firmwares.
    pub ovmf: Option<Ovmf>,
    /// `--secure-boot`: the machine of the firmware that enforces it (and
    /// `ovmf` is that firmware's).
    pub secure_boot: Option<&'static SecureBootMachine>,
    /// `--secure-boot` with the owner's keys: the Secure Boot variables
    /// written into each boot's copy of the enrolled store.
    pub secure_variables: Vec<Variable>,
    /// `--tpm`: each boot gets a fresh software TPM.
    pub tpm: bool,
    /// The size class the image's manifest names.
    pub class: Option<SizeClass>,
    pub smp: u32,
    pub decision: AccelDecision,
    /// Removed with everything in it when the run ends.
    pub scratch: TempDir,
}

/// The preflight's steps, in order.
pub fn run(request: &BootTestRequest) -> Result<Preflight, BootTestError> {
    QEMU_IMG.require()?;
    sweep_stale_scratch();
    let scratch = scratch_dir()?;
    let format = detect_format(&request.image)?;
    let (info, platform, firmwares, ovmf, secure_boot) =
        read_image(request, &format, scratch.path())?;
    let secure_variables = secure_variables(request, &info, ovmf.as_ref(), secure_boot)?;
    let class = size_class(&info)?;
    let smp = vcpus(request.smp, class.as_ref());
    if info.manifest.is_none() {
        progress("note: the image has no imgforge manifest; size-class checks are skipped");
    }
    let decision = accelerator(request.accel, platform)?;
    interrupt::check()?;
    Ok(Preflight {
        platform,
        format,
        info,
        firmwares,
        ovmf,
        secure_boot,
        secure_variables,
        tpm: request.tpm,
        class,
        smp,
        decision,
        scratch,
    })
}

impl Preflight {
    /// What a boot of `firmware` must show: the image's manifest's promises
    /// and what the request added (Secure Boot enforced).
    pub fn expectations(&self, firmware: Firmware) -> Expectations {
        let mut want = expect::expectations(firmware, self.smp, self.class.as_ref(), &self.info);
        want.secure_boot = self.secure_boot.is_some() && firmware == Firmware::Uefi;
        want.tpm = self.tpm && firmware == Firmware::Uefi;
        want
    }

    /// The machine for one boot of `firmware` from `disk` (a qcow2 in
    /// `dir`, which also holds the firmware's variable store and log).
    pub fn machine(
        &self,
        firmware: Firmware,
        disk: std::path::PathBuf,
        dir: &Path,
        memory_mib: u32,
    ) -> Result<Machine, BootTestError> {
        let firmware = match firmware {
            Firmware::Bios => MachineFirmware::Bios,
            Firmware::Uefi => MachineFirmware::uefi(
                self.ovmf.as_ref().expect("preflight found OVMF"),
                dir,
                self.secure_boot,
                &self.secure_variables,
            )?,
        };
        Ok(Machine {
            platform: self.platform,
            accel: self.decision.accel,
            cpu: self.decision.cpu.clone(),
            firmware,
            smp: self.smp,
            memory_mib,
            disk,
            disk_format: "qcow2".into(),
            firmware_log: Some(dir.join("firmware.log")),
            tpm_socket: None,
            launch: None,
        })
    }
}

/// The shipped Secure Boot variables for the owner's keys (the same set
/// `upload --uefi-data auto` registers: same keys, same enrolled store,
/// the image's build time), written at the image's build time.
fn secure_variables(
    request: &BootTestRequest,
    info: &ImageInfo,
    ovmf: Option<&Ovmf>,
    secure_boot: Option<&'static SecureBootMachine>,
) -> Result<Vec<Variable>, BootTestError> {
    let (Some(source), Some(ovmf), Some(_)) = (&request.secure_boot_keys, ovmf, secure_boot) else {
        return Ok(Vec::new());
    };
    let keys = source.keys().map_err(SecureBootError::from)?;
    if keys.generated_now {
        progress(&keys::generated_notice(&keys));
    }
    let time = info
        .manifest
        .as_ref()
        .map(|m| m.build_time)
        .unwrap_or_else(secureboot::now);
    let owner_db = secureboot::owner_db_certs(info.manifest.as_ref());
    let shipped = secureboot::shipped(keys, &ovmf.vars, time, owner_db)?;
    for line in shipped.describe() {
        progress(&line);
    }
    Ok(shipped.variables)
}

/// A fresh scratch directory, marked with this process's id (see
/// [`sweep_stale_scratch`]).
fn scratch_dir() -> Result<TempDir, BootTestError> {
    let scratch = tempfile::Builder::new()
        .prefix(SCRATCH_PREFIX)
        .tempdir()
        .map_err(BootTestError::TempDir)?;
    let _ = std::fs::write(scratch.path().join("pid"), std::process::id().to_string());
    Ok(scratch)
}

/// What [`read_image`] found: the image, its machine, the firmwares to
/// boot and the UEFI firmware files when UEFI is among them.
type ImageAndMachine = (
    ImageInfo,
    &'static Architecture,
    Vec<Firmware>,
    Option<Ovmf>,
    Option<&'static SecureBootMachine>,
);

/// Reads the image's GPT and manifest, the machine it boots on, the
/// firmwares to boot and their files (the host's missing tools first);
/// fails when a bootloader for one of them is missing.
fn read_image(
    request: &BootTestRequest,
    format: &str,
    scratch: &Path,
) -> Result<ImageAndMachine, BootTestError> {
    let image = request.image.as_path();
    let raw = image::raw_view(image, format, scratch)?;
    let info = image::read(&raw, image)?;
    let platform = machine_platform(&info);
    let firmwares = if request.secure_boot {
        secure_boot_firmwares(&request.firmwares, &info)?
    } else if request.tpm {
        uefi_only(&request.firmwares)?
    } else {
        firmwares_for(&request.firmwares, platform)?
    };
    platform.qemu_tool().require()?;
    if request.tpm {
        if platform.qemu.tpm_device.is_none() {
            return Err(BootTestError::NoTpmDevice(platform.name.clone()));
        }
        tpm::SWTPM.require()?;
        tpm::SWTPM_SETUP.require()?;
    }
    let (ovmf, secure_boot) = match (firmwares.contains(&Firmware::Uefi), request.secure_boot) {
        (false, _) => (None, None),
        (true, false) => (Some(firmware::find_ovmf(platform)?), None),
        (true, true) => {
            let (ovmf, secure) = firmware::find_secure_ovmf(platform)?;
            (Some(ovmf), Some(secure))
        }
    };
    for &firmware in &firmwares {
        image::require_bootloader(&raw, image, &info, firmware)?;
    }
    if raw != image {
        // Only the GPT and manifest were needed from the copy.
        let _ = std::fs::remove_file(&raw);
    }
    Ok((info, platform, firmwares, ovmf, secure_boot))
}

/// `--secure-boot` and `--tpm` boot UEFI only (NitroTPM needs UEFI).
fn uefi_only(asked: &[Firmware]) -> Result<Vec<Firmware>, BootTestError> {
    if !asked.contains(&Firmware::Uefi) {
        return Err(BootTestError::SecureBootNeedsUefi);
    }
    Ok(vec![Firmware::Uefi])
}

/// `--secure-boot` boots UEFI only, an image built with `--secure-boot`
/// (another one's unsigned GRUB is refused by the firmware: nothing to
/// learn from booting it).
fn secure_boot_firmwares(
    asked: &[Firmware],
    info: &ImageInfo,
) -> Result<Vec<Firmware>, BootTestError> {
    uefi_only(asked)?;
    if info
        .manifest
        .as_ref()
        .is_some_and(|m| m.secure_boot.is_none())
    {
        return Err(BootTestError::NotSigned(info.path.clone()));
    }
    Ok(vec![Firmware::Uefi])
}

/// The size class the image's manifest names, if it has a manifest.
fn size_class(info: &ImageInfo) -> Result<Option<SizeClass>, BootTestError> {
    match info.manifest.as_ref().map(|m| m.size_class.as_str()) {
        Some(name) => Ok(Some(
            sizeclass::lookup(name).map_err(|_| BootTestError::UnknownClass(name.into()))?,
        )),
        None => Ok(None),
    }
}

/// The vCPUs to boot with: asked for, else the class's smallest.
fn vcpus(asked: Option<u32>, class: Option<&SizeClass>) -> u32 {
    let smp = asked
        .or(class.map(|c| c.min_vcpus))
        .unwrap_or(DEFAULT_VCPUS);
    if let Some(class) = class.filter(|c| !c.fits(smp)) {
        progress(&format!(
            "note: size class {} is for {}-{} vCPUs; {smp} vCPUs is outside the class",
            class.name, class.min_vcpus, class.max_vcpus
        ));
    }
    smp
}

/// KVM (probed) for the host's own architecture, TCG for another's.
fn accelerator(
    choice: AccelChoice,
    platform: &'static Architecture,
) -> Result<AccelDecision, BootTestError> {
    let decision = if platform.is_host() {
        accel::choose(choice)?
    } else {
        accel::foreign(choice, platform)?
    };
    progress(&format!(
        "accelerator: {} ({}; -accel {})",
        decision.accel.name(),
        decision.reason,
        decision.qemu_accel
    ));
    Ok(decision)
}

/// Removes the temporary directories of runs that were killed (SIGKILL
/// leaves no chance to clean up; QEMU itself died with them).
fn sweep_stale_scratch() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(SCRATCH_PREFIX) {
            continue;
        }
        let Some(pid) = std::fs::read_to_string(entry.path().join("pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        else {
            continue;
        };
        let gone = matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        );
        if gone {
            log::info!("removing {} (left by a killed run)", entry.path().display());
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The machine to boot the image on: its architecture's (from the manifest
/// or the root partition type), else this host's.
fn machine_platform(info: &ImageInfo) -> &'static Architecture {
    match info
        .architecture
        .as_ref()
        .and_then(|a| platform::lookup(&a.name).ok())
    {
        Some(arch) => arch,
        None => {
            let host = platform::host()
                .unwrap_or_else(|| platform::lookup("x86_64").expect("the table has x86_64"));
            progress(&format!(
                "note: the image does not say its architecture; booting it as {}",
                host.name
            ));
            host
        }
    }
}

/// The firmwares asked for that the architecture has: BIOS with UEFI on a
/// machine without a BIOS is UEFI alone; BIOS alone there is an error.
fn firmwares_for(asked: &[Firmware], arch: &Architecture) -> Result<Vec<Firmware>, BootTestError> {
    if arch.bios || !asked.contains(&Firmware::Bios) {
        return Ok(asked.to_vec());
    }
    if !asked.contains(&Firmware::Uefi) {
        return Err(BootTestError::NoBios(arch.name.clone()));
    }
    progress(&format!(
        "note: {} machines have no BIOS; booting with UEFI only",
        arch.name
    ));
    Ok(vec![Firmware::Uefi])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_machine_without_bios_boots_uefi_or_refuses_bios_alone() {
        let x86 = platform::lookup("x86_64").unwrap();
        let both = [Firmware::Bios, Firmware::Uefi];
        assert_eq!(firmwares_for(&both, x86).unwrap(), both);
        let Some(no_bios) = platform::all().find(|a| !a.bios) else {
            return;
        };
        assert_eq!(firmwares_for(&both, no_bios).unwrap(), [Firmware::Uefi]);
        assert_eq!(
            firmwares_for(&[Firmware::Uefi], no_bios).unwrap(),
            [Firmware::Uefi]
        );
        assert!(matches!(
            firmwares_for(&[Firmware::Bios], no_bios),
            Err(BootTestError::NoBios(_))
        ));
    }
}
