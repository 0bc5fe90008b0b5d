//! Choosing the accelerator: KVM only when a guest really runs under it.
//!
//! `/dev/kvm` existing proves little: on some hosts (nested virtualization
//! gone wrong, this project's build machine among them) a KVM guest starts
//! but crawls or hangs. The probe boots a 512-byte boot sector under KVM: it
//! prints a start marker on the serial port, counts down a loop of 2^26
//! iterations (well under a second on any working accelerator, about 0.15 s
//! even under TCG) and prints a done marker. KVM is used only when the done
//! marker arrives in time; otherwise TCG, with the reason.

use std::io::Write;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::qemu::{Event, HEADLESS_SERIAL_ARGS, Qemu};
use crate::sys::interrupt::Interrupted;

/// The probe's boot sector (x86 real mode, loaded at 0x7c00 by the BIOS):
///
/// ```text
///   cli; xor ax,ax; mov ds,ax; mov dx,0x3f8
///   mov si,START; call puts
///   mov ecx,0x04000000
/// spin: dec ecx; jnz spin
///   mov si,DONE; call puts
/// halt: hlt; jmp halt
/// puts: lodsb; test al,al; jz ret; out dx,al; jmp puts
/// ```
const BOOT_CODE: &[u8] = &[
    0xfa, 0x31, 0xc0, 0x8e, 0xd8, 0xba, 0xf8, 0x03, // cli; xor ax,ax; mov ds,ax; mov dx,0x3f8
    0xbe, 0x00, 0x00, 0xe8, 0x13, 0x00, // mov si,START (patched); call puts
    0x66, 0xb9, 0x00, 0x00, 0x00, 0x04, // mov ecx,0x04000000
    0x66, 0x49, 0x75, 0xfc, // spin: dec ecx; jnz spin
    0xbe, 0x00, 0x00, 0xe8, 0x03, 0x00, // mov si,DONE (patched); call puts
    0xf4, 0xeb, 0xfd, // halt: hlt; jmp halt
    0xac, 0x84, 0xc0, 0x74, 0x03, 0xee, 0xeb, 0xf8, 0xc3, // puts
];
const START: &str = "IMGFORGE-KVM-PROBE-START";
const DONE: &str = "IMGFORGE-KVM-PROBE-DONE";

/// How long the firmware may take to reach the boot sector under KVM.
const START_WITHIN: Duration = Duration::from_secs(8);
/// How long the counting loop may take once started.
const DONE_WITHIN: Duration = Duration::from_secs(3);

/// The probe disk: boot sector with both markers after the code, the boot
/// signature, padded to 1 MiB. The two `mov si` operands are patched to
/// where the markers land.
fn probe_disk() -> Vec<u8> {
    const LOAD: usize = 0x7c00;
    let mut sector = BOOT_CODE.to_vec();
    let start_at = sector.len();
    sector.extend_from_slice(START.as_bytes());
    sector.extend_from_slice(b"\r\n\0");
    let done_at = sector.len();
    sector.extend_from_slice(DONE.as_bytes());
    sector.extend_from_slice(b"\r\n\0");
    sector[9..11].copy_from_slice(&((LOAD + start_at) as u16).to_le_bytes());
    sector[25..27].copy_from_slice(&((LOAD + done_at) as u16).to_le_bytes());
    sector.resize(510, 0);
    sector.extend_from_slice(&[0x55, 0xaa]);
    sector.resize(1 << 20, 0);
    sector
}

/// Which accelerator the request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    /// KVM when a probe guest makes progress under it, else TCG.
    Auto,
    Kvm,
    Tcg,
}

/// The accelerator to use, and why.
#[derive(Debug, Clone, Serialize)]
pub struct AccelDecision {
    #[serde(serialize_with = "accel_name")]
    pub accel: super::qemu::Accel,
    /// The `-cpu` model to use with it.
    pub cpu: String,
    /// QEMU's `-accel` value (TCG is single-threaded, see `Accel::qemu_accel`).
    pub qemu_accel: &'static str,
    pub reason: String,
    /// Seconds the probe took (0 when there was none).
    pub probe_seconds: f64,
}

fn accel_name<S: serde::Serializer>(a: &super::qemu::Accel, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(a.name())
}

