//! Running QEMU: the command line for one boot, and a process that cannot
//! outlive imgforge.
//!
//! QEMU runs in its own process group (so a Ctrl-C reaches imgforge first),
//! is registered with [`crate::sys::interrupt::ChildGuard`], gets SIGKILL from the
//! kernel if imgforge itself dies (`PR_SET_PDEATHSIG`), and is stopped by the
//! [`Qemu`] guard's `Drop` on every other way out: report found, timeout,
//! error, Ctrl-C.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::firmware::MachineFirmware;
use crate::platform::Architecture;
use crate::sys::interrupt::{self, Interrupted};
use crate::sys::tool::HostTool;

/// The x86_64 QEMU (the KVM probe's); a machine's comes from its architecture.
pub const QEMU: HostTool = HostTool::new("qemu-system-x86_64", "qemu-system-x86");

/// How many lines of QEMU's own stderr an error carries.
const STDERR_TAIL: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error(
        "QEMU cannot find SeaBIOS (its BIOS firmware): install the Debian package `seabios` \
         (apt-get install seabios)\n--- QEMU said ---\n{tail}"
    )]
    SeabiosMissing { tail: String },
    #[error("could not start QEMU")]
    Spawn(#[source] std::io::Error),
    #[error(
        "QEMU failed to start the machine ({status}); command: {command}\n--- QEMU said ---\n{tail}"
    )]
    StartFailed {
        status: String,
        command: String,
        tail: String,
    },
    #[error("cannot write the console log {path}")]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// QEMU's `-accel` value. TCG runs single-threaded (all vCPUs in one
    /// host thread, round-robin) rather than QEMU's default multi-threaded
    /// TCG. On a 2-core host with the other core busy it was not slower:
    /// the image's kernel and initrd, 4 vCPUs, booted in a median 9.8 s
    /// single-threaded against 37.0 s multi-threaded (8 boots each, one run
    /// after the other, so under somewhat different load;
    /// tests/bench/stall-matrix.sh). It also takes
    /// away MTTCG's cross-thread kicks, the suspected (not reproduced) way an
    /// IPI to a halted tickless (nohz_full) vCPU could be missed for good.
    /// KVM is unchanged.
    pub fn qemu_accel(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => TCG_ACCEL,
        }
    }
}

/// `-accel` for TCG; see [`Accel::qemu_accel`].
pub const TCG_ACCEL: &str = "tcg,thread=single";

/// A virtual machine like an EC2 Nitro instance: the architecture's machine
/// (q35, virt), the disk on an NVMe controller, one NIC on user-mode
/// networking (DHCP from QEMU), the first serial port on QEMU's stdout, no
/// display.
#[derive(Debug, Clone)]
pub struct Machine {
    /// The architecture's row: QEMU binary, machine type, firmware devices.
    pub platform: &'static Architecture,
    pub accel: Accel,
    /// `-cpu` model.
    pub cpu: String,
    pub firmware: MachineFirmware,
    pub smp: u32,
    pub memory_mib: u32,
    pub disk: PathBuf,
    pub disk_format: String,
    /// Where the firmware's debug port (0x402) output goes, if anywhere.
    pub firmware_log: Option<PathBuf>,
    /// `--tpm`: swtpm's control socket, attached as the row's `tpm_device`.
    pub tpm_socket: Option<PathBuf>,
    /// A launch rehearsal (`boot-test --ec2`): its network instead of the
    /// plain user network, EC2's system identity. A guest reboot still ends
    /// QEMU (`-no-reboot`): the rehearsal powers the instance on again.
    pub launch: Option<Launch>,
}

/// What makes a QEMU guest look launched on EC2.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The `-netdev` value.
    pub netdev: String,
    /// The `-smbios type=1,...` value: EC2's firmware identity (cloud-init
    /// uses IMDSv2 tokens only on a platform its DMI says is AWS).
    pub system_identity: String,
}

/// No devices, config, display or monitor of QEMU's own choosing; the
/// serial port on stdio. Shared by the boot test and the KVM probe.
pub const HEADLESS_SERIAL_ARGS: [&str; 11] = [
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
    "-monitor",
    "none",
    "-no-reboot",
    "-chardev",
    "stdio,id=serial0,signal=off",
    "-serial",
    "chardev:serial0",
];

