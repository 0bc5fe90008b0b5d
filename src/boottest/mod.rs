//! `imgforge boot-test`: boot an image under QEMU and check the guest's report.
//!
//! For each firmware asked for: a qcow2 overlay over the image (which is
//! never written), a VM like a Nitro instance (NVMe disk, one NIC with DHCP
//! from QEMU's user-mode network, serial console), SeaBIOS or OVMF. The run
//! passes when the guest prints its `IMGFORGE-REPORT` line (see
//! [`report`]) and the report shows what the image's manifest promised
//! (see [`expect`]).
//!
//! ```text
//! preflight (tools, firmware files, format, GPT, bootloaders, manifest,
//!            the machine from the platform table, the accelerator)
//!   -> per firmware, the one attempt loop (attempts.rs) of plain boots
//!      (boot.rs) or launch rehearsals (ec2/): a fresh overlay -> QEMU ->
//!      wait for the report -> checks; one more attempt after a stall
//!   -> a Verdict the command prints (text or --json)
//! ```
//!
//! The engine takes a plain [`BootTestRequest`]; the flags live in
//! `src/commands/boot_test.rs`.

mod accel;
mod attempts;
mod boot;
pub mod ec2;
pub mod expect;
pub mod firmware;
pub mod image;
pub mod imds;
mod preflight;
mod qemu;
mod refusal;
pub mod report;
mod stall;
pub mod tpm;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::image::firmware::Firmware;
use crate::image::inspect::ImageInfo;
use crate::sys::interrupt::Interrupted;
use crate::sys::tool::ToolError;
use crate::units::ByteSize;
pub use accel::{AccelChoice, AccelDecision};
pub use attempts::{Attempt, FirmwareResult, MAX_ATTEMPTS, Outcome};
pub use ec2::{RehearsalResult, RehearsalSummary};
pub use expect::expectations;
pub use image::{ImageError, QEMU_IMG, detect_format};
use qemu::QemuError;

/// What to boot and how: the engine's plain request (`imgforge boot-test`
/// builds it from its flags, see `src/commands/boot_test.rs`).
#[derive(Debug, Clone)]
pub struct BootTestRequest {
    /// The image to boot (raw, qcow2, vdi or vmdk). It is never written.
    pub image: PathBuf,
    /// The firmwares to boot with, in order. On an architecture without a
    /// BIOS, `Bios` is dropped when `Uefi` is asked for too, and is an
    /// error alone.
    pub firmwares: Vec<Firmware>,
    /// Virtual CPUs; `None`: the smallest vCPU count of the image's size class.
    pub smp: Option<u32>,
    /// Guest memory (a whole number of MiB).
    pub memory: ByteSize,
    /// How long each boot may take to reach the report line.
    pub timeout: Duration,
    /// Console silence before systemd after which a boot counts as stalled;
    /// `None`: no stall detection.
    pub stall: Option<Duration>,
    pub accel: AccelChoice,
    /// Where the raw serial console goes (every boot, one after the other).
    pub log: Option<PathBuf>,
    /// A launch rehearsal instead of a plain boot.
    pub ec2: Option<Ec2Request>,
    /// Boot with the firmware that enforces UEFI Secure Boot (UEFI only);
    /// the guest must report it enforced.
    pub secure_boot: bool,
    /// Attach a software TPM 2.0 (swtpm, SHA-256 bank; UEFI only); the guest
    /// must see a TPM 2.0 and the firmware's measured-boot event log.
    pub tpm: bool,
    /// `--secure-boot`: the owner's PK and KEK (generated for a family
    /// only once the image is known to be signed); the variable store gets
    /// the set upload ships ([`crate::secureboot::shipped`]). `None`: the
    /// distribution's enrolled store as it is.
    pub secure_boot_keys: Option<crate::secureboot::keys::KeySource>,
    /// Copy the UEFI variable store to this file after each UEFI boot (the
    /// last boot's stays).
    pub save_vars: Option<PathBuf>,
}

/// What a launch rehearsal (`--ec2`) adds to the request.
#[derive(Debug, Clone, Default)]
pub struct Ec2Request {
    /// The root volume's size; `None`: the image's size + 2 GiB.
    pub volume_size: Option<ByteSize>,
    /// User-data to launch with (at most [`ec2::USER_DATA_MAX_BYTES`]);
    /// `None`: the rehearsal's own script, which counts its runs.
    pub user_data: Option<Vec<u8>>,
    /// A command to run in the guest over SSH, reported, not judged.
    pub ssh_command: Option<String>,
}