/// For an image of another architecture than the host's: TCG with the
/// architecture's CPU model (KVM runs only the host's own).
pub fn foreign(
    choice: AccelChoice,
    arch: &crate::platform::Architecture,
) -> Result<AccelDecision, super::BootTestError> {
    use super::qemu::Accel;
    let host = crate::platform::host().map_or(std::env::consts::ARCH, |h| h.name.as_str());
    if choice == AccelChoice::Kvm {
        return Err(super::BootTestError::Accel(format!(
            "--accel kvm cannot run a {} image on this {host} host (KVM runs only the \
             host's architecture): use --accel tcg or auto",
            arch.name
        )));
    }
    Ok(AccelDecision {
        accel: Accel::Tcg,
        cpu: arch.qemu.tcg_cpu.clone().unwrap_or_else(|| TCG_CPU.into()),
        qemu_accel: Accel::Tcg.qemu_accel(),
        reason: format!("a {} image on a {host} host: emulated", arch.name),
        probe_seconds: 0.0,
    })
}

/// The accelerator for an image of the host's architecture. Only Ctrl-C
/// during the probe fails it.
pub fn choose(choice: AccelChoice) -> Result<AccelDecision, Interrupted> {
    use super::qemu::Accel;
    Ok(match choice {
        AccelChoice::Tcg => AccelDecision {
            accel: Accel::Tcg,
            cpu: TCG_CPU.into(),
            qemu_accel: Accel::Tcg.qemu_accel(),
            reason: "asked for (--accel tcg)".into(),
            probe_seconds: 0.0,
        },
        AccelChoice::Kvm => AccelDecision {
            accel: Accel::Kvm,
            cpu: "host".into(),
            qemu_accel: Accel::Kvm.qemu_accel(),
            reason: "asked for (--accel kvm); not probed".into(),
            probe_seconds: 0.0,
        },
        AccelChoice::Auto => probe_or_tcg()?,
    })
}

/// KVM with the first CPU model a probe guest runs under, else TCG with
/// the reasons.
fn probe_or_tcg() -> Result<AccelDecision, Interrupted> {
    use super::qemu::Accel;
    let started = Instant::now();
    // The host's CPU model first; QEMU's default model when KVM
    // cannot present the host's (some nested setups refuse its MSRs).
    let mut reasons = Vec::new();
    for cpu in ["host", "qemu64"] {
        match probe_kvm(cpu) {
            Ok(()) => {
                let probe_seconds = started.elapsed().as_secs_f64();
                return Ok(AccelDecision {
                    accel: Accel::Kvm,
                    cpu: cpu.into(),
                    qemu_accel: Accel::Kvm.qemu_accel(),
                    reason: format!(
                        "a probe guest ran under KVM with -cpu {cpu} ({probe_seconds:.1} s)"
                    ),
                    probe_seconds,
                });
            }
            Err(ProbeFailure::Interrupted(interrupted)) => return Err(interrupted),
            Err(ProbeFailure::NoKvm(message)) => {
                reasons.push(format!("-cpu {cpu}: {message}"));
                break;
            }
            Err(ProbeFailure::Failed(message)) => reasons.push(format!("-cpu {cpu}: {message}")),
        }
    }
    Ok(AccelDecision {
        accel: Accel::Tcg,
        cpu: TCG_CPU.into(),
        qemu_accel: Accel::Tcg.qemu_accel(),
        reason: format!("KVM not used ({})", reasons.join("; ")),
        probe_seconds: started.elapsed().as_secs_f64(),
    })
}

/// The CPU model under TCG: every feature TCG can emulate.
pub const TCG_CPU: &str = "max";

/// Why a probe failed.
#[derive(Debug)]
pub enum ProbeFailure {
    /// No other CPU model can help: KVM itself is missing or unusable.
    NoKvm(String),
    /// This CPU model did not run; another may.
    Failed(String),
    Interrupted(Interrupted),
}

impl From<Interrupted> for ProbeFailure {
    fn from(interrupted: Interrupted) -> Self {
        ProbeFailure::Interrupted(interrupted)
    }
}

