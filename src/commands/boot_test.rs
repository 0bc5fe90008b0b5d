//! `imgforge boot-test`: the command line only. The flags become a plain
//! [`BootTestRequest`] for the engine ([`imgforge::boottest`]); this file
//! checks them, runs the engine and prints its verdict (text, or one JSON
//! document with `--json`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use imgforge::boottest::{
    self, AccelChoice, BootSummary, BootTestRequest, Ec2Request, FirmwareResult, MAX_ATTEMPTS,
    Outcome, RehearsalSummary, Verdict, ec2::USER_DATA_MAX_BYTES,
};
use imgforge::image::firmware::Firmware;
use imgforge::secureboot::keys::KeySource;
use imgforge::units::{ByteSize, parse_duration};

use super::{BadInput, secure_boot_keys};

#[derive(Debug, clap::Args)]
pub struct BootTestArgs {
    /// The image to boot (raw, qcow2, vdi or vmdk). It is never written.
    pub image: PathBuf,
    /// Firmware to boot with: SeaBIOS (bios), OVMF (uefi), or one after the other.
    #[arg(long, value_enum, default_value = "both")]
    pub firmware: FirmwareArg,
    /// Virtual CPUs [default: the smallest vCPU count of the image's size class].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=255))]
    pub smp: Option<u32>,
    /// Guest memory, at least 256M, in whole MiB (e.g. 1G, 1536M). A bare
    /// number below 64M still means MiB for one release, with a warning.
    #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = parse_memory)]
    pub memory: ByteSize,
    /// How long each boot may take to reach the report line (e.g. 300s,
    /// 10m; a bare number is seconds).
    #[arg(long, value_name = "DURATION", default_value = "300s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Console silence (e.g. 60s, 2m; a bare number is seconds), before the
    /// guest's systemd starts, after which a boot counts as stalled. The
    /// stalled boot ends at once ("the guest stalled after: LAST LINE") and
    /// boot-test boots once more, with a fresh overlay; a firmware passes
    /// only if that second boot passes, so an image that stalls every time
    /// fails. Once systemd runs, only --timeout applies. A kernel hang
    /// report on the console at any time (a task blocked for minutes, an
    /// RCU stall, a lockup) ends the boot the same way ("the guest hung:
    /// LINE"). 0 turns the silence detection off.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub stall_seconds: Duration,
    /// Accelerator: KVM when a probe guest makes progress under it (auto), or forced.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: AccelArg,
    /// Write the raw serial console here (both firmwares, one after the other).
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// Print the result as JSON on stdout (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Boot with the firmware that enforces UEFI Secure Boot (x86: OVMF's
    /// secboot build on q35 with SMM; arm64: AAVMF), UEFI only, and the
    /// variable store `upload` ships as UefiData: PK and KEK of the owner's
    /// (--secure-boot-keys), Microsoft's KEK CA and UEFI CA and the dbx from
    /// the distribution's enrolled store (OVMF_VARS_4M.ms.fd). Passes only
    /// when the guest reports Secure Boot enforced (the kernel's "Secure
    /// boot enabled"); a chain the firmware or shim refuses fails at once,
    /// naming why (shim's "Verification failed"). For images built with
    /// --secure-boot.
    #[arg(long)]
    pub secure_boot: bool,
    #[arg(long, value_name = "DIR", value_parser = secure_boot_keys::parse_dir,
          help = secure_boot_keys::HELP, requires = "secure_boot")]
    pub secure_boot_keys: Option<PathBuf>,
    /// The image family whose generated Secure Boot keys --secure-boot uses
    /// (as `upload --family`) [default: from the image's file name, as upload's].
    #[arg(long, value_name = "NAME", requires = "secure_boot")]
    pub family: Option<String>,
    /// After the UEFI boot, copy the firmware's variable store (edk2 format)
    /// to FILE: with --secure-boot it holds the Secure Boot variables the boot
    /// ran with (read it with `virt-fw-vars -i FILE --print`; `upload
    /// --uefi-data FILE` takes it).
    #[arg(long, value_name = "FILE")]
    pub save_vars: Option<PathBuf>,
    /// Attach a software TPM 2.0 (swtpm, the SHA-256 PCR bank only, as EC2's
    /// NitroTPM; x86: tpm-crb), UEFI only. Passes only when the guest sees a
    /// TPM 2.0 and the firmware's measured-boot event log
    /// (/sys/kernel/security/tpm0/binary_bios_measurements). Plain boots
    /// only (not with --ec2).
    #[arg(long)]
    pub tpm: bool,
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
    pub volume_size: Option<ByteSize>,
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

