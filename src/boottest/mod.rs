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
mod ec2;
pub mod image;
pub mod imds;
mod qemu;
pub mod report;
mod stall;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::image::inspect::ImageInfo;
use crate::platform::{self, Architecture};
use crate::sizeclass::{self, SizeClass};
use crate::sys::tool::ToolError;
pub use accel::AccelChoice;
pub use image::{ImageError, QEMU_IMG, detect_format};
use qemu::{Event, Machine, MachineFirmware, Qemu, QemuError};
use report::{Check, Expectations, GuestReport};
use stall::SilenceWatch;

/// Temporary directories of boot-test runs start with this.
const SCRATCH_PREFIX: &str = "imgforge-boot-test-";

/// Console lines a failure shows.
const TAIL_LINES: usize = 40;

/// Boots per firmware at most: a second one only when the first stalled.
pub const MAX_ATTEMPTS: u32 = 2;

/// Default for `--stall-seconds`.
pub const DEFAULT_STALL_SECONDS: u64 = 60;

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
    /// Seconds of silence on the serial console, before the guest's systemd
    /// starts, after which a boot counts as stalled. The stalled boot ends
    /// at once ("the guest stalled after: LAST LINE") and boot-test boots
    /// once more, with a fresh overlay; a firmware passes only if that
    /// second boot passes, so an image that stalls every time fails. Once
    /// systemd runs, only --timeout applies. A kernel hang report on the
    /// console at any time (a task blocked for minutes, an RCU stall, a
    /// lockup) ends the boot the same way ("the guest hung: LINE"). 0 turns
    /// the silence detection off.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_STALL_SECONDS)]
    pub stall_seconds: u64,
    /// Accelerator: KVM when a probe guest makes progress under it (auto), or forced.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: AccelChoice,
    /// Write the raw serial console here (both firmwares, one after the other).
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// Print the result as JSON on stdout (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// A launch rehearsal: boot like an EC2 launch (a metadata stand-in at
    /// 169.254.169.254 answering IMDSv2 with a fresh launch key, user-data,
    /// instance-id and local-hostname; a root volume larger than the image),
    /// log in over SSH as the image's default user and check sudo, volume
    /// growth, the partition table, user-data (once, not again after a
    /// reboot of the same instance), hostname, machine-id and host keys.
    #[arg(long)]
    pub ec2: bool,
    /// With --ec2: the root volume's size, e.g. 8G [default: the image's
    /// size + 2 GiB].
    #[arg(long, value_name = "SIZE", requires = "ec2")]
    pub volume_size: Option<String>,
    /// With --ec2: launch with this user-data (a `#!` script, cloud-config,
    /// anything up to EC2's 16 KiB) instead of the rehearsal's own script,
    /// which records its runs. The report shows its exit status and last
    /// output lines; a script that exits non-zero fails the rehearsal (not
    /// the boot)
    #[arg(long, value_name = "FILE", requires = "ec2")]
    pub user_data: Option<PathBuf>,
    /// With --ec2: run CMD in the booted guest over SSH as the default user
    /// (after the first-boot checks, before the reboot) and print its output
    /// and exit status; it does not decide the verdict
    #[arg(long, value_name = "CMD", requires = "ec2")]
    pub ssh_command: Option<String>,
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
    #[error("launch rehearsal: {0}")]
    Ec2(String),
    #[error("{0} machines have no BIOS: boot the image with --firmware uefi")]
    NoBios(String),
    #[error("{0}")]
    Accel(String),
}

/// How one boot ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The report arrived and every check passed.
    Passed,
    /// The report showed a broken promise, QEMU exited, or the timeout ran out.
    Failed,
    /// The console went silent before userspace (see `--stall-seconds`).
    Stalled,
}

/// One boot of one firmware.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    /// 1 for the first boot, 2 for the one after a stall.
    pub attempt: u32,
    pub outcome: Outcome,
    /// For a stall: the last thing the console showed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Seconds from QEMU's start to the report line or the failure.
    pub seconds: f64,
    /// The longest console silence before systemd started, in seconds.
    pub longest_silence_seconds: f64,
}

