//! The rehearsal's instance: the guest under QEMU, its serial console, and
//! its SSH door on 127.0.0.1 (with the launch key).

use std::ffi::OsString;
use std::fs::File;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::super::qemu::{self, Event, Qemu};
use super::super::report::{self, GuestReport};
use super::super::{BootTestError, stall};
use crate::sys::interrupt::{self, Interrupted};

/// Why a rehearsal stopped before its last check: a failure (kept in the
/// result, with the checks so far) or Ctrl-C (the run ends).
#[derive(Debug)]
pub enum Stop {
    Failed(String),
    Interrupted(Interrupted),
}

impl From<String> for Stop {
    fn from(message: String) -> Self {
        Stop::Failed(message)
    }
}

impl From<&str> for Stop {
    fn from(message: &str) -> Self {
        Stop::Failed(message.into())
    }
}

impl From<Interrupted> for Stop {
    fn from(interrupted: Interrupted) -> Self {
        Stop::Interrupted(interrupted)
    }
}

/// How a rehearsal ends whose guest went silent while it restarted. Like
/// boot-test's stalls, it gets one more attempt with a fresh volume.
pub const STALLED_AFTER_REBOOT: &str = "the guest stalled after its reboot";
/// The kernel's last line before a restart.
const RESTART_LINE: &str = "reboot: Restarting system";

/// Console lines a failure shows.
const TAIL_LINES: usize = 40;

/// The guest, its metadata service and its SSH door, for one rehearsal.
///
/// A reboot is a power cycle: QEMU runs with `-no-reboot`, so the guest's
/// reset ends it, and the instance is started again on the same volume and
/// UEFI variable store. Under TCG, OVMF's warm-reset path stalled for
/// minutes after a reboot in several rehearsals here (edk2 has open reports
/// of warm-reset hangs); what the second boot must show (user-data not run
/// again, no failed units) lives on the volume either way.
pub struct Instance {
    pub stall: Option<Duration>,
    pub qemu: Qemu,
    /// What starts QEMU again after the guest's reset.
    pub program: &'static str,
    pub args: Vec<OsString>,
    /// The console log (each power-on writes to a copy of it).
    pub log: Option<File>,
    /// A reboot was asked for: QEMU's exit is the guest's reset.
    pub rebooting: bool,
    pub ssh_port: u16,
    pub key: PathBuf,
    pub user: String,
    pub tail: Vec<String>,
}

impl Instance {
    /// Waits for the guest's report line (multi-user reached, first-boot
    /// units done).
    pub fn wait_for_report(&mut self, deadline: Instant) -> Result<GuestReport, Stop> {
        // The last output while the guest restarts (from the kernel's
        // restart line until the next boot's userspace).
        let mut restarting: Option<Instant> = None;
        loop {
            let until = match (restarting, self.stall) {
                (Some(last), Some(stall)) => deadline.min(last + stall),
                _ => deadline,
            };
            match self.qemu.next_event(until)? {
                Event::Line(line) => {
                    if let Some(report) = report::parse_line(&line) {
                        return Ok(report);
                    }
                    if line.contains(RESTART_LINE) {
                        restarting = Some(Instant::now());
                    } else if restarting.is_some() {
                        restarting = (!stall::is_userspace_line(&line)).then(Instant::now);
                    }
                    if line.contains("Kernel panic - not syncing") {
                        self.tail.push(qemu::squeeze(&line));
                        return Err(format!("the guest's kernel panicked: {}", line.trim()).into());
                    }
                    if self.tail.len() == TAIL_LINES {
                        self.tail.remove(0);
                    }
                    self.tail.push(qemu::squeeze(&line));
                }
                Event::Exited(_) if self.rebooting => {
                    self.rebooting = false;
                    self.power_on()?;
                    restarting = Some(Instant::now());
                }
                Event::Exited(status) => {
                    return Err(format!("QEMU exited ({status}) before the guest reported").into());
                }
                Event::Deadline if restarting.is_some() && Instant::now() < deadline => {
                    let last = self.tail.last().cloned().unwrap_or_default();
                    return Err(format!(
                        "{STALLED_AFTER_REBOOT}: no console output for {} s after: {last}",
                        self.stall.map_or(0, |s| s.as_secs())
                    )
                    .into());
                }
                Event::Deadline => {
                    return Err("no IMGFORGE-REPORT line on the serial console in time".into());
                }
            }
        }
    }

    /// Asks the guest to reboot; [`Self::wait_for_report`] powers it on
    /// again when its reset ends QEMU.
    pub fn reboot(&mut self) {
        self.rebooting = true;
        // Once, not retried: the reboot drops the connection, so its exit
        // status says nothing, and a retry could reach the next boot.
        let _ = self.ssh_command("sudo -n systemctl reboot").output();
    }

    /// Starts QEMU again with the instance's arguments (same volume, same
    /// variable store, same ports).
    fn power_on(&mut self) -> Result<(), Stop> {
        let log = self.log.as_ref().and_then(|f| f.try_clone().ok());
        self.qemu = Qemu::spawn(self.program, &self.args, log)
            .map_err(|e| format!("cannot start the instance again after its reboot: {e}"))?;
        Ok(())
    }

    /// Runs `command` in the guest as the default user; its standard output.
    pub fn ssh(&self, command: &str) -> Result<String, Stop> {
        let out = self.ssh_output(command)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `command` in the guest: its exit status, and its standard
    /// output followed by its standard error.
    pub fn ssh_run(&self, command: &str) -> Result<(i32, String), Stop> {
        let out = self.ssh_output(command)?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Ok((out.status.code().unwrap_or(-1), text))
    }

    /// Retries while ssh itself fails (the guest's sshd may not listen yet).
    fn ssh_output(&self, command: &str) -> Result<std::process::Output, Stop> {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self
                .ssh_command(command)
                .output()
                .map_err(|e| format!("cannot run ssh: {e}"))?;
            // 255: ssh itself failed (connection, authentication).
            if out.status.code() != Some(255) {
                return Ok(out);
            }
            interrupt::check()?;
            if Instant::now() >= until {
                return Err(format!(
                    "ssh {}@127.0.0.1 -p {} failed: {}",
                    self.user,
                    self.ssh_port,
                    String::from_utf8_lossy(&out.stderr).trim()
                )
                .into());
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// `ssh` to the default user with the launch key, running `command`.
    fn ssh_command(&self, command: &str) -> Command {
        let mut ssh = Command::new("ssh");
        ssh.args([
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=10",
            "-i",
        ])
        .arg(&self.key)
        .arg("-p")
        .arg(self.ssh_port.to_string())
        .arg(format!("{}@127.0.0.1", self.user))
        .arg(command);
        ssh
    }
}

/// A TCP port on 127.0.0.1 that nothing listens on now.
pub fn free_port() -> Result<u16, BootTestError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(BootTestError::TempDir)?;
    Ok(listener
        .local_addr()
        .map_err(BootTestError::TempDir)?
        .port())
}