impl Machine {
    /// The QEMU program for this machine.
    pub fn program(&self) -> &'static str {
        &self.platform.qemu.binary
    }

    /// The QEMU arguments as one line, for tests' `contains` checks.
    #[cfg(test)]
    pub fn command_text(&self) -> String {
        self.args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |parts: &[&str]| args.extend(parts.iter().map(OsString::from));
        let machine = match &self.firmware {
            MachineFirmware::Uefi {
                secure: Some(secure),
                ..
            } => &secure.machine,
            _ => &self.platform.qemu.machine,
        };
        push(&[
            "-machine",
            machine,
            "-accel",
            self.accel.qemu_accel(),
            "-cpu",
            &self.cpu,
            "-smp",
            &self.smp.to_string(),
            "-m",
            &self.memory_mib.to_string(),
        ]);
        args.extend(HEADLESS_SERIAL_ARGS.iter().map(OsString::from));
        if let MachineFirmware::Uefi {
            secure: Some(secure),
            ..
        } = &self.firmware
        {
            args.extend(secure.args.iter().map(OsString::from));
        }
        let mut push = |parts: &[&str]| args.extend(parts.iter().map(OsString::from));
        if let MachineFirmware::Uefi {
            ovmf, vars_copy, ..
        } = &self.firmware
        {
            push(&[
                "-drive",
                &format!(
                    "if=pflash,unit=0,format=raw,readonly=on,file={}",
                    escape_opt(&ovmf.code)
                ),
                "-drive",
                &format!("if=pflash,unit=1,format=raw,file={}", escape_opt(vars_copy)),
            ]);
        }
        if let (Some(log), Some(device)) = (
            &self.firmware_log,
            &self.platform.qemu.firmware_debug_device,
        ) {
            push(&[
                "-chardev",
                // append: a rehearsal's second power-on keeps the first's lines.
                &format!("file,id=fwlog,path={},append=on", escape_opt(log)),
                "-device",
                &format!("{device},chardev=fwlog"),
            ]);
        }
        push(&[
            "-drive",
            &format!(
                "if=none,id=disk0,format={},file={},discard=unmap",
                self.disk_format,
                escape_opt(&self.disk)
            ),
            "-device",
            "nvme,serial=imgforge-boot-test,drive=disk0",
            "-netdev",
            self.launch
                .as_ref()
                .map_or("user,id=net0", |l| l.netdev.as_str()),
            "-device",
            "virtio-net-pci,netdev=net0",
        ]);
        if let Some(launch) = &self.launch {
            push(&["-smbios", &launch.system_identity]);
        }
        if let (Some(socket), Some(device)) = (&self.tpm_socket, &self.platform.qemu.tpm_device) {
            push(&[
                "-chardev",
                &format!("socket,id=chrtpm,path={}", escape_opt(socket)),
                "-tpmdev",
                "emulator,id=tpm0,chardev=chrtpm",
                "-device",
                &format!("{device},tpmdev=tpm0"),
            ]);
        }
        args
    }
}