/// Whether to boot again after `attempts`: only after a stall, and never
/// more than [`MAX_ATTEMPTS`] in all.
fn another_attempt(attempts: &[Attempt]) -> bool {
    attempts.len() < MAX_ATTEMPTS as usize
        && attempts
            .last()
            .is_some_and(|a| a.outcome == Outcome::Stalled)
}

/// The firmware's result from its attempts, in order: the last attempt's
/// result (a firmware passes only when its last boot passed), with every
/// attempt listed.
fn combine(runs: Vec<(FirmwareResult, Attempt)>) -> FirmwareResult {
    let attempts: Vec<Attempt> = runs.iter().map(|(_, a)| a.clone()).collect();
    let (mut result, last) = runs.into_iter().last().expect("at least one attempt");
    result.passed = result.passed && last.outcome == Outcome::Passed;
    result.stalled = last.outcome == Outcome::Stalled;
    result.attempt = last.attempt;
    result.total_seconds = attempts.iter().map(|a| a.seconds).sum();
    result.attempts = attempts;
    result
}

/// The outcome of booting with one firmware.
#[derive(Debug, Clone, Serialize)]
pub struct FirmwareResult {
    pub firmware: String,
    pub passed: bool,
    /// Seconds from QEMU's start to the report line (or to the failure), in
    /// the attempt this result is from.
    pub seconds: f64,
    /// Which attempt this result is from: 1, or 2 when the first stalled.
    pub attempt: u32,
    /// The result's attempt stalled (`failures` says after what).
    pub stalled: bool,
    /// Seconds over every attempt.
    pub total_seconds: f64,
    /// Every boot of this firmware, in order.
    pub attempts: Vec<Attempt>,
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
    // Preflight: everything that can be wrong before QEMU starts.
    QEMU_IMG.require()?;
    sweep_stale_scratch();
    let scratch = tempfile::Builder::new()
        .prefix(SCRATCH_PREFIX)
        .tempdir()
        .map_err(BootTestError::TempDir)?;
    let _ = std::fs::write(scratch.path().join("pid"), std::process::id().to_string());
    let format = detect_format(&args.image)?;
    let raw = image::raw_view(&args.image, &format, scratch.path())?;
    let info = image::read(&raw, &args.image)?;
    let platform = machine_platform(&info);
    let firmwares = firmwares_for(args.firmware, platform)?;
    platform.qemu_tool().require()?;
    let ovmf = if firmwares.contains(&"uefi") {
        Some(qemu::find_ovmf(platform)?)
    } else {
        None
    };
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

