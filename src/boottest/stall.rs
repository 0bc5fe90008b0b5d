//! Stall detection: a boot whose serial console goes silent for too long
//! before the guest's userspace starts.
//!
//! Firmware, GRUB, the kernel and the initramfs all write to the serial
//! console at a steady pace; a long silence there means the guest is stuck
//! (seen under TCG: a kernel spinning forever after `sched_clock: Marking
//! stable`), and waiting out the whole `--timeout` only delays the verdict.
//! Once systemd runs, quiet periods are normal (units waiting on the
//! network), so the watch is disarmed and only the timeout applies.
//!
//! Every byte counts as output, not only complete lines: GRUB's countdown and
//! a login prompt are unfinished lines.
//!
//! The watch is pure: it is told the time and the console's byte count, so
//! tests drive it with a fake clock.

use std::time::{Duration, Instant};

/// The kernel's own hang detectors, by the line each prints first: a guest
/// that prints one of these is stuck even though its console is not silent
/// (seen under TCG: writeback blocked for minutes in jbd2 while the host's
/// disk was saturated). What each means, for the report.
const HANG_SIGNATURES: &[(&str, &str)] = &[
    (
        "blocked for more than",
        "the kernel's hung-task detector: a task waited minutes, e.g. for disk I/O",
    ),
    (
        "self-detected stall",
        "an RCU stall: a vCPU stopped making progress",
    ),
    (
        "detected stalls on CPUs",
        "an RCU stall: a vCPU stopped making progress",
    ),
    ("soft lockup", "a soft lockup: a vCPU spun in the kernel"),
    (
        "hard LOCKUP",
        "a hard lockup: a vCPU stopped taking interrupts",
    ),
];

/// What a console line says about a hung guest, if anything.
pub fn hang_signature(line: &str) -> Option<&'static str> {
    HANG_SIGNATURES
        .iter()
        .find(|(signature, _)| line.contains(signature))
        .map(|(_, meaning)| *meaning)
}

/// Why an attempt that printed `line` cannot pass, if it cannot: a kernel
/// hang report or a miscalibrated clock. `shown` is the line as reports
/// show it.
pub fn doomed_by(line: &str, shown: &str) -> Option<String> {
    if let Some(meaning) = hang_signature(line) {
        return Some(format!("the guest hung: {shown} ({meaning})"));
    }
    clock_skew_signature(line).map(|skew| format!("the guest's clock is wrong: {skew}"))
}

/// The kernel's line when its TSC calibration against the PIT disagrees with
/// the HPET (or PM timer) by more than 10 %: it then keeps the PIT's figure.
const PIT_DEVIATES: &str = "PIT calibration deviates from ";
/// The clock-rate error a boot still passes with (its timeouts have margin).
const SKEW_TOLERATED: f64 = 1.5;

/// Whether a console line shows the guest's clock running at the wrong
/// rate, and by how much. Under TCG the emulator can be starved while the
/// kernel counts TSC ticks across a PIT interval; the kernel then takes a
/// wrong TSC frequency (seen: 439 MHz against the HPET's 2594 MHz), and with
/// the image's `tsc=reliable` no watchdog corrects it, so the guest's clock
/// runs several times too fast and its service timeouts expire early. No
/// real machine of the image's kind calibrates this way (EC2 hands the
/// frequency to the guest), so it is an emulator artifact: the attempt ends
/// and gets the retry, like a stall. Reproduced on demand by
/// `tests/bench/stall-matrix.sh KERNEL --starve 3` (2 and 6 of 30 boots in
/// two runs); QEMU 7.2's TCG offers no way to hand the guest its TSC rate
/// instead (see README, "The wrong clock, reproduced").
pub fn clock_skew_signature(line: &str) -> Option<String> {
    let rest = &line[line.find(PIT_DEVIATES)? + PIT_DEVIATES.len()..];
    let (reference, figures) = rest.split_once(':')?;
    let mut khz = figures.split_whitespace().map(|f| f.parse::<f64>());
    let (Some(Ok(pit)), Some(Ok(other))) = (khz.next(), khz.next()) else {
        return None;
    };
    if pit <= 0.0 || other <= 0.0 {
        return None;
    }
    let factor = if pit < other {
        other / pit
    } else {
        pit / other
    };
    // Within half again the boot's timeouts still hold: let it run.
    if factor < SKEW_TOLERATED {
        return None;
    }
    Some(format!(
        "the kernel calibrated its TSC at {:.0} MHz against the PIT while the {reference} \
         says {:.0} MHz, and kept the PIT's figure: its clock runs {:.1}x {} (QEMU was starved \
         during the calibration)",
        pit / 1000.0,
        other / 1000.0,
        factor,
        if pit < other { "too fast" } else { "too slow" },
    ))
}

