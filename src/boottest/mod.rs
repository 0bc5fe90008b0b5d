//! `imgforge boot-test`: boot an image under QEMU and check the guest's report.
//!
//! For each firmware asked for: a qcow2 overlay over the image (which is
//! never written), a VM like a Nitro instance (NVMe disk, one NIC with DHCP
//! from QEMU's user-mode network, serial console), SeaBIOS or OVMF. The run
//! passes when the guest prints its `IMGFORGE-REPORT` line (see
//! [`report`]) and the report shows what the image's size class promised.
//!
//! ```text
//! preflight (tools, firmware files, format, GPT, bootloaders, manifest)
//!   -> accelerator (KVM probe)
//!   -> per firmware: overlay -> QEMU -> wait for the report -> checks
//!   -> summary (text or --json), exit status
//! ```

mod accel;
pub mod image;
mod qemu;
pub mod report;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::image::inspect::ImageInfo;
use crate::sizeclass::{self, SizeClass};
use crate::sys::tool::ToolError;
pub use accel::AccelChoice;
pub use image::{ImageError, QEMU_IMG, detect_format};
use qemu::{Event, Machine, MachineFirmware, Qemu, QemuError};
use report::{Check, Expectations, GuestReport};

/// Temporary directories of boot-test runs start with this.
const SCRATCH_PREFIX: &str = "imgforge-boot-test-";

/// Console lines a failure shows.
const TAIL_LINES: usize = 40;

#[derive(Debug, clap::Args)]
pub struct BootTestArgs {
    /// The image to boot (raw, qcow2, vdi or vmdk). It is never written.
    pub image: PathBuf,
    /// Firmware to boot with: SeaBIOS (bios), OVMF (uefi), or one after the other.
    #[arg(long, value_enum, default_value = "both")]
    pub firmware: FirmwareChoice,
    /// Virtual CPUs [default: the smallest vCPU count of the image's size class].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=255))]
    pub smp: Option<u32>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(256..))]
    pub memory: u32,
    /// Seconds each boot may take to reach the report line.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
    /// Accelerator: KVM when a probe guest makes progress under it (auto), or forced.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: AccelChoice,
    /// Write the raw serial console here (both firmwares, one after the other).
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// Print the result as JSON on stdout (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FirmwareChoice {
    Bios,
    Uefi,
    Both,
}