/// `--firmware`: one firmware or both, one after the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FirmwareArg {
    Bios,
    Uefi,
    Both,
}

impl FirmwareArg {
    fn firmwares(self) -> Vec<Firmware> {
        match self {
            FirmwareArg::Bios => vec![Firmware::Bios],
            FirmwareArg::Uefi => vec![Firmware::Uefi],
            FirmwareArg::Both => Firmware::ALL.to_vec(),
        }
    }
}

/// `--accel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelArg {
    /// KVM when a probe guest makes progress under it, else TCG.
    Auto,
    Kvm,
    Tcg,
}

impl From<AccelArg> for AccelChoice {
    fn from(arg: AccelArg) -> Self {
        match arg {
            AccelArg::Auto => AccelChoice::Auto,
            AccelArg::Kvm => AccelChoice::Kvm,
            AccelArg::Tcg => AccelChoice::Tcg,
        }
    }
}

/// The least guest memory boot-test starts a machine with.
const MIN_MEMORY: u64 = 256 * ByteSize::MIB;

/// `--memory`: a size in whole MiB, at least [`MIN_MEMORY`]. A bare number
/// below 64M is the old notation (MiB) and is read so, with a warning.
fn parse_memory(text: &str) -> Result<ByteSize, String> {
    let trimmed = text.trim();
    let size = match trimmed.parse::<u64>() {
        Ok(n) if n < 64 * ByteSize::MIB => {
            eprintln!(
                "imgforge: warning: --memory {n} is read as {n}M (MiB); write --memory {n}M: a \
                 bare number will mean bytes in the next release"
            );
            ByteSize(n.saturating_mul(ByteSize::MIB))
        }
        _ => trimmed.parse::<ByteSize>()?,
    };
    if size.bytes() < MIN_MEMORY {
        return Err(format!(
            "{text:?} is less than the 256M a guest needs (e.g. --memory 1G)"
        ));
    }
    if !size.bytes().is_multiple_of(ByteSize::MIB) {
        return Err(format!(
            "{text:?} is not a whole number of MiB (e.g. --memory 1G or 1536M)"
        ));
    }
    Ok(size)
}

impl BootTestArgs {
    /// The engine's request; bad input (a missing image, an unreadable
    /// --user-data, a --timeout of 0) is refused here, before any work.
    fn request(&self) -> Result<BootTestRequest, BadInput> {
        if let Err(err) = std::fs::metadata(&self.image) {
            return Err(BadInput::new(format!(
                "cannot read {}: {err}",
                self.image.display()
            )));
        }
        if self.timeout.is_zero() {
            return Err(BadInput::new(
                "--timeout must be longer than 0 s (e.g. --timeout 300s)",
            ));
        }
        if self.tpm && self.ec2 {
            return Err(BadInput::new(
                "--tpm is for plain boots: leave out --ec2 (the launch rehearsal has no TPM yet)",
            ));
        }
        let ec2 = if self.ec2 {
            Some(Ec2Request {
                volume_size: self.volume_size,
                user_data: self.user_data.as_deref().map(read_user_data).transpose()?,
                ssh_command: self.ssh_command.clone(),
            })
        } else {
            None
        };
        Ok(BootTestRequest {
            image: self.image.clone(),
            firmwares: self.firmware.firmwares(),
            smp: self.smp,
            memory: self.memory,
            timeout: self.timeout,
            stall: (!self.stall_seconds.is_zero()).then_some(self.stall_seconds),
            accel: self.accel.into(),
            log: self.log.clone(),
            ec2,
            secure_boot: self.secure_boot,
            tpm: self.tpm,
            secure_boot_keys: self.key_source()?,
            save_vars: self.save_vars.clone(),
        })
    }
}

impl BootTestArgs {
    /// `--secure-boot`'s keys: the user's own, else the image family's.
    fn key_source(&self) -> Result<Option<KeySource>, BadInput> {
        if !self.secure_boot {
            return Ok(None);
        }
        Ok(Some(match &self.secure_boot_keys {
            Some(dir) => KeySource::Own(secure_boot_keys::load(dir)?),
            None => KeySource::Family(secure_boot_keys::family(
                self.family.as_deref(),
                None,
                &self.image,
            )),
        }))
    }
}