/// Lines that show systemd (PID 1 of the real root) has started.
pub fn is_userspace_line(line: &str) -> bool {
    line.contains("systemd[1]:")
        || line.contains("Welcome to ")
        || line.contains("[  OK  ]")
        || line.contains("running in system mode")
}

#[derive(Debug, Clone)]
pub struct SilenceWatch {
    /// `None`: detection is off.
    threshold: Option<Duration>,
    last_activity: Instant,
    bytes: u64,
    userspace: bool,
    /// Longest silence seen while armed, finished gaps only.
    longest: Duration,
}

impl SilenceWatch {
    /// A watch that starts at `now` with nothing seen; `threshold` of `None`
    /// never reports a stall (the longest silence is still measured).
    pub fn new(threshold: Option<Duration>, now: Instant) -> Self {
        Self {
            threshold,
            last_activity: now,
            bytes: 0,
            userspace: false,
            longest: Duration::ZERO,
        }
    }

    /// The console has produced `total_bytes` bytes so far (as of `now`).
    pub fn observe_bytes(&mut self, now: Instant, total_bytes: u64) {
        if total_bytes != self.bytes {
            self.bytes = total_bytes;
            self.activity(now);
        }
    }

    /// A complete console line arrived at `now`.
    pub fn observe_line(&mut self, now: Instant, line: &str) {
        self.activity(now);
        if is_userspace_line(line) {
            self.userspace = true;
        }
    }

    fn activity(&mut self, now: Instant) {
        if !self.userspace {
            self.longest = self
                .longest
                .max(now.saturating_duration_since(self.last_activity));
        }
        self.last_activity = now;
    }

    /// True when the console has been silent for the threshold or longer
    /// and userspace has not started.
    pub fn stalled(&self, now: Instant) -> bool {
        match self.threshold {
            Some(threshold) => !self.userspace && self.silence(now) >= threshold,
            None => false,
        }
    }