impl FirmwareChoice {
    fn list(self) -> &'static [&'static str] {
        match self {
            FirmwareChoice::Bios => &["bios"],
            FirmwareChoice::Uefi => &["uefi"],
            FirmwareChoice::Both => &["bios", "uefi"],
        }
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
    #[error("cannot make a temporary directory")]
    TempDir(#[source] std::io::Error),
    #[error("the image's manifest names size class `{0}`, which this imgforge does not know")]
    UnknownClass(String),
    #[error("interrupted; QEMU stopped, overlay removed")]
    Interrupted,
    #[error("{failed} did not pass (details above)")]
    Failed { failed: String },
}

/// The outcome of booting with one firmware.
#[derive(Debug, Clone, Serialize)]
pub struct FirmwareResult {
    pub firmware: String,
    pub passed: bool,
    /// Seconds from QEMU's start to the report line (or to the failure).
    pub seconds: f64,
    pub accel: String,
    pub smp: u32,
    pub memory_mib: u32,
    pub report: Option<GuestReport>,
    pub checks: Vec<Check>,
    pub failures: Vec<String>,
    /// The last console lines, when the run failed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub console_tail: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Summary<'a> {
    image: &'a Path,
    format: &'a str,
    size_class: Option<&'a str>,
    accel: &'a accel::AccelDecision,
    passed: bool,
    results: &'a [FirmwareResult],
}

pub fn run(args: &BootTestArgs) -> Result<(), BootTestError> {
    let firmwares = args.firmware.list();
    // Preflight: everything that can be wrong before QEMU starts.
    qemu::QEMU.require()?;
    QEMU_IMG.require()?;
    let ovmf = if firmwares.contains(&"uefi") {
        Some(qemu::find_ovmf()?)
    } else {
        None
    };
    sweep_stale_scratch();
    let scratch = tempfile::Builder::new()
        .prefix(SCRATCH_PREFIX)
        .tempdir()
        .map_err(BootTestError::TempDir)?;
    let _ = std::fs::write(scratch.path().join("pid"), std::process::id().to_string());
    let format = detect_format(&args.image)?;
    let raw = image::raw_view(&args.image, &format, scratch.path())?;
    let info = image::read(&raw, &args.image)?;
    for firmware in firmwares {
        image::require_bootloader(&raw, &args.image, &info, firmware)?;
    }
    if raw != args.image {
        // Only the GPT and manifest were needed from the copy.
        let _ = std::fs::remove_file(&raw);
    }
    let class = match info.manifest.as_ref().map(|m| m.size_class.as_str()) {
        Some(name) => {
            Some(sizeclass::lookup(name).map_err(|_| BootTestError::UnknownClass(name.into()))?)
        }
        None => None,
    };
    let smp = args
        .smp
        .or(class.as_ref().map(|c| c.min_vcpus))
        .unwrap_or(4);
    if let Some(class) = class.as_ref().filter(|c| !c.fits(smp)) {
        progress(&format!(
            "note: size class {} is for {}-{} vCPUs; {smp} vCPUs is outside the class",
            class.name, class.min_vcpus, class.max_vcpus
        ));
    }
    if info.manifest.is_none() {
        progress("note: the image has no imgforge manifest; size-class checks are skipped");
    }

    let decision = accel::choose(args.accel);
    progress(&format!(
        "accelerator: {} ({})",
        decision.accel.name(),
        decision.reason
    ));
    if interrupted() {
        return Err(BootTestError::Interrupted);
    }
    let mut log = match &args.log {
        Some(path) => Some(File::create(path).map_err(|source| QemuError::Log {
            path: path.clone(),
            source,
        })?),
        None => None,
    };

    let mut results = Vec::new();
    for &firmware in firmwares {
        let want = expectations(firmware, smp, class.as_ref(), &info);
        let run_dir = tempfile::Builder::new()
            .prefix(firmware)
            .tempdir_in(scratch.path())
            .map_err(BootTestError::TempDir)?;
        let overlay = image::overlay(&args.image, &format, run_dir.path())?;
        let machine_firmware = match firmware {
            "bios" => MachineFirmware::Bios,
            _ => MachineFirmware::uefi(ovmf.as_ref().expect("found above"), run_dir.path())?,
        };
        let machine = Machine {
            accel: decision.accel,
            cpu: decision.cpu.clone(),
            firmware: machine_firmware,
            smp,
            memory_mib: args.memory,
            disk: overlay,
            disk_format: "qcow2".into(),
            firmware_log: Some(run_dir.path().join("firmware.log")),
        };
        if let Some(file) = log.as_mut() {
            let _ = writeln!(file, "\n===== imgforge boot-test: {firmware} =====");
        }
        progress(&format!(
            "{firmware}: booting under {} with {smp} vCPUs, {} MiB (timeout {} s)",
            decision.accel.name(),
            args.memory,
            args.timeout
        ));
        let log_copy = match log.as_ref() {
            Some(file) => Some(file.try_clone().map_err(|source| QemuError::Log {
                path: args.log.clone().unwrap_or_default(),
                source,
            })?),
            None => None,
        };
        let result = boot_once(&machine, &want, Duration::from_secs(args.timeout), log_copy)?;
        progress(&format!(
            "{firmware}: {} in {:.1} s",
            if result.passed { "PASS" } else { "FAIL" },
            result.seconds
        ));
        results.push(result);
        drop(run_dir);
    }

    let passed = results.iter().all(|r| r.passed);
    if args.json {
        let summary = Summary {
            image: &args.image,
            format: &format,
            size_class: class.as_ref().map(|c| c.name.as_str()),
            accel: &decision,
            passed,
            results: &results,
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).expect("summary serializes")
        );
    } else {
        print_text(&results);
    }
    if passed {
        Ok(())
    } else {
        Err(BootTestError::Failed {
            failed: results
                .iter()
                .filter(|r| !r.passed)
                .map(|r| r.firmware.as_str())
                .collect::<Vec<_>>()
                .join(" and "),
        })
    }
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

fn interrupted() -> bool {
    crate::sys::interrupt::requested()
}

fn progress(message: &str) {
    eprintln!("boot-test: {message}");
}

pub fn expectations(
    firmware: &str,
    smp: u32,
    class: Option<&SizeClass>,
    info: &ImageInfo,
) -> Expectations {
    let manifest = info.manifest.as_ref();
    Expectations {
        firmware: firmware.to_string(),
        smp,
        class: class.cloned(),
        manifest_cmdline: manifest
            .map(|m| {
                m.kernel_cmdline
                    .split_whitespace()
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default(),
        root_uuid: manifest.and_then(root_uuid),
    }
}

/// The root filesystem's UUID: the partition named `root`, else the last
/// partition with a filesystem other than FAT.
fn root_uuid(manifest: &crate::image::manifest::Manifest) -> Option<String> {
    let parts = &manifest.disk.partitions;
    parts
        .iter()
        .find(|p| p.name.eq_ignore_ascii_case("root") && p.filesystem_uuid.is_some())
        .or_else(|| {
            parts.iter().rev().find(|p| {
                p.filesystem_uuid.is_some()
                    && !matches!(p.filesystem.as_deref(), Some("vfat" | "fat" | "fat32"))
            })
        })
        .and_then(|p| p.filesystem_uuid.clone())
}

/// Boots once and waits for the report; QEMU is stopped on every way out.
fn boot_once(
    machine: &Machine,
    want: &Expectations,
    timeout: Duration,
    log: Option<File>,
) -> Result<FirmwareResult, BootTestError> {
    let mut qemu = Qemu::spawn(&machine.args(), log)?;
    let started = Instant::now();
    let deadline = started + timeout;
    let mut tail: std::collections::VecDeque<String> =
        std::collections::VecDeque::with_capacity(TAIL_LINES);
    let mut lines_seen = 0usize;
    let mut result = FirmwareResult {
        firmware: want.firmware.clone(),
        passed: false,
        seconds: 0.0,
        accel: machine.accel.name().into(),
        smp: machine.smp,
        memory_mib: machine.memory_mib,
        report: None,
        checks: Vec::new(),
        failures: Vec::new(),
        console_tail: Vec::new(),
    };
    let failure = loop {
        match qemu.next_event(deadline) {
            Event::Line(line) => {
                lines_seen += 1;
                if let Some(report) = report::parse_line(&line) {
                    result.seconds = started.elapsed().as_secs_f64();
                    qemu.stop();
                    result.checks = report::check(&report, want);
                    result.failures = result
                        .checks
                        .iter()
                        .filter(|c| !c.ok)
                        .map(|c| format!("{}: expected {}, got {}", c.name, c.expected, c.actual))
                        .collect();
                    result.passed = result.failures.is_empty();
                    result.report = Some(report);
                    return Ok(result);
                }
                if line.is_empty() && tail.back().is_some_and(String::is_empty) {
                    continue;
                }
                if tail.len() == TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(qemu::squeeze(&line));
            }
            Event::Exited(status) => {
                let stderr = qemu.stderr_tail();
                if lines_seen == 0 && status != "exit status 0" {
                    if stderr.contains("could not load PC BIOS") {
                        return Err(QemuError::SeabiosMissing { tail: stderr }.into());
                    }
                    return Err(QemuError::StartFailed {
                        status,
                        command: qemu.command_line().to_string(),
                        tail: stderr,
                    }
                    .into());
                }
                break format!(
                    "QEMU exited ({status}) before the guest reported: the guest powered off, \
                     rebooted or crashed{}",
                    if stderr.is_empty() {
                        String::new()
                    } else {
                        format!("; QEMU said: {stderr}")
                    }
                );
            }
            Event::Deadline => {
                break format!(
                    "no IMGFORGE-REPORT line on the serial console within {} s{}",
                    timeout.as_secs(),
                    stage_hint(&tail, lines_seen)
                );
            }
            Event::Interrupted => return Err(BootTestError::Interrupted),
        }
    };
    result.seconds = started.elapsed().as_secs_f64();
    let partial = qemu.partial_line();
    qemu.stop();
    if !partial.is_empty() {
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(qemu::squeeze(&partial));
    }
    if lines_seen == 0 {
        // Nothing on the serial console: the firmware's debug port may say why.
        if let Some(path) = &machine.firmware_log {
            let text = std::fs::read(path).unwrap_or_default();
            let text = String::from_utf8_lossy(&text);
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(10);
            for line in &lines[from..] {
                tail.push_back(format!(
                    "[firmware] {}",
                    qemu::squeeze(&qemu::clean_console_line(line.as_bytes()))
                ));
            }
        }
    }
    result.failures.push(failure);
    result.console_tail = tail.into_iter().collect();
    Ok(result)
}

/// How far the boot got: the latest stage the console shows.
fn stage_hint(tail: &std::collections::VecDeque<String>, lines_seen: usize) -> &'static str {
    if lines_seen == 0 {
        return " (nothing at all on the serial console: the firmware found nothing to boot, or \
                the bootloader does not use the serial console)";
    }
    let kernel_timestamp = |l: &str| {
        l.strip_prefix('[')
            .map(|rest| rest.trim_start().starts_with(|c: char| c.is_ascii_digit()))
            .unwrap_or(false)
    };
    for line in tail.iter().rev() {
        if line.contains("login:") {
            return " (the guest reached a login prompt: is imgforge-report.service in the \
                    image and enabled?)";
        }
        if line.contains("Reached target")
            || line.contains("[  OK  ]")
            || line.contains("Starting ")
        {
            return " (systemd was still starting units)";
        }
        if line.contains("Run /init")
            || line.contains("Loading, please wait")
            || line.contains("Begin: ")
        {
            return " (the initramfs was running: is the root filesystem found by UUID?)";
        }
        if kernel_timestamp(line) {
            return " (the kernel was booting)";
        }
        if line.contains("GRUB") || line.contains("Booting `") || line.contains("blind mode") {
            return " (GRUB had started; the kernel printed nothing yet)";
        }
        if line.contains("BdsDxe") || line.contains("SeaBIOS") {
            return " (only the firmware had printed)";
        }
    }
    ""
}

fn print_text(results: &[FirmwareResult]) {
    for r in results {
        println!(
            "{}: {} in {:.1} s ({}, {} vCPUs, {} MiB)",
            r.firmware,
            if r.passed { "PASS" } else { "FAIL" },
            r.seconds,
            r.accel,
            r.smp,
            r.memory_mib
        );
        if let Some(report) = &r.report {
            println!("  kernel:   {}", report.kernel);
            println!("  cmdline:  {}", report.cmdline);
            println!(
                "  root:     {} ({}, UUID {})",
                report.root_source, report.root_fstype, report.root_uuid
            );
            println!(
                "  network:  {} {} via {} (dhcp: {})",
                report.net_iface, report.net_addr, report.net_gateway, report.dhcp
            );
            if !report.failed_units.is_empty() {
                println!("  note: failed units in the guest: {}", report.failed_units);
            }
        }
        for check in &r.checks {
            println!(
                "  {} {}: {}",
                if check.ok { "ok  " } else { "FAIL" },
                check.name,
                if check.ok {
                    check.actual.clone()
                } else {
                    format!("expected {}, got {}", check.expected, check.actual)
                }
            );
        }
        for failure in r.failures.iter().filter(|_| r.report.is_none()) {
            println!("  FAIL {failure}");
        }
        if !r.console_tail.is_empty() {
            println!("  --- last {} console lines ---", r.console_tail.len());
            for line in &r.console_tail {
                println!("  | {line}");
            }
        }
    }
}