impl BootTestRequest {
    fn memory_mib(&self) -> u32 {
        (self.memory.bytes() / ByteSize::MIB) as u32
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BootTestError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Qemu(#[from] QemuError),
    #[error(transparent)]
    Firmware(#[from] firmware::FirmwareError),
    #[error(transparent)]
    Tpm(#[from] tpm::TpmError),
    #[error("--secure-boot: the variable store: {0}")]
    SecureBoot(#[from] crate::secureboot::SecureBootError),
    #[error(
        "--tpm: boot/architectures.toml gives {0} no tpm_device: boot-test the image without --tpm"
    )]
    NoTpmDevice(String),
    #[error("--save-vars {path}: cannot write it")]
    SaveVars {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make a temporary directory")]
    TempDir(#[source] std::io::Error),
    #[error("the image's manifest names size class `{0}`, which this imgforge does not know")]
    UnknownClass(String),
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
    #[error("{failed} did not pass (details above)")]
    Failed { failed: String },
    #[error("launch rehearsal: {0}")]
    Ec2(String),
    #[error("{0} machines have no BIOS: boot the image with --firmware uefi")]
    NoBios(String),
    #[error("{0}")]
    Accel(String),
    #[error(
        "--secure-boot and --tpm boot UEFI only (as EC2's NitroTPM): leave out --firmware bios"
    )]
    SecureBootNeedsUefi,
    #[error(
        "--secure-boot: {0} was not built with --secure-boot (its manifest names no signed \
         chain; the firmware would refuse its unsigned GRUB): rebuild it with imgforge build \
         --secure-boot"
    )]
    NotSigned(PathBuf),
}

impl BootTestError {
    /// The image or the flags were wrong before any guest started (not a
    /// disk image, a format or firmware it cannot boot): the command reports
    /// these as bad input.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            BootTestError::Image(
                ImageError::NotDiskImage { .. }
                    | ImageError::UnsupportedFormat { .. }
                    | ImageError::NoBootloader { .. }
            ) | BootTestError::NoBios(_)
                | BootTestError::UnknownClass(_)
                | BootTestError::SecureBootNeedsUefi
                | BootTestError::NotSigned(_)
        )
    }
}

/// What a boot test found: the plain boots' summary or the launch
/// rehearsals'. Both serialize to the `--json` document.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Verdict {
    Boots(BootSummary),
    Rehearsals(RehearsalSummary),
}

impl Verdict {
    pub fn passed(&self) -> bool {
        match self {
            Verdict::Boots(s) => s.passed,
            Verdict::Rehearsals(s) => s.passed,
        }
    }

    /// `Err(Failed)` naming what did not pass, when something did not.
    pub fn into_result(&self) -> Result<(), BootTestError> {
        let failed: Vec<String> = match self {
            Verdict::Boots(s) => s
                .results
                .iter()
                .filter(|r| !r.passed)
                .map(|r| r.firmware.to_string())
                .collect(),
            Verdict::Rehearsals(s) => s
                .results
                .iter()
                .filter(|r| !r.passed)
                .map(|r| format!("{} launch rehearsal", r.firmware))
                .collect(),
        };
        if failed.is_empty() {
            Ok(())
        } else {
            Err(BootTestError::Failed {
                failed: failed.join(" and "),
            })
        }
    }
}

/// The plain boots' results (`--json`'s document).
#[derive(Debug, Serialize)]
pub struct BootSummary {
    pub image: PathBuf,
    pub format: String,
    pub size_class: Option<String>,
    pub accel: AccelDecision,
    pub passed: bool,
    pub results: Vec<FirmwareResult>,
}

/// Boot-tests the image: preflight, then plain boots or launch rehearsals.
/// A boot that fails is in the verdict, not an `Err` (see
/// [`Verdict::into_result`]).
pub fn run(request: &BootTestRequest) -> Result<Verdict, BootTestError> {
    let p = preflight::run(request)?;
    let log = request
        .log
        .as_deref()
        .map(attempts::ConsoleLog::create)
        .transpose()?;
    if let Some(ec2) = &request.ec2 {
        let summary = ec2::run_all(request, ec2, &p, log.as_ref())?;
        return Ok(Verdict::Rehearsals(summary));
    }
    let results = boot::boot_all(request, &p, log.as_ref())?;
    Ok(Verdict::Boots(BootSummary {
        image: request.image.clone(),
        format: p.format.clone(),
        size_class: p.class.as_ref().map(|c| c.name.clone()),
        accel: p.decision.clone(),
        passed: results.iter().all(|r| r.passed),
        results,
    }))
}

/// Fails unless `image` (in `format`) is a GPT disk image; returns what
/// inspect reads from it. `scratch` holds a raw copy of non-raw images.
pub fn check_disk_image(
    image: &Path,
    format: &str,
    scratch: &Path,
) -> Result<ImageInfo, ImageError> {
    let raw = image::raw_view(image, format, scratch)?;
    let info = image::read(&raw, image);
    if raw != image {
        let _ = std::fs::remove_file(&raw);
    }
    info
}

fn progress(message: &str) {
    eprintln!("boot-test: {message}");
}
