//! Plain boots: for each firmware, boot the image (one attempt loop, see
//! [`super::attempts`]), watch the serial console until the guest's report
//! line, a stall, QEMU's exit or the timeout, and check the report.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::time::{Duration, Instant};

use super::attempts::{
    self, Attempt, AttemptEnv, ConsoleLog, FirmwareResult, MAX_ATTEMPTS, Outcome,
};
use super::firmware::MachineFirmware;
use super::preflight::Preflight;
use super::qemu::{self, Event, Machine, Qemu, QemuError};
use super::refusal;
use super::report::{self, Expectations, GuestReport};
use super::stall::{self, SilenceWatch};
use super::tpm::SoftwareTpm;
use super::{BootTestError, BootTestRequest, image, progress};
use crate::image::firmware::Firmware;

/// Console lines a failure shows.
const TAIL_LINES: usize = 40;

/// Every firmware of the preflight, in order; one combined result each.
pub fn boot_all(
    request: &BootTestRequest,
    p: &Preflight,
    log: Option<&ConsoleLog>,
) -> Result<Vec<FirmwareResult>, BootTestError> {
    let mut results = Vec::new();
    for &firmware in &p.firmwares {
        let want = p.expectations(firmware);
        let runs = attempts::each(
            firmware,
            p.scratch.path(),
            log,
            |env| boot_attempt(request, p, firmware, &want, env),
            |(_, attempt)| {
                (attempt.outcome == Outcome::Stalled)
                    .then(|| attempt.after.clone().unwrap_or_default())
            },
            |_, next| {
                format!(
                    "{firmware}: the guest stalled; booting once more (attempt {next} of \
                     {MAX_ATTEMPTS}); the firmware passes only if that boot passes"
                )
            },
        )?;
        results.push(attempts::combine(runs));
    }
    Ok(results)
}

/// One attempt: an overlay, the machine, a boot, and a line on stderr.
fn boot_attempt(
    request: &BootTestRequest,
    p: &Preflight,
    firmware: Firmware,
    want: &Expectations,
    mut env: AttemptEnv,
) -> Result<(FirmwareResult, Attempt), BootTestError> {
    let overlay = image::overlay(&request.image, &p.format, env.dir)?;
    let mut machine = p.machine(firmware, overlay, env.dir, request.memory_mib())?;
    // Lives until this attempt's QEMU is gone.
    let software_tpm = if p.tpm {
        Some(SoftwareTpm::start(env.dir)?)
    } else {
        None
    };
    machine.tpm_socket = software_tpm.as_ref().map(|t| t.socket.clone());
    let label = if env.number == 1 {
        firmware.to_string()
    } else {
        format!("{firmware}, attempt {} of {MAX_ATTEMPTS}", env.number)
    };
    if let Some(file) = env.log.as_mut() {
        let _ = writeln!(file, "\n===== imgforge boot-test: {label} =====");
    }
    progress(&format!(
        "{label}: booting under {} with {} vCPUs, {} MiB (timeout {} s, stall after {})",
        p.decision.accel.name(),
        p.smp,
        request.memory_mib(),
        request.timeout.as_secs(),
        match request.stall {
            Some(s) => format!("{} s of console silence", s.as_secs()),
            None => "never (--stall-seconds 0)".into(),
        }
    ));
    let (result, attempt) = boot_once(
        &machine,
        want,
        request.timeout,
        request.stall,
        env.number,
        env.log,
    )?;
    if let (Some(to), MachineFirmware::Uefi { vars_copy, .. }) =
        (&request.save_vars, &machine.firmware)
    {
        save_vars(vars_copy, to)?;
    }
    match attempt.outcome {
        Outcome::Stalled => progress(&format!(
            "{label}: STALLED after {:.1} s, no console output for {} s; last line: {}",
            attempt.seconds,
            request.stall.map_or(0, |s| s.as_secs()),
            attempt.after.as_deref().unwrap_or("")
        )),
        _ => progress(&format!(
            "{label}: {} in {:.1} s",
            if result.passed { "PASS" } else { "FAIL" },
            result.seconds
        )),
    }
    Ok((result, attempt))
}