    /// Seconds since the last output.
    pub fn silence(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_activity)
    }

    /// The longest silence before userspace, counting an ongoing one.
    pub fn longest_silence(&self, now: Instant) -> Duration {
        if self.userspace {
            self.longest
        } else {
            self.longest.max(self.silence(now))
        }
    }

    /// When `stalled` can first become true; `None` when it cannot.
    pub fn fires_at(&self) -> Option<Instant> {
        match self.threshold {
            Some(threshold) if !self.userspace => Some(self.last_activity + threshold),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn silence_before_userspace_is_a_stall_only_at_the_threshold() {
        let t0 = Instant::now();
        let mut watch = SilenceWatch::new(Some(secs(60)), t0);
        assert!(!watch.stalled(t0));
        watch.observe_line(t0 + secs(5), "[    1.97] sched_clock: Marking stable");
        assert!(
            !watch.stalled(t0 + secs(64)),
            "59 s of silence is not a stall"
        );
        assert!(watch.stalled(t0 + secs(65)), "60 s of silence is");
        assert_eq!(watch.fires_at(), Some(t0 + secs(65)));
        assert_eq!(watch.longest_silence(t0 + secs(65)), secs(60));
    }

    #[test]
    fn any_console_byte_restarts_the_clock() {
        let t0 = Instant::now();
        let mut watch = SilenceWatch::new(Some(secs(10)), t0);
        // GRUB's countdown: no newline, but the byte count grows.
        for i in 1..=5 {
            watch.observe_bytes(t0 + secs(8 * i), 100 * i);
            assert!(!watch.stalled(t0 + secs(8 * i + 9)));
        }
        // The same count again is not output.
        watch.observe_bytes(t0 + secs(45), 500);
        assert!(watch.stalled(t0 + secs(50)));
        assert_eq!(watch.longest_silence(t0 + secs(49)), secs(9));
    }

    #[test]
    fn nothing_at_all_is_a_stall_too() {
        let t0 = Instant::now();
        let watch = SilenceWatch::new(Some(secs(3)), t0);
        assert!(!watch.stalled(t0 + Duration::from_millis(2999)));
        assert!(watch.stalled(t0 + secs(3)));
    }

    #[test]
    fn userspace_disarms_the_watch() {
        let t0 = Instant::now();
        let mut watch = SilenceWatch::new(Some(secs(60)), t0);
        watch.observe_line(t0 + secs(20), "[   20.1] Run /init as init process");
        assert!(!watch.userspace, "the initramfs is still watched");
        watch.observe_line(t0 + secs(30), "Welcome to Debian GNU/Linux 12 (bookworm)!");
        assert!(watch.userspace);
        assert!(!watch.stalled(t0 + secs(600)));
        assert_eq!(watch.fires_at(), None);
        // Silence after userspace does not count as the longest silence.
        watch.observe_line(t0 + secs(500), "[  OK  ] Reached target multi-user.target");
        assert_eq!(watch.longest_silence(t0 + secs(501)), secs(20));
    }

    #[test]
    fn off_never_fires_but_still_measures() {
        let t0 = Instant::now();
        let mut watch = SilenceWatch::new(None, t0);
        watch.observe_line(t0 + secs(100), "x");
        assert!(!watch.stalled(t0 + secs(10_000)));
        assert_eq!(watch.fires_at(), None);
        assert_eq!(watch.longest_silence(t0 + secs(101)), secs(100));
    }

    #[test]
    fn userspace_lines() {
        assert!(is_userspace_line(
            "[    5.1] systemd[1]: systemd 252.39-1~deb12u1 running in system mode"
        ));
        assert!(is_userspace_line(
            "[  OK  ] Started systemd-journald.service"
        ));
        assert!(!is_userspace_line(
            "[    1.9] registered taskstats version 1"
        ));
        assert!(!is_userspace_line(
            "Begin: Loading essential drivers ... done."
        ));
    }

    #[test]
    fn the_kernels_hang_detectors_are_recognised_and_ordinary_lines_are_not() {
        assert!(
            hang_signature(
                "[  242.626080] INFO: task kworker/u8:4:202 blocked for more than 120 seconds."
            )
            .unwrap()
            .contains("hung-task")
        );
        assert!(
            hang_signature("[   30.1] rcu: INFO: rcu_sched self-detected stall on CPU").is_some()
        );
        assert!(
            hang_signature("[   31.2] watchdog: BUG: soft lockup - CPU#2 stuck for 22s!").is_some()
        );
        assert!(
            hang_signature("[    0.9] sched_clock: Marking stable (8000, 2)->(9000, 3)").is_none()
        );
        assert!(hang_signature("[  OK  ] Finished imgforge-grow-root.service").is_none());
    }

    #[test]
    fn a_miscalibrated_guest_clock_is_recognised_with_its_error() {
        // The line from a failed soak boot (UEFI, 4 vCPUs, TCG, busy host).
        let seen = clock_skew_signature(
            "[    0.513247] tsc: PIT calibration deviates from HPET: 439142 2594437",
        )
        .unwrap();
        assert!(
            seen.contains("439 MHz") && seen.contains("HPET says 2594 MHz"),
            "{seen}"
        );
        assert!(seen.contains("5.9x too fast"), "{seen}");
        let slow =
            clock_skew_signature("tsc: PIT calibration deviates from PMTIMER: 3000000 2000000");
        assert!(slow.unwrap().contains("1.5x too slow"));
        for fine in [
            "[    0.5] tsc: PIT calibration matches HPET. 1 loops",
            "[    0.0] tsc: Fast TSC calibration failed",
            "[    0.5] tsc: Detected 2594.437 MHz processor",
            "tsc: PIT calibration deviates from HPET: garbage",
            "tsc: PIT calibration deviates from HPET: 2300000 2594437",
        ] {
            assert!(clock_skew_signature(fine).is_none(), "{fine}");
        }
    }
}