/// QEMU's option syntax doubles a comma inside a value.
fn escape_opt(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

/// What waiting on the machine produced.
#[derive(Debug)]
pub enum Event {
    /// A complete console line (escape sequences and CRs removed).
    Line(String),
    /// QEMU exited (the guest powered off, rebooted or crashed).
    Exited(String),
    Deadline,
}

/// A running QEMU. Dropping it stops the whole process group.
pub struct Qemu {
    child: Child,
    _guard: interrupt::ChildGuard,
    lines: Receiver<String>,
    partial: Arc<Mutex<String>>,
    /// Bytes read from the serial console so far.
    console_bytes: Arc<AtomicU64>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    command: String,
    exited: Option<ExitStatus>,
}

impl Qemu {
    /// Starts QEMU with these arguments; the raw serial console is copied to
    /// `log` when given.
    pub fn spawn(program: &str, args: &[OsString], log: Option<File>) -> Result<Self, QemuError> {
        let program = crate::sys::tool::find_in_path(program).unwrap_or_else(|| program.into());
        let command_line = std::iter::once(program.as_os_str())
            .chain(args.iter().map(OsString::as_os_str))
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        log::info!("run: {command_line}");
        let mut command = Command::new(&program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // SAFETY: between fork and exec only async-signal-safe calls are made
        // (prctl, getppid, raise); nothing is allocated.
        unsafe {
            command.pre_exec(|| {
                // If imgforge dies without cleaning up (SIGKILL), so does QEMU.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() == 1 {
                    libc::raise(libc::SIGKILL);
                }
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(QemuError::Spawn)?;
        let guard = interrupt::ChildGuard::new(child.id());

        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(stderr) = child.stderr.take() {
            let tail = stderr_tail.clone();
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    log::debug!("qemu: {line}");
                    let mut tail = tail.lock().unwrap();
                    if tail.len() == STDERR_TAIL {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            });
        }
        let (sender, lines) = mpsc::channel();
        let partial = Arc::new(Mutex::new(String::new()));
        let console_bytes = Arc::new(AtomicU64::new(0));
        if let Some(stdout) = child.stdout.take() {
            let partial = partial.clone();
            let bytes = console_bytes.clone();
            thread::spawn(move || read_console(stdout, log, sender, partial, bytes));
        }
        Ok(Self {
            child,
            _guard: guard,
            lines,
            partial,
            console_bytes,
            stderr_tail,
            command: command_line,
            exited: None,
        })
    }

    /// The next console line, or why there is none before `deadline`; on
    /// Ctrl-C, QEMU is stopped and the shared [`Interrupted`] returned.
    pub fn next_event(&mut self, deadline: Instant) -> Result<Event, Interrupted> {
        loop {
            if interrupt::requested() {
                self.stop();
                return Err(Interrupted);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Event::Deadline);
            }
            let wait = (deadline - now).min(Duration::from_millis(100));
            match self.lines.recv_timeout(wait) {
                Ok(line) => return Ok(Event::Line(line)),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    // Console closed: QEMU is exiting. Reap it (bounded).
                    let until = Instant::now() + Duration::from_secs(5);
                    while self.exited.is_none() && Instant::now() < until {
                        if let Ok(Some(status)) = self.child.try_wait() {
                            self.exited = Some(status);
                        } else {
                            thread::sleep(Duration::from_millis(20));
                        }
                    }
                    self.stop();
                    return Ok(Event::Exited(self.exit_description()));
                }
            }
        }
    }

    /// The console's unfinished last line (a login prompt, say).
    pub fn partial_line(&self) -> String {
        self.partial.lock().unwrap().clone()
    }

    /// How many bytes the serial console has produced so far, unfinished
    /// lines included.
    pub fn console_bytes(&self) -> u64 {
        self.console_bytes.load(Ordering::Relaxed)
    }

    /// QEMU's own last stderr lines.
    pub fn stderr_tail(&self) -> String {
        self.stderr_tail
            .lock()
            .unwrap()
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn command_line(&self) -> &str {
        &self.command
    }

    pub fn exit_description(&self) -> String {
        use std::os::unix::process::ExitStatusExt;
        match self.exited {
            None => "still running".into(),
            Some(status) => match (status.code(), status.signal()) {
                (Some(code), _) => format!("exit status {code}"),
                (None, Some(signal)) => format!("killed by signal {signal}"),
                _ => status.to_string(),
            },
        }
    }

    /// Stops QEMU's process group: SIGTERM, SIGKILL after a grace period,
    /// then reaps it. Idempotent.
    pub fn stop(&mut self) {
        if self.exited.is_some() {
            // The leader is gone; sweep anything left in its group.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            return;
        }
        let child = &mut self.child;
        interrupt::terminate_group(child.id(), Duration::from_secs(5), || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        self.exited = self.child.wait().ok();
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Copies the raw console to the log and sends cleaned lines to the waiter.
fn read_console(
    mut stdout: impl Read,
    mut log: Option<File>,
    sender: mpsc::Sender<String>,
    partial: Arc<Mutex<String>>,
    bytes: Arc<AtomicU64>,
) {
    let mut buf = [0u8; 8192];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match stdout.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        bytes.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(file) = log.as_mut()
            && file.write_all(&buf[..n]).is_err()
        {
            log = None;
        }
        pending.extend_from_slice(&buf[..n]);
        while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            if sender.send(clean_console_line(&line)).is_err() {
                return;
            }
        }
        *partial.lock().unwrap() = clean_console_line(&pending);
    }
    if let Some(file) = log.as_mut() {
        let _ = file.flush();
    }
    if !pending.is_empty() {
        let _ = sender.send(clean_console_line(&pending));
    }
}

/// Removes terminal escape sequences (GRUB and OVMF draw with them), carriage
/// returns and other control characters from one console line.
pub fn clean_console_line(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.peek() {
                // CSI: ESC [ parameters, ending with a byte in @..~
                Some('[') => {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // Two-character sequences (ESC c, ESC =, ESC (B ...).
                Some('(') | Some(')') => {
                    chars.next();
                    chars.next();
                }
                Some(_) => {
                    chars.next();
                }
                None => {}
            },
            '\t' => out.push(' '),
            // Box drawing in the firmware's code page is not UTF-8.
            '\u{fffd}' => {}
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.trim_end().to_string()
}

/// For showing a console line: menus drawn with cursor moves leave long runs
/// of blanks once the moves are gone; keep lines short and readable.
pub fn squeeze(line: &str) -> String {
    const MAX_CHARS: usize = 240;
    let mut out = String::with_capacity(line.len().min(MAX_CHARS + 4));
    let mut run = 0;
    for c in line.chars() {
        if c == ' ' {
            run += 1;
            if run > 2 {
                continue;
            }
        } else {
            run = 0;
        }
        if out.chars().count() >= MAX_CHARS {
            out.push_str(" ...");
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boottest::firmware::Ovmf;

    #[test]
    fn console_lines_lose_escapes_and_crs() {
        assert_eq!(
            clean_console_line(b"\x1b[2J\x1b[01;01H\x1b[0m\x1b[1;37mGNU GRUB  version 2.06\r\n"),
            "GNU GRUB  version 2.06"
        );
        assert_eq!(
            clean_console_line(
                b"[  OK  ] Reached target \x1b[0;1;39mMulti-User System\x1b[0m.\r\n"
            ),
            "[  OK  ] Reached target Multi-User System."
        );
        assert_eq!(clean_console_line(b"a\tb\x07c"), "a bc");
        assert_eq!(
            squeeze(&clean_console_line(
                b"  *debian (small)          \xc4\xc4\xc4Booting"
            )),
            "  *debian (small)  Booting"
        );
        assert!(squeeze(&clean_console_line(&[b'x'; 1000])).len() < 300);
        let long = format!(
            "IMGFORGE-REPORT {{\"cmdline\":\"{}\"}}",
            "a  b ".repeat(100)
        );
        assert_eq!(
            clean_console_line(long.as_bytes()),
            long,
            "report lines stay whole"
        );
    }

    #[test]
    fn machine_looks_like_nitro() {
        let machine = Machine {
            platform: crate::platform::lookup("x86_64").unwrap(),
            accel: Accel::Tcg,
            cpu: "max".into(),
            firmware: MachineFirmware::Bios,
            smp: 4,
            memory_mib: 1024,
            disk: "/tmp/x,y/overlay.qcow2".into(),
            disk_format: "qcow2".into(),
            firmware_log: None,
            tpm_socket: None,
            launch: None,
        };
        let args: Vec<String> = machine
            .args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(
            joined.contains("-machine q35 -accel tcg,thread=single"),
            "{joined}"
        );
        assert!(joined.contains("-smp 4 -m 1024"), "{joined}");
        assert!(joined.contains("file=/tmp/x,,y/overlay.qcow2"), "{joined}");
        assert!(joined.contains("-device nvme,serial=imgforge-boot-test,drive=disk0"));
        assert!(joined.contains("-netdev user,id=net0"));
        assert!(!joined.contains("pflash"));
    }

    #[test]
    fn uefi_machine_has_pflash_code_read_only_and_its_own_vars() {
        let machine = Machine {
            platform: crate::platform::lookup("x86_64").unwrap(),
            accel: Accel::Kvm,
            cpu: "host".into(),
            firmware: MachineFirmware::Uefi {
                ovmf: Ovmf {
                    code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
                    vars: "/usr/share/OVMF/OVMF_VARS_4M.fd".into(),
                },
                vars_copy: "/tmp/run/OVMF_VARS.fd".into(),
                secure: None,
            },
            smp: 4,
            memory_mib: 1024,
            disk: "/tmp/run/overlay.qcow2".into(),
            disk_format: "qcow2".into(),
            firmware_log: None,
            tpm_socket: None,
            launch: None,
        };
        let joined = machine.command_text();
        assert!(joined.contains(
            "if=pflash,unit=0,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd"
        ));
        assert!(joined.contains("if=pflash,unit=1,format=raw,file=/tmp/run/OVMF_VARS.fd"));
        assert!(joined.contains("-cpu host"));
        assert!(joined.contains("-machine q35 -accel kvm "), "{joined}");
        assert!(!joined.contains("thread="), "{joined}");
    }

    #[test]
    fn arm64_machine_is_virt_with_aavmf_and_nvme() {
        let arm = crate::platform::lookup("arm64").unwrap();
        let machine = Machine {
            platform: arm,
            accel: Accel::Tcg,
            cpu: arm.qemu.tcg_cpu.clone().unwrap(),
            firmware: MachineFirmware::Uefi {
                ovmf: Ovmf {
                    code: "/usr/share/AAVMF/AAVMF_CODE.fd".into(),
                    vars: "/usr/share/AAVMF/AAVMF_VARS.fd".into(),
                },
                vars_copy: "/tmp/run/AAVMF_VARS.fd".into(),
                secure: None,
            },
            smp: 4,
            memory_mib: 1024,
            disk: "/tmp/run/overlay.qcow2".into(),
            disk_format: "qcow2".into(),
            firmware_log: Some("/tmp/run/firmware.log".into()),
            tpm_socket: None,
            launch: None,
        };
        assert_eq!(machine.program(), "qemu-system-aarch64");
        let joined = machine.command_text();
        assert!(
            joined.contains("-machine virt -accel tcg,thread=single -cpu cortex-a72"),
            "{joined}"
        );
        assert!(joined.contains("readonly=on,file=/usr/share/AAVMF/AAVMF_CODE.fd"));
        assert!(joined.contains("-device nvme,serial=imgforge-boot-test,drive=disk0"));
        assert!(
            !joined.contains("isa-debugcon"),
            "virt has no ISA bus: {joined}"
        );
    }
}