/// `--save-vars`: the store as the firmware left it, replaced whole.
fn save_vars(store: &std::path::Path, to: &std::path::Path) -> Result<(), BootTestError> {
    let error = |source| BootTestError::SaveVars {
        path: to.to_path_buf(),
        source,
    };
    let temp = to.with_extension("imgforge-tmp");
    std::fs::copy(store, &temp).map_err(error)?;
    std::fs::rename(&temp, to).map_err(error)
}

/// How watching the console ended.
enum End {
    Report(Box<GuestReport>),
    /// Why the attempt failed (or stalled: then the console's
    /// `stalled_after` says after what).
    Failure(String),
}

/// What the console showed so far.
#[derive(Default)]
struct Console {
    tail: VecDeque<String>,
    lines_seen: usize,
    /// For a stall: the last thing the console showed.
    stalled_after: Option<String>,
}

/// Boots once and waits for the report, at most `timeout`, or until the
/// console has been silent for `stall` before userspace; QEMU is stopped on
/// every way out.
pub(super) fn boot_once(
    machine: &Machine,
    want: &Expectations,
    timeout: Duration,
    stall: Option<Duration>,
    attempt: u32,
    log: Option<File>,
) -> Result<(FirmwareResult, Attempt), BootTestError> {
    let mut qemu = Qemu::spawn(machine.program(), &machine.args(), log)?;
    let started = Instant::now();
    let mut watch = SilenceWatch::new(stall, started);
    let mut console = Console::default();
    let mut result = empty_result(want.firmware, machine, attempt);
    let end = watch_console(&mut qemu, &mut watch, &mut console, started, timeout)?;
    result.seconds = started.elapsed().as_secs_f64();
    match end {
        End::Report(report) => {
            qemu.stop();
            judge(&mut result, *report, want);
        }
        End::Failure(failure) => {
            console.keep(qemu::squeeze(&qemu.partial_line()));
            qemu.stop();
            if console.lines_seen == 0 {
                console.add_firmware_log(machine);
            }
            result.failures.push(failure);
            result.console_tail = console.tail.iter().cloned().collect();
            result.stalled = console.stalled_after.is_some();
        }
    }
    let after = console.stalled_after;
    let attempt = Attempt {
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
    Ok((result, attempt))
}

fn empty_result(firmware: Firmware, machine: &Machine, attempt: u32) -> FirmwareResult {
    FirmwareResult {
        firmware,
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
    }
}

/// The report's checks decide the result.
fn judge(result: &mut FirmwareResult, report: GuestReport, want: &Expectations) {
    result.checks = report::check(&report, want);
    result.failures = result
        .checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{}: expected {}, got {}", c.name, c.expected, c.actual))
        .collect();
    result.passed = result.failures.is_empty();
    result.report = Some(report);
}

/// Reads the console until the report line or a reason to give up.
fn watch_console(
    qemu: &mut Qemu,
    watch: &mut SilenceWatch,
    console: &mut Console,
    started: Instant,
    timeout: Duration,
) -> Result<End, BootTestError> {
    let deadline = started + timeout;
    loop {
        // Wake at least once a second to look at the console's byte count.
        let wake = watch
            .fires_at()
            .unwrap_or(deadline)
            .min(deadline)
            .min(Instant::now() + Duration::from_secs(1));
        let event = qemu.next_event(wake)?;
        let now = Instant::now();
        watch.observe_bytes(now, qemu.console_bytes());
        match event {
            Event::Line(line) => {
                watch.observe_line(now, &line);
                if let Some(end) = console.line(line) {
                    return Ok(end);
                }
            }
            Event::Exited(status) => return Ok(End::Failure(exited(qemu, status, console)?)),
            Event::Deadline if now < deadline => {
                // Shim draws its refusal as a dialog that waits for a key:
                // an unfinished line, seen only here.
                if let Some(why) = refusal::refused_by(&qemu::squeeze(&qemu.partial_line())) {
                    return Ok(End::Failure(why));
                }
                if watch.stalled(now) {
                    return Ok(End::Failure(console.stall(qemu, watch, now)));
                }
            }
            Event::Deadline => {
                return Ok(End::Failure(format!(
                    "no IMGFORGE-REPORT line on the serial console within {} s{}",
                    timeout.as_secs(),
                    stage_hint(&console.tail, console.lines_seen)
                )));
            }
        }
    }
}

/// Why QEMU's exit ended the boot; an `Err` when QEMU never ran a guest.
fn exited(qemu: &Qemu, status: String, console: &Console) -> Result<String, BootTestError> {
    let stderr = qemu.stderr_tail();
    if console.lines_seen == 0 && status != "exit status 0" {
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
    Ok(format!(
        "QEMU exited ({status}) before the guest reported: the guest powered off, \
         rebooted or crashed{}",
        if stderr.is_empty() {
            String::new()
        } else {
            format!("; QEMU said: {stderr}")
        }
    ))
}

impl Console {
    /// Keeps a line for the tail (an unfinished one too), never more than
    /// [`TAIL_LINES`].
    fn keep(&mut self, line: String) {
        if line.is_empty() {
            return;
        }
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    /// Takes a complete console line: the report ends the watch, and so
    /// does a line that dooms the boot.
    fn line(&mut self, line: String) -> Option<End> {
        self.lines_seen += 1;
        if let Some(report) = report::parse_line(&line) {
            return Some(End::Report(Box::new(report)));
        }
        if line.is_empty() && self.tail.back().is_some_and(String::is_empty) {
            return None;
        }
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        let squeezed = qemu::squeeze(&line);
        // A refused chain is a verdict, not a stall: no second attempt.
        if let Some(why) = refusal::refused_by(&squeezed) {
            self.tail.push_back(squeezed);
            return Some(End::Failure(why));
        }
        // A hung guest may keep printing (its hang detector's reports), and
        // a guest with a wrong clock boots on to fail later: end the
        // attempt as a stall all the same.
        let verdict = stall::doomed_by(&line, &squeezed);
        self.tail.push_back(squeezed);
        let verdict = verdict?;
        self.stalled_after = self.tail.back().cloned();
        Some(End::Failure(verdict))
    }

    /// The stall's failure: the last thing the console showed, for how long
    /// it has been silent, and how far the boot got.
    fn stall(&mut self, qemu: &Qemu, watch: &SilenceWatch, now: Instant) -> String {
        let partial = qemu.partial_line();
        let last = if partial.is_empty() {
            self.tail
                .iter()
                .rev()
                .find(|l| !l.is_empty())
                .cloned()
                .unwrap_or_else(|| "(nothing on the serial console)".into())
        } else {
            qemu::squeeze(&partial)
        };
        let silent = watch.silence(now).as_secs();
        let hint = stage_hint(&self.tail, self.lines_seen);
        let hint = hint
            .trim_start()
            .trim_start_matches('(')
            .trim_end_matches(')');
        self.stalled_after = Some(last.clone());
        format!(
            "the guest stalled after: {last} (no console output for {silent} s{}{hint})",
            if hint.is_empty() { "" } else { "; " }
        )
    }

    /// Nothing on the serial console: the firmware's debug port may say why.
    fn add_firmware_log(&mut self, machine: &Machine) {
        let Some(path) = &machine.firmware_log else {
            return;
        };
        let text = std::fs::read(path).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(10);
        for line in &lines[from..] {
            self.tail.push_back(format!(
                "[firmware] {}",
                qemu::squeeze(&qemu::clean_console_line(line.as_bytes()))
            ));
        }
    }
}

/// How far the boot got: the latest stage the console shows.
fn stage_hint(tail: &VecDeque<String>, lines_seen: usize) -> &'static str {
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

#[cfg(test)]
mod tests {
    use super::*;

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
            firmware: crate::boottest::firmware::MachineFirmware::Bios,
            smp: 1,
            memory_mib: 256,
            disk,
            disk_format: "raw".into(),
            firmware_log: None,
            tpm_socket: None,
            launch: None,
        };
        let want = Expectations {
            firmware: Firmware::Bios,
            smp: 1,
            class: None,
            class_tokens: Vec::new(),
            manifest_cmdline: Vec::new(),
            root_uuid: None,
            secure_boot: false,
            tpm: false,
            tpm_tools: false,
            signed_modules: Vec::new(),
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