/// Ok when a guest with CPU model `cpu` makes progress under KVM; otherwise why not.
pub fn probe_kvm(cpu: &str) -> Result<(), ProbeFailure> {
    let kvm = std::path::Path::new("/dev/kvm");
    if !kvm.exists() {
        return Err(ProbeFailure::NoKvm("/dev/kvm does not exist".into()));
    }
    if let Err(err) = std::fs::OpenOptions::new().read(true).write(true).open(kvm) {
        return Err(ProbeFailure::NoKvm(format!("cannot open /dev/kvm: {err}")));
    }
    let dir = tempfile::Builder::new()
        .prefix("imgforge-kvm-probe-")
        .tempdir()
        .map_err(|e| ProbeFailure::NoKvm(format!("cannot make a temporary directory: {e}")))?;
    let disk = dir.path().join("probe.img");
    std::fs::File::create(&disk)
        .and_then(|mut f| f.write_all(&probe_disk()))
        .map_err(|e| ProbeFailure::NoKvm(format!("cannot write the probe disk: {e}")))?;
    let args: Vec<std::ffi::OsString> = ["-machine", "q35,accel=kvm", "-cpu", cpu, "-m", "64"]
        .iter()
        .chain(&HEADLESS_SERIAL_ARGS)
        .chain(&["-drive"])
        .map(Into::into)
        .chain([format!("if=ide,format=raw,file={}", disk.display()).into()])
        .collect();
    let mut qemu = Qemu::spawn(super::qemu::QEMU.name, &args, None)
        .map_err(|e| ProbeFailure::NoKvm(e.to_string()))?;
    let launched = Instant::now();
    let mut deadline = launched + START_WITHIN;
    let mut started_at = None;
    loop {
        match qemu.next_event(deadline)? {
            Event::Line(line) if line.contains(DONE) => {
                let spin = started_at.map(|s: Instant| s.elapsed()).unwrap_or_default();
                log::info!("KVM probe: loop done in {:.3} s", spin.as_secs_f64());
                return Ok(());
            }
            Event::Line(line) if line.contains(START) => {
                started_at = Some(Instant::now());
                deadline = Instant::now() + DONE_WITHIN;
            }
            Event::Line(_) => {}
            Event::Exited(status) => {
                let tail = qemu.stderr_tail().replace('\n', " ");
                return Err(ProbeFailure::Failed(format!(
                    "QEMU with KVM exited ({status}): {tail}"
                )));
            }
            Event::Deadline => {
                return Err(ProbeFailure::Failed(match started_at {
                    Some(_) => format!(
                        "a probe guest started under KVM but did not finish a loop TCG runs in \
                         about 0.15 s within {} s (guest hangs or crawls)",
                        DONE_WITHIN.as_secs()
                    ),
                    None => format!(
                        "a probe guest made no progress under KVM within {} s (firmware never \
                         reached the boot sector)",
                        START_WITHIN.as_secs()
                    ),
                }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_disk_is_a_boot_sector_with_markers_where_the_code_expects() {
        let disk = probe_disk();
        assert_eq!(disk.len(), 1 << 20);
        assert_eq!(&disk[510..512], &[0x55, 0xaa]);
        let at = |word: &[u8]| u16::from_le_bytes([word[0], word[1]]) as usize - 0x7c00;
        let start = at(&disk[9..11]);
        let done = at(&disk[25..27]);
        assert_eq!(start, BOOT_CODE.len());
        assert_eq!(&disk[start..start + START.len()], START.as_bytes());
        assert_eq!(&disk[done..done + DONE.len()], DONE.as_bytes());
        assert_eq!(disk[done - 1], 0, "START is NUL-terminated");
    }

    /// Runs the real probe where QEMU is installed: whatever the verdict,
    /// it must come back within its own limits and leave no QEMU behind.
    #[test]
    fn probe_answers_within_its_limits() {
        if crate::sys::tool::find_in_path("qemu-system-x86_64").is_none() {
            eprintln!("skipped: qemu-system-x86_64 not installed");
            return;
        }
        let started = Instant::now();
        let decision = choose(AccelChoice::Auto).unwrap();
        eprintln!("probe: {decision:?}");
        assert!(started.elapsed() < START_WITHIN + DONE_WITHIN + Duration::from_secs(8));
        assert!(!decision.reason.is_empty());
    }
}