/// `--user-data FILE`'s bytes, at most EC2's limit.
fn read_user_data(path: &std::path::Path) -> Result<Vec<u8>, BadInput> {
    let bytes = std::fs::read(path)
        .map_err(|e| BadInput::new(format!("--user-data {}: {e}", path.display())))?;
    if bytes.len() > USER_DATA_MAX_BYTES {
        return Err(BadInput::new(format!(
            "--user-data {}: {} bytes; EC2 accepts at most {USER_DATA_MAX_BYTES} (compress it, \
             or fetch the rest from S3 in the script)",
            path.display(),
            bytes.len()
        )));
    }
    Ok(bytes)
}

pub fn run(args: &BootTestArgs) -> anyhow::Result<()> {
    let request = args.request()?;
    let verdict = boottest::run(&request).map_err(|err| {
        let bad = err.is_bad_input();
        let err = anyhow::Error::new(err).context("boot test failed");
        if bad {
            BadInput::from_error(err).into()
        } else {
            err
        }
    })?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&verdict).expect("the verdict serializes")
        );
    } else {
        match &verdict {
            Verdict::Boots(summary) => print_boots(summary),
            Verdict::Rehearsals(summary) => print_rehearsals(summary),
        }
    }
    super::after_json_document(verdict.into_result().context("boot test failed"), args.json)
}

fn print_boots(summary: &BootSummary) {
    for r in &summary.results {
        print_boot(r);
    }
}

fn print_boot(r: &FirmwareResult) {
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
    print_checks(&r.checks);
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

fn print_checks(checks: &[boottest::report::Check]) {
    for c in checks {
        println!(
            "  {} {}: {}",
            if c.ok { "ok  " } else { "FAIL" },
            c.name,
            if c.ok {
                c.actual.clone()
            } else {
                format!("expected {}, got {}", c.expected, c.actual)
            }
        );
    }
}

fn print_rehearsals(summary: &RehearsalSummary) {
    for r in &summary.results {
        println!(
            "{} launch rehearsal: {} in {:.1} s ({:.1} GiB volume)",
            r.firmware,
            if r.passed { "PASS" } else { "FAIL" },
            r.seconds,
            r.volume_bytes as f64 / (1u64 << 30) as f64
        );
        if let Some(why) = &r.first_attempt {
            println!("  attempt 2 of 2: attempt 1 ended: {why}");
        }
        println!(
            "  metadata stand-in: {} tokens, {} answers, {} user-data fetches, {} refused without a token",
            r.imds.tokens_issued,
            r.imds.metadata_answered,
            r.imds.user_data_fetches,
            r.imds.refused_without_token
        );
        print_checks(&r.checks);
        for f in r
            .failures
            .iter()
            .filter(|f| !r.checks.iter().any(|c| f.starts_with(&c.name)))
        {
            println!("  FAIL {f}");
        }
        if let Some(run) = &r.ssh_command {
            println!("  ssh command `{}` exited {}:", run.command, run.status);
            for line in run.output.lines() {
                println!("  > {line}");
            }
        }
        for line in &r.console_tail {
            println!("  | {line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_in_the_size_notation_and_the_old_bare_mib() {
        assert_eq!(parse_memory("1G").unwrap(), ByteSize(1 << 30));
        assert_eq!(parse_memory("1536M").unwrap(), ByteSize(1536 << 20));
        // The old notation, for one release: a bare number below 64M is MiB.
        assert_eq!(parse_memory("1024").unwrap(), ByteSize(1 << 30));
        assert_eq!(parse_memory("2048").unwrap(), ByteSize(2 << 30));
        // A bare number of 64M or more is bytes.
        assert_eq!(parse_memory("536870912").unwrap(), ByteSize(512 << 20));
        assert!(parse_memory("128M").unwrap_err().contains("256M"));
        assert!(parse_memory("100").unwrap_err().contains("256M"));
        assert!(
            parse_memory("300000K")
                .unwrap_err()
                .contains("whole number of MiB")
        );
        assert!(parse_memory("lots").is_err());
    }

    #[test]
    fn both_firmwares_in_order() {
        assert_eq!(
            FirmwareArg::Both.firmwares(),
            [Firmware::Bios, Firmware::Uefi]
        );
        assert_eq!(FirmwareArg::Uefi.firmwares(), [Firmware::Uefi]);
    }
}
