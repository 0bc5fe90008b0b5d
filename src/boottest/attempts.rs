//! The one attempt loop that plain boots and launch rehearsals share, and
//! what one firmware's attempts add up to.
//!
//! Every attempt gets a fresh directory (overlay or volume, UEFI variable
//! store, firmware log) and its own handle on the console log. A guest
//! that stalls (see [`super::stall`]) gets one more attempt; anything else
//! ends the loop. A firmware passes only when its last attempt passed.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::qemu::QemuError;
use super::report::{Check, GuestReport};
use super::{BootTestError, progress};
use crate::image::firmware::Firmware;

/// Boots per firmware at most: a second one only when the first stalled.
pub const MAX_ATTEMPTS: u32 = 2;

/// The `--log` file: every attempt's console goes into it, in order.
pub struct ConsoleLog {
    file: File,
    path: PathBuf,
}

impl ConsoleLog {
    pub fn create(path: &Path) -> Result<Self, BootTestError> {
        let file = File::create(path).map_err(|source| QemuError::Log {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    /// A handle for one attempt's QEMU (writes go to the same file, in order).
    pub fn handle(&self) -> Result<File, BootTestError> {
        Ok(self.file.try_clone().map_err(|source| QemuError::Log {
            path: self.path.clone(),
            source,
        })?)
    }
}

/// What an attempt gets: its number (1, 2), a fresh directory and a handle
/// on the console log.
pub struct AttemptEnv<'a> {
    pub number: u32,
    pub dir: &'a Path,
    pub log: Option<File>,
}

/// Runs `attempt` for `firmware` until it does not stall (`stalled` says
/// why it did) or [`MAX_ATTEMPTS`] ran; `again` is the note printed before
/// the next one (given the stall and the next attempt's number). Every
/// attempt's result, in order.
pub fn each<T>(
    firmware: Firmware,
    scratch: &Path,
    log: Option<&ConsoleLog>,
    mut attempt: impl FnMut(AttemptEnv) -> Result<T, BootTestError>,
    stalled: impl Fn(&T) -> Option<String>,
    again: impl Fn(&str, u32) -> String,
) -> Result<Vec<T>, BootTestError> {
    let mut done = Vec::new();
    loop {
        let number = done.len() as u32 + 1;
        // A fresh overlay and variable store for every attempt.
        let dir = tempfile::Builder::new()
            .prefix(firmware.as_str())
            .tempdir_in(scratch)
            .map_err(BootTestError::TempDir)?;
        let log = log.map(ConsoleLog::handle).transpose()?;
        let result = attempt(AttemptEnv {
            number,
            dir: dir.path(),
            log,
        })?;
        let stall = stalled(&result);
        done.push(result);
        drop(dir);
        match stall {
            Some(why) if another_attempt(number, true) => progress(&again(&why, number + 1)),
            _ => return Ok(done),
        }
    }
}

/// Whether to boot again after attempt `number`: only after a stall, and
/// never more than [`MAX_ATTEMPTS`] in all.
fn another_attempt(number: u32, stalled: bool) -> bool {
    stalled && number < MAX_ATTEMPTS
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

/// The outcome of booting with one firmware.
#[derive(Debug, Clone, Serialize)]
pub struct FirmwareResult {
    pub firmware: Firmware,
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

/// The firmware's result from its attempts, in order: the last attempt's
/// result (a firmware passes only when its last boot passed), with every
/// attempt listed.
pub fn combine(runs: Vec<(FirmwareResult, Attempt)>) -> FirmwareResult {
    let attempts: Vec<Attempt> = runs.iter().map(|(_, a)| a.clone()).collect();
    let (mut result, last) = runs.into_iter().last().expect("at least one attempt");
    result.passed = result.passed && last.outcome == Outcome::Passed;
    result.stalled = last.outcome == Outcome::Stalled;
    result.attempt = last.attempt;
    result.total_seconds = attempts.iter().map(|a| a.seconds).sum();
    result.attempts = attempts;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(passed: bool, seconds: f64, failure: Option<&str>) -> FirmwareResult {
        FirmwareResult {
            firmware: Firmware::Bios,
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
        assert!(another_attempt(1, true));
        assert!(!another_attempt(1, false));
        assert!(!another_attempt(2, true));
    }

    #[test]
    fn the_loop_retries_a_stall_once_with_a_fresh_directory() {
        let scratch = tempfile::tempdir().unwrap();
        let mut dirs = Vec::new();
        let runs = each(
            Firmware::Uefi,
            scratch.path(),
            None,
            |env| {
                assert!(env.dir.is_dir());
                dirs.push(env.dir.to_path_buf());
                Ok(env.number)
            },
            |_| Some("silence".to_string()),
            |why, next| format!("{why}: attempt {next}"),
        )
        .unwrap();
        assert_eq!(runs, [1, 2]);
        assert_ne!(dirs[0], dirs[1]);
        assert!(
            dirs.iter().all(|d| !d.exists()),
            "each directory is removed"
        );
        let once = each(
            Firmware::Bios,
            scratch.path(),
            None,
            |env| Ok(env.number),
            |_| None,
            |_, _| unreachable!(),
        )
        .unwrap();
        assert_eq!(once, [1]);
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
        assert_eq!(json["firmware"], "bios");
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
}