    let decision = if platform.is_host() {
        accel::choose(args.accel)
    } else {
        accel::foreign(args.accel, platform)?
    };
    progress(&format!(
        "accelerator: {} ({}; -accel {})",
        decision.accel.name(),
        decision.reason,
        decision.qemu_accel
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

    if args.ec2 {
        let preflight = ec2::Preflight {
            platform,
            args,
            format: &format,
            firmwares,
            ovmf: ovmf.as_ref(),
            decision: &decision,
            smp,
            class: class.as_ref(),
            info: &info,
            scratch: scratch.path(),
        };
        return ec2::run_all(&preflight, log);
    }
    let stall = (args.stall_seconds > 0).then(|| Duration::from_secs(args.stall_seconds));
    let mut results = Vec::new();
    for &firmware in firmwares {
        let want = expectations(firmware, smp, class.as_ref(), &info);
        let mut runs: Vec<(FirmwareResult, Attempt)> = Vec::new();
        let mut attempts: Vec<Attempt> = Vec::new();
        loop {
            let attempt = runs.len() as u32 + 1;
            // A fresh overlay and variable store for every attempt.
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
                platform,
                accel: decision.accel,
                cpu: decision.cpu.clone(),
                firmware: machine_firmware,
                smp,
                memory_mib: args.memory,
                disk: overlay,
                disk_format: "qcow2".into(),
                firmware_log: Some(run_dir.path().join("firmware.log")),
                launch: None,
            };
            let label = if attempt == 1 {
                firmware.to_string()
            } else {
                format!("{firmware}, attempt {attempt} of {MAX_ATTEMPTS}")
            };
            if let Some(file) = log.as_mut() {
                let _ = writeln!(file, "\n===== imgforge boot-test: {label} =====");
            }
            progress(&format!(
                "{label}: booting under {} with {smp} vCPUs, {} MiB (timeout {} s, stall after {})",
                decision.accel.name(),
                args.memory,
                args.timeout,
                match stall {
                    Some(s) => format!("{} s of console silence", s.as_secs()),
                    None => "never (--stall-seconds 0)".into(),
                }
            ));
            let log_copy = match log.as_ref() {
                Some(file) => Some(file.try_clone().map_err(|source| QemuError::Log {
                    path: args.log.clone().unwrap_or_default(),
                    source,
                })?),
                None => None,
            };
            let (result, outcome) = boot_once(
                &machine,
                &want,
                Duration::from_secs(args.timeout),
                stall,
                attempt,
                log_copy,
            )?;
            match outcome.outcome {
                Outcome::Stalled => progress(&format!(
                    "{label}: STALLED after {:.1} s, no console output for {} s; last line: {}",
                    outcome.seconds,
                    args.stall_seconds,
                    outcome.after.as_deref().unwrap_or("")
                )),
                _ => progress(&format!(
                    "{label}: {} in {:.1} s",
                    if result.passed { "PASS" } else { "FAIL" },
                    result.seconds
                )),
            }
            attempts.push(outcome.clone());
            runs.push((result, outcome));
            drop(run_dir);
            if !another_attempt(&attempts) {
                break;
            }
            progress(&format!(
                "{firmware}: the guest stalled; booting once more (attempt {} of {MAX_ATTEMPTS}); \
                 the firmware passes only if that boot passes",
                attempts.len() + 1
            ));
        }
        results.push(combine(runs));
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

/// The firmwares asked for that the architecture has: `both` on a machine
/// without a BIOS is UEFI alone; `bios` there is an error.
fn firmwares_for(
    choice: FirmwareChoice,
    arch: &Architecture,
) -> Result<&'static [&'static str], BootTestError> {
    if arch.bios {
        return Ok(choice.list());
    }
    match choice {
        FirmwareChoice::Bios => Err(BootTestError::NoBios(arch.name.clone())),
        FirmwareChoice::Both => {
            progress(&format!(
                "note: {} machines have no BIOS; booting with UEFI only",
                arch.name
            ));
            Ok(FirmwareChoice::Uefi.list())
        }
        FirmwareChoice::Uefi => Ok(choice.list()),
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

/// Boots once and waits for the report, at most `timeout`, or until the
/// console has been silent for `stall` before userspace; QEMU is stopped on
/// every way out.
fn boot_once(
    machine: &Machine,
    want: &Expectations,
    timeout: Duration,
    stall: Option<Duration>,
    attempt: u32,
    log: Option<File>,
) -> Result<(FirmwareResult, Attempt), BootTestError> {
    let mut qemu = Qemu::spawn(machine.program(), &machine.args(), log)?;
    let started = Instant::now();
    let deadline = started + timeout;
    let mut watch = SilenceWatch::new(stall, started);
    let mut stalled_after: Option<String> = None;
    let mut tail: std::collections::VecDeque<String> =
        std::collections::VecDeque::with_capacity(TAIL_LINES);
    let mut lines_seen = 0usize;
    let mut result = FirmwareResult {
        firmware: want.firmware.clone(),
        passed: false,
        seconds: 0.0,
        attempt,
        stalled: false,
        total_seconds: 0.0,
        attempts: Vec::new(),
        accel: machine.accel.name().into(),
        smp: machine.smp,
        memory_mib: machine.memory_mib,
        report: None,
        checks: Vec::new(),
        failures: Vec::new(),
        console_tail: Vec::new(),
    };
    let attempt_of =
        |result: &FirmwareResult, watch: &SilenceWatch, after: Option<String>| Attempt {
            attempt,
            outcome: match (&after, result.passed) {
                (Some(_), _) => Outcome::Stalled,
                (None, true) => Outcome::Passed,
                (None, false) => Outcome::Failed,
            },
            after,
            seconds: result.seconds,
            longest_silence_seconds: watch.longest_silence(Instant::now()).as_secs_f64(),
        };
    let failure = loop {
        // Wake at least once a second to look at the console's byte count.
        let wake = watch
            .fires_at()
            .unwrap_or(deadline)
            .min(deadline)
            .min(Instant::now() + Duration::from_secs(1));
        let event = qemu.next_event(wake);
        let now = Instant::now();
        watch.observe_bytes(now, qemu.console_bytes());
        match event {
            Event::Line(line) => {
                lines_seen += 1;
                watch.observe_line(now, &line);
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
                    let attempt = attempt_of(&result, &watch, None);
                    return Ok((result, attempt));
                }
                if line.is_empty() && tail.back().is_some_and(String::is_empty) {
                    continue;
                }
                if tail.len() == TAIL_LINES {
                    tail.pop_front();
                }
                let squeezed = qemu::squeeze(&line);
                // A hung guest may keep printing (its hang detector's
                // reports), and a guest with a wrong clock boots on to fail
                // later: end the attempt as a stall all the same.
                let verdict = stall::doomed_by(&line, &squeezed);
                tail.push_back(squeezed);
                if let Some(verdict) = verdict {
                    stalled_after = tail.back().cloned();
                    break verdict;
                }
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
            Event::Deadline if now < deadline => {
                if watch.stalled(now) {
                    let partial = qemu.partial_line();
                    let last = if partial.is_empty() {
                        tail.iter()
                            .rev()
                            .find(|l| !l.is_empty())
                            .cloned()
                            .unwrap_or_else(|| "(nothing on the serial console)".into())
                    } else {
                        qemu::squeeze(&partial)
                    };
                    let silent = watch.silence(now).as_secs();
                    let hint = stage_hint(&tail, lines_seen);
                    let hint = hint
                        .trim_start()
                        .trim_start_matches('(')
                        .trim_end_matches(')');
                    stalled_after = Some(last.clone());
                    break format!(
                        "the guest stalled after: {last} (no console output for {silent} s{}{hint})",
                        if hint.is_empty() { "" } else { "; " }
                    );
                }
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
    result.stalled = stalled_after.is_some();
    let attempt = attempt_of(&result, &watch, stalled_after);
    Ok((result, attempt))
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
            "{}: {} in {:.1} s{} ({}, {} vCPUs, {} MiB)",
            r.firmware,
            if r.passed { "PASS" } else { "FAIL" },
            r.seconds,
            if r.attempts.len() > 1 {
                format!(" on attempt {} of {MAX_ATTEMPTS}", r.attempt)
            } else {
                String::new()
            },
            r.accel,
            r.smp,
            r.memory_mib
        );
        if r.attempts.len() > 1 {
            for a in &r.attempts {
                println!(
                    "  attempt {}: {} in {:.1} s{}",
                    a.attempt,
                    match a.outcome {
                        Outcome::Passed => "passed",
                        Outcome::Failed => "failed",
                        Outcome::Stalled => "STALLED",
                    },
                    a.seconds,
                    a.after
                        .as_ref()
                        .map(|after| format!(" after: {after}"))
                        .unwrap_or_default()
                );
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn result(passed: bool, seconds: f64, failure: Option<&str>) -> FirmwareResult {
        FirmwareResult {
            firmware: "bios".into(),
            passed,
            seconds,
            attempt: 0,
            stalled: false,
            total_seconds: 0.0,
            attempts: Vec::new(),
            accel: "tcg".into(),
            smp: 4,
            memory_mib: 1024,
            report: None,
            checks: Vec::new(),
            failures: failure.into_iter().map(String::from).collect(),
            console_tail: Vec::new(),
        }
    }

    fn attempt(n: u32, outcome: Outcome, seconds: f64) -> Attempt {
        Attempt {
            attempt: n,
            outcome,
            after: (outcome == Outcome::Stalled).then(|| "sched_clock: Marking stable".into()),
            seconds,
            longest_silence_seconds: 1.0,
        }
    }

    fn stalled_run(n: u32) -> (FirmwareResult, Attempt) {
        (
            result(
                false,
                61.0,
                Some("the guest stalled after: sched_clock: Marking stable"),
            ),
            attempt(n, Outcome::Stalled, 61.0),
        )
    }

    #[test]
    fn only_a_stall_earns_another_attempt_and_only_one() {
        assert!(!another_attempt(&[]));
        assert!(another_attempt(&[attempt(1, Outcome::Stalled, 61.0)]));
        assert!(!another_attempt(&[attempt(1, Outcome::Failed, 300.0)]));
        assert!(!another_attempt(&[attempt(1, Outcome::Passed, 40.0)]));
        assert!(!another_attempt(&[
            attempt(1, Outcome::Stalled, 61.0),
            attempt(2, Outcome::Stalled, 61.0)
        ]));
    }

    #[test]
    fn stalling_every_time_fails() {
        let combined = combine(vec![stalled_run(1), stalled_run(2)]);
        assert!(!combined.passed);
        assert!(combined.stalled);
        assert_eq!(combined.attempt, 2);
        assert_eq!(combined.attempts.len(), 2);
        assert_eq!(combined.total_seconds, 122.0);
        assert!(combined.failures[0].starts_with("the guest stalled after: "));
    }

    #[test]
    fn a_pass_after_a_stall_passes_and_shows_the_stall() {
        let combined = combine(vec![
            stalled_run(1),
            (result(true, 40.0, None), attempt(2, Outcome::Passed, 40.0)),
        ]);
        assert!(combined.passed);
        assert!(!combined.stalled);
        assert_eq!(combined.attempt, 2);
        assert_eq!(combined.seconds, 40.0);
        assert_eq!(combined.total_seconds, 101.0);
        let json = serde_json::to_value(&combined).unwrap();
        assert_eq!(json["attempt"], 2);
        assert_eq!(json["attempts"][0]["outcome"], "stalled");
        assert_eq!(json["attempts"][0]["after"], "sched_clock: Marking stable");
        assert_eq!(json["attempts"][1]["outcome"], "passed");
        assert!(json["attempts"][1].get("after").is_none());
    }

    #[test]
    fn a_stalled_attempt_never_counts_as_a_pass() {
        // Even a result marked passed cannot pass with a stalled last attempt.
        let combined = combine(vec![(
            result(true, 61.0, None),
            attempt(1, Outcome::Stalled, 61.0),
        )]);
        assert!(!combined.passed);
        let single = combine(vec![(
            result(true, 40.0, None),
            attempt(1, Outcome::Passed, 40.0),
        )]);
        assert!(single.passed);
        assert_eq!(single.attempt, 1);
        assert_eq!(single.attempts.len(), 1);
    }

    /// A real QEMU whose guest prints nothing (SeaBIOS, a blank disk: nothing
    /// to boot, nothing on the serial console) must end as a stall after the
    /// silence threshold, long before the timeout.
    #[test]
    fn a_silent_guest_ends_as_stalled_quickly() {
        if crate::sys::tool::find_in_path("qemu-system-x86_64").is_none() {
            eprintln!("skipped: qemu-system-x86_64 not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("blank.raw");
        std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
        let machine = Machine {
            platform: crate::platform::lookup("x86_64").unwrap(),
            accel: qemu::Accel::Tcg,
            cpu: "qemu64".into(),
            firmware: MachineFirmware::Bios,
            smp: 1,
            memory_mib: 256,
            disk,
            disk_format: "raw".into(),
            firmware_log: None,
            launch: None,
        };
        let want = Expectations {
            firmware: "bios".into(),
            smp: 1,
            class: None,
            manifest_cmdline: Vec::new(),
            root_uuid: None,
        };
        let started = Instant::now();
        let (result, attempt) = boot_once(
            &machine,
            &want,
            Duration::from_secs(120),
            Some(Duration::from_secs(3)),
            1,
            None,
        )
        .unwrap();
        let took = started.elapsed();
        assert_eq!(attempt.outcome, Outcome::Stalled, "{result:?}");
        assert!(!result.passed);
        assert!(result.stalled);
        assert!(took >= Duration::from_secs(3), "{took:?}");
        assert!(took < Duration::from_secs(30), "{took:?}");
        assert!(
            result.failures[0].starts_with("the guest stalled after: "),
            "{:?}",
            result.failures
        );
        assert!(attempt.longest_silence_seconds >= 3.0, "{attempt:?}");
    }
}
