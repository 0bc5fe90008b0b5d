//! `imgforge boot-test --ec2`: a launch rehearsal. The image boots as an EC2
//! instance would see it: a root volume larger than the image, a metadata
//! service at 169.254.169.254 (IMDSv2 only, see [`super::imds`]) with a
//! fresh launch key, user-data, instance-id and local-hostname; then
//! imgforge logs in over SSH as the image's default user and checks what a
//! user relies on, reboots the same instance and checks again.
//!
//! QEMU's user network is put on 169.254.0.0/16 so that the metadata
//! address lies inside it (QEMU forwards only addresses of its own network);
//! the guest still gets its address by DHCP. The host's network is not
//! touched: SSH reaches the guest through a forwarded port on 127.0.0.1.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::accel::AccelDecision;
use super::imds::{ImdsCounts, ImdsServer, InstanceMetadata};
use super::qemu::{Event, Launch, Machine, MachineFirmware, Ovmf, Qemu};
use super::report::{self, Check, Expectations, GuestReport};
use super::{BootTestArgs, BootTestError, expectations, progress};
use crate::build::request::{FirstBootModes, RehearsalProbes};
use crate::data::DataDir;
use crate::image::inspect::ImageInfo;
use crate::sizeclass::SizeClass;
use crate::sys::tool::{HostTool, Tool};

pub const SSH: HostTool = HostTool::new("ssh", "openssh-client");
pub const SSH_KEYGEN: HostTool = HostTool::new("ssh-keygen", "openssh-client");

/// The user-data script the rehearsal launches with unless `--user-data`:
/// it counts its runs in a file, so a second run (after a reboot) shows.
const USER_DATA: &str = "#!/bin/sh\n\
echo IMGFORGE-USER-DATA-RAN\n\
mkdir -p /var/lib/imgforge-rehearsal\n\
echo run >> /var/lib/imgforge-rehearsal/user-data-runs\n\
exit 0\n";

/// Where [`USER_DATA`] counts its runs.
const USER_DATA_RUNS: &str = "/var/lib/imgforge-rehearsal/user-data-runs";

/// EC2's limit on user-data, before base64.
const USER_DATA_MAX_BYTES: usize = 16 * 1024;

/// The user-data a rehearsal launches with.
pub struct UserData {
    bytes: Vec<u8>,
    /// The rehearsal's own script, which counts its runs.
    counts_runs: bool,
    /// A `#!` script, which the first boot runs.
    is_script: bool,
}

impl UserData {
    fn rehearsal_script() -> Self {
        Self {
            bytes: USER_DATA.as_bytes().to_vec(),
            counts_runs: true,
            is_script: true,
        }
    }

    fn from_file(path: &Path) -> Result<Self, BootTestError> {
        let bytes = std::fs::read(path)
            .map_err(|e| BootTestError::Ec2(format!("--user-data {}: {e}", path.display())))?;
        if bytes.len() > USER_DATA_MAX_BYTES {
            return Err(BootTestError::Ec2(format!(
                "--user-data {}: {} bytes; EC2 accepts at most {USER_DATA_MAX_BYTES} (compress it, \
                 or fetch the rest from S3 in the script)",
                path.display(),
                bytes.len()
            )));
        }
        Ok(Self {
            is_script: bytes.starts_with(b"#!"),
            bytes,
            counts_runs: false,
        })
    }
}

/// The image's first-boot mode's probes: from the manifest's layers, else
/// imgforge's own units.
fn first_boot_probes(data: &DataDir, info: &ImageInfo) -> Result<RehearsalProbes, BootTestError> {
    let modes = FirstBootModes::read(data).map_err(|e| BootTestError::Ec2(e.to_string()))?;
    let layers = info
        .manifest
        .as_ref()
        .map(|m| m.layers.clone())
        .unwrap_or_else(|| vec!["first-boot-imgforge".into()]);
    modes
        .of_layers(&layers)
        .map(|mode| mode.rehearsal)
        .ok_or_else(|| {
            BootTestError::Ec2(format!(
                "the image's layers ({}) name no first-boot mode of rootfs/first-boot.toml: \
                 it does not set itself up on EC2, so there is nothing to rehearse",
                layers.join(", ")
            ))
        })
}

/// The SMBIOS system identity of a Nitro instance: vendor "Amazon EC2", a
/// UUID and serial starting with "ec2" (what cloud-init's and
/// systemd-detect-virt's EC2 checks read).
const SYSTEM_IDENTITY: &str = "type=1,manufacturer=Amazon EC2,product=c7i.xlarge,\
serial=ec2e1916-9099-7caf-fd21-0123456789ab,uuid=ec2e1916-9099-7caf-fd21-0123456789ab";

const INSTANCE_ID: &str = "i-0imgforge0rehearsal";
const LOCAL_HOSTNAME: &str = "ip-10-11-12-13.ec2.internal";

/// The QEMU network of a rehearsal: 169.254.0.0/16 with the metadata
/// address forwarded to the stand-in through `imgforge imds-relay`, and
/// SSH forwarded from the host's loopback.
fn netdev(relay_command: &str, ssh_port: u16) -> String {
    // QEMU's option syntax doubles commas inside a value.
    format!(
        "user,id=net0,net=169.254.0.0/16,host=169.254.0.2,dns=169.254.0.3,\
         dhcpstart=169.254.10.10,guestfwd=tcp:169.254.169.254:80-cmd:{},\
         hostfwd=tcp:127.0.0.1:{ssh_port}-:22",
        relay_command.replace(',', ",,")
    )
}

/// What boot-test's preflight found, for the rehearsals.
pub struct Preflight<'a> {
    /// The image's architecture: QEMU binary, machine, firmware.
    pub platform: &'static crate::platform::Architecture,
    pub args: &'a BootTestArgs,
    pub format: &'a str,
    pub firmwares: &'a [&'a str],
    pub ovmf: Option<&'a Ovmf>,
    pub decision: &'a AccelDecision,
    pub smp: u32,
    pub class: Option<&'a SizeClass>,
    pub info: &'a ImageInfo,
    pub scratch: &'a Path,
}

#[derive(Debug, Serialize)]
struct Summary<'a> {
    image: &'a Path,
    ec2_rehearsal: bool,
    passed: bool,
    results: &'a [RehearsalResult],
}

/// A rehearsal per firmware asked for; prints the results.
pub fn run_all(p: &Preflight, log: Option<File>) -> Result<(), BootTestError> {
    let image_bytes = std::fs::metadata(&p.args.image)
        .map_err(BootTestError::TempDir)?
        .len();
    let volume_bytes = match &p.args.volume_size {
        Some(text) => crate::build::assemble::parse_size(text)
            .map_err(|e| BootTestError::Ec2(format!("--volume-size: {e}")))?,
        None => image_bytes.div_ceil(1 << 30) * (1 << 30) + (2 << 30),
    };
    if volume_bytes < image_bytes {
        return Err(BootTestError::Ec2(format!(
            "--volume-size is smaller than the image ({image_bytes} bytes): a volume holds at least its snapshot"
        )));
    }
    // Unpacked once for both look-ups.
    let data = DataDir::open(None).map_err(|e| BootTestError::Ec2(e.to_string()))?;
    let default_user = default_user(&data, p.info);
    let user_data = match &p.args.user_data {
        Some(path) => UserData::from_file(path)?,
        None => UserData::rehearsal_script(),
    };
    let probes = first_boot_probes(&data, p.info)?;
    let mut results = Vec::new();
    let stall = (p.args.stall_seconds > 0).then(|| Duration::from_secs(p.args.stall_seconds));
    for &firmware in p.firmwares {
        let mut first_attempt: Option<String> = None;
        let result = loop {
            let dir = tempfile::Builder::new()
                .prefix(firmware)
                .tempdir_in(p.scratch)
                .map_err(BootTestError::TempDir)?;
            let disk = volume_overlay(&p.args.image, p.format, dir.path(), volume_bytes)?;
            let machine = Machine {
                platform: p.platform,
                accel: p.decision.accel,
                cpu: p.decision.cpu.clone(),
                firmware: match firmware {
                    "bios" => MachineFirmware::Bios,
                    _ => MachineFirmware::uefi(p.ovmf.expect("preflight found OVMF"), dir.path())?,
                },
                smp: p.smp,
                memory_mib: p.args.memory,
                disk,
                disk_format: "qcow2".into(),
                firmware_log: Some(dir.path().join("firmware.log")),
                // Set by `rehearse` once the metadata stand-in listens.
                launch: None,
            };
            let log_copy = match log.as_ref() {
                Some(file) => Some(file.try_clone().map_err(BootTestError::TempDir)?),
                None => None,
            };
            let result = rehearse(Rehearsal {
                firmware,
                machine,
                want: expectations(firmware, p.smp, p.class, p.info),
                default_user: default_user.clone(),
                volume_bytes,
                timeout: Duration::from_secs(p.args.timeout),
                dir: dir.path(),
                log: log_copy,
                user_data: &user_data,
                probes: &probes,
                ssh_command: p.args.ssh_command.as_deref(),
                stall,
            })?;
            let stalled = result
                .failures
                .iter()
                .find(|f| f.starts_with(STALLED_AFTER_REBOOT))
                .cloned();
            match (stalled, &first_attempt) {
                (Some(why), None) => {
                    progress(&format!(
                        "{firmware}: launch rehearsal attempt 1 ended: {why}; one more attempt with a fresh volume"
                    ));
                    first_attempt = Some(why);
                }
                _ => {
                    break RehearsalResult {
                        attempt: if first_attempt.is_some() { 2 } else { 1 },
                        first_attempt,
                        ..result
                    };
                }
            }
        };
        progress(&format!(
            "{firmware}: launch rehearsal {} in {:.1} s",
            if result.passed { "PASS" } else { "FAIL" },
            result.seconds
        ));
        results.push(result);
        if crate::sys::interrupt::requested() {
            return Err(BootTestError::Interrupted);
        }
    }
    let passed = results.iter().all(|r| r.passed);
    if p.args.json {
        let summary = Summary {
            image: &p.args.image,
            ec2_rehearsal: true,
            passed,
            results: &results,
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).expect("summary serializes")
        );
    } else {
        for r in &results {
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
            for c in &r.checks {
                let detail = if c.ok {
                    c.actual.clone()
                } else {
                    format!("expected {}, got {}", c.expected, c.actual)
                };
                println!(
                    "  {} {}: {detail}",
                    if c.ok { "ok  " } else { "FAIL" },
                    c.name
                );
            }
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
    if passed {
        Ok(())
    } else {
        Err(BootTestError::Failed {
            failed: results
                .iter()
                .filter(|r| !r.passed)
                .map(|r| format!("{} launch rehearsal", r.firmware))
                .collect::<Vec<_>>()
                .join(" and "),
        })
    }
}

/// The user the image installs the launch key for: its distro's data
/// says, through the manifest's distro name.
fn default_user(data: &DataDir, info: &ImageInfo) -> String {
    let from_data = || {
        let name = info.manifest.as_ref()?.distro.clone();
        Some(
            crate::distro::lookup(data, &name)
                .ok()?
                .data()
                .default_user
                .clone(),
        )
    };
    from_data().unwrap_or_else(|| "admin".into())
}

/// A qcow2 overlay of `bytes`, larger than the image: the instance's root
/// volume (the image is never written).
fn volume_overlay(
    image: &Path,
    format: &str,
    dir: &Path,
    bytes: u64,
) -> Result<PathBuf, BootTestError> {
    let backing = std::fs::canonicalize(image).map_err(BootTestError::TempDir)?;
    let overlay = dir.join("volume.qcow2");
    Tool::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", format, "-b"])
        .arg(&backing)
        .arg(&overlay)
        .arg(bytes.to_string())
        .run()?;
    Ok(overlay)
}

/// One rehearsal's verdict.
#[derive(Debug, Serialize)]
pub struct RehearsalResult {
    pub firmware: String,
    pub passed: bool,
    pub seconds: f64,
    pub volume_bytes: u64,
    pub checks: Vec<Check>,
    pub imds: ImdsCounts,
    pub failures: Vec<String>,
    /// `--ssh-command`'s run in the booted guest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_command: Option<SshCommandRun>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub console_tail: Vec<String>,
    /// 1, or 2 when the first attempt's guest stalled after its reboot.
    pub attempt: u32,
    /// Why the first attempt ended, when this is the second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_attempt: Option<String>,
}

/// How a rehearsal ends whose guest went silent while it restarted (seen
/// once under TCG: OVMF printed nothing for minutes after the reboot). Like
/// boot-test's stalls, it gets one more attempt with a fresh volume.
const STALLED_AFTER_REBOOT: &str = "the guest stalled after its reboot";
/// The kernel's last line before a restart.
const RESTART_LINE: &str = "reboot: Restarting system";

#[derive(Debug, Serialize)]
pub struct SshCommandRun {
    pub command: String,
    pub status: i32,
    /// Its standard output, then its standard error.
    pub output: String,
}

/// What the rehearsal needs from boot-test's preflight.
pub struct Rehearsal<'a> {
    pub firmware: &'a str,
    pub machine: Machine,
    pub want: Expectations,
    pub default_user: String,
    pub volume_bytes: u64,
    pub timeout: Duration,
    pub dir: &'a Path,
    pub log: Option<File>,
    pub user_data: &'a UserData,
    pub probes: &'a RehearsalProbes,
    pub ssh_command: Option<&'a str>,
    /// `--stall-seconds`: the longest console silence while the guest
    /// restarts (None: no limit but the timeout).
    pub stall: Option<Duration>,
}

/// The guest, its metadata service and its SSH door, for one rehearsal.
struct Instance {
    stall: Option<Duration>,
    qemu: Qemu,
    ssh_port: u16,
    key: PathBuf,
    user: String,
    tail: Vec<String>,
}

pub fn rehearse(mut r: Rehearsal) -> Result<RehearsalResult, BootTestError> {
    SSH.require()?;
    SSH_KEYGEN.require()?;
    let started = Instant::now();
    let key = r.dir.join("launch-key");
    Tool::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "imgforge-boot-test",
            "-f",
        ])
        .arg(&key)
        .run()?;
    let public_key = std::fs::read_to_string(key.with_extension("pub"))
        .map_err(BootTestError::TempDir)?
        .trim()
        .to_string();
    let imds = ImdsServer::start(InstanceMetadata {
        instance_id: INSTANCE_ID.into(),
        local_hostname: LOCAL_HOSTNAME.into(),
        availability_zone: "eu-west-1a".into(),
        public_key,
        user_data: Some(r.user_data.bytes.clone()),
    })
    .map_err(|e| BootTestError::Ec2(e.to_string()))?;
    let ssh_port = free_port()?;
    let exe = std::env::current_exe().map_err(BootTestError::TempDir)?;
    let relay = format!("{} imds-relay {}", exe.display(), imds.addr());
    r.machine.launch = Some(Launch {
        netdev: netdev(&relay, ssh_port),
        system_identity: SYSTEM_IDENTITY.into(),
    });
    let args = r.machine.args();
    progress(&format!(
        "{}: launch rehearsal: {:.1} GiB root volume, metadata stand-in, SSH on 127.0.0.1:{ssh_port}",
        r.firmware,
        r.volume_bytes as f64 / (1u64 << 30) as f64
    ));
    let mut instance = Instance {
        stall: r.stall,
        qemu: Qemu::spawn(r.machine.program(), &args, r.log.take())?,
        ssh_port,
        key,
        user: r.default_user.clone(),
        tail: Vec::new(),
    };
    let mut result = RehearsalResult {
        firmware: r.firmware.to_string(),
        passed: false,
        seconds: 0.0,
        volume_bytes: r.volume_bytes,
        checks: Vec::new(),
        imds: ImdsCounts::default(),
        failures: Vec::new(),
        ssh_command: None,
        console_tail: Vec::new(),
        attempt: 1,
        first_attempt: None,
    };
    let outcome = run_checks(&mut instance, &r, &mut result);
    instance.qemu.stop();
    result.imds = imds.counts();
    result.checks.push(Check {
        name: "imdsv2 only".into(),
        ok: result.imds.refused_without_token == 0 && result.imds.tokens_issued > 0,
        expected: "every metadata call with a session token".into(),
        actual: format!(
            "{} tokens, {} calls without one",
            result.imds.tokens_issued, result.imds.refused_without_token
        ),
    });
    if let Err(failure) = outcome {
        result.failures.push(failure);
        result.console_tail = instance.tail.clone();
    }
    result.failures.extend(
        result
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: expected {}, got {}", c.name, c.expected, c.actual)),
    );
    result.passed = result.failures.is_empty();
    result.seconds = started.elapsed().as_secs_f64();
    Ok(result)
}

/// Boot, log in, check; reboot, log in, check again. An `Err` is a failure
/// that stopped the rehearsal (the checks so far are kept).
fn run_checks(
    instance: &mut Instance,
    r: &Rehearsal,
    result: &mut RehearsalResult,
) -> Result<(), String> {
    let checks = &mut result.checks;
    let deadline = Instant::now() + r.timeout;
    let report = instance.wait_for_report(deadline)?;
    checks.extend(report::check(&report, &r.want));
    checks.push(no_failed_units("no failed units", &report));
    first_boot_checks(instance, r.volume_bytes, checks)?;
    user_data_checks(instance, r, checks)?;
    if let Some(command) = r.ssh_command {
        let (status, output) = instance.ssh_run(command)?;
        result.ssh_command = Some(SshCommandRun {
            command: command.to_string(),
            status,
            output,
        });
    }

    progress(&format!("{}: rebooting the instance", r.firmware));
    // The reboot drops the SSH connection; its exit status says nothing.
    let _ = instance.ssh("sudo -n systemctl reboot");
    let deadline = Instant::now() + r.timeout;
    let report = instance.wait_for_report(deadline)?;
    let checks = &mut result.checks;
    checks.push(no_failed_units("no failed units after the reboot", &report));
    let skipped = instance.ssh(&probe(&r.probes.user_data_skipped))?;
    // The rehearsal's own script also counts its runs: a second witness.
    let counted = if r.user_data.counts_runs {
        Some(instance.ssh(&format!("cat {USER_DATA_RUNS} | wc -l"))?)
    } else {
        None
    };
    let counted = counted.as_deref().map(str::trim);
    let runs = counted
        .map(|n| format!(", the script counted {n} run(s)"))
        .unwrap_or_default();
    checks.push(Check {
        name: "user-data not run again after a reboot".into(),
        ok: !skipped.trim().is_empty() && counted.is_none_or(|n| n == "1"),
        expected: "this boot skipped it as already run on this instance".into(),
        actual: if skipped.trim().is_empty() {
            format!("no sign of a skip in this boot{runs}")
        } else {
            format!("{}{runs}", skipped.trim())
        },
    });
    let after = instance.ssh("findmnt -bno SIZE /")?;
    checks.push(Check {
        name: "root after reboot".into(),
        ok: after.trim().parse::<u64>().is_ok(),
        expected: "mounted".into(),
        actual: after.trim().to_string(),
    });
    Ok(())
}

/// A failing user-data script must not fail a unit (nor the boot).
fn no_failed_units(name: &str, report: &GuestReport) -> Check {
    Check {
        name: name.into(),
        ok: report.failed_units.trim().is_empty(),
        expected: "none".into(),
        actual: if report.failed_units.trim().is_empty() {
            "none".into()
        } else {
            report.failed_units.clone()
        },
    }
}

/// A probe command of the first-boot mode, for this instance.
fn probe(command: &str) -> String {
    command.replace("{instance_id}", INSTANCE_ID)
}

/// User-data on the first boot: whether it ran, its exit status and its
/// last output lines.
fn user_data_checks(
    instance: &mut Instance,
    r: &Rehearsal,
    checks: &mut Vec<Check>,
) -> Result<(), String> {
    let status = instance.ssh(&probe(&r.probes.user_data_status))?;
    let status = status.trim();
    let output = instance.ssh(&probe(&r.probes.user_data_output))?;
    let last_lines = output
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ");
    let ran = status.parse::<i32>().ok();
    checks.push(Check {
        name: "user-data ran".into(),
        ok: ran.is_some() == r.user_data.is_script,
        expected: if r.user_data.is_script {
            "the #! script run once, as root".into()
        } else {
            "not run (not a #! script)".into()
        },
        actual: match ran {
            Some(_) => "ran".into(),
            None => format!(
                "not run ({})",
                if status.is_empty() {
                    "no record"
                } else {
                    status
                }
            ),
        },
    });
    if let Some(code) = ran {
        checks.push(Check {
            name: "user-data exit status".into(),
            ok: code == 0,
            expected: "0".into(),
            actual: format!("{code}; last lines: {last_lines}"),
        });
    }
    if r.user_data.counts_runs {
        let runs = instance.ssh(&format!("cat {USER_DATA_RUNS} 2>/dev/null | wc -l"))?;
        checks.push(Check {
            name: "user-data runs recorded by the script".into(),
            ok: runs.trim() == "1",
            expected: "1".into(),
            actual: runs.trim().to_string(),
        });
    }
    Ok(())
}

fn first_boot_checks(
    instance: &mut Instance,
    volume_bytes: u64,
    checks: &mut Vec<Check>,
) -> Result<(), String> {
    let login = instance.ssh("id -un")?;
    checks.push(Check {
        name: "ssh login with the launch key".into(),
        ok: login.trim() == instance.user,
        expected: instance.user.clone(),
        actual: login.trim().to_string(),
    });
    let sudo = instance.ssh("sudo -n id -u")?;
    checks.push(Check {
        name: "passwordless sudo".into(),
        ok: sudo.trim() == "0",
        expected: "uid 0".into(),
        actual: sudo.trim().to_string(),
    });
    // Sizes in bytes: the disk, the root partition, the filesystem.
    let sizes = instance.ssh(
        "root=$(findmnt -no SOURCE /); disk=$(lsblk -ndo PKNAME \"$root\"); \
         echo $(lsblk -bndo SIZE /dev/$disk) $(lsblk -bndo SIZE \"$root\") $(findmnt -bno SIZE /) /dev/$disk",
    )?;
    let words: Vec<&str> = sizes.split_whitespace().collect();
    let number = |i: usize| {
        words
            .get(i)
            .and_then(|w| w.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (disk, part, fs) = (number(0), number(1), number(2));
    let disk_dev = words.get(3).copied().unwrap_or("/dev/nvme0n1").to_string();
    // Fixed partitions before the root take 102 MiB; ext4's own metadata
    // a few percent of the rest.
    checks.push(Check {
        name: "root partition fills the volume".into(),
        ok: disk == volume_bytes && part + (104 << 20) >= disk,
        expected: format!("a {volume_bytes}-byte disk, root within 104 MiB of its size"),
        actual: format!("disk {disk}, root partition {part}"),
    });
    checks.push(Check {
        name: "root filesystem fills its partition".into(),
        ok: part > 0 && fs as f64 >= part as f64 * 0.95,
        expected: "at least 95 % of the partition".into(),
        actual: format!("filesystem {fs} of {part} bytes"),
    });
    let verify = instance.ssh(&format!(
        "sudo -n sfdisk --verify {disk_dev} 2>&1; echo status=$?"
    ))?;
    checks.push(Check {
        name: "partition table valid (backup GPT at the end)".into(),
        ok: verify.contains("status=0") && !verify.to_lowercase().contains("backup"),
        expected: "sfdisk --verify clean".into(),
        actual: verify.split_whitespace().collect::<Vec<_>>().join(" "),
    });
    let hostname = instance.ssh("hostname")?;
    checks.push(Check {
        name: "hostname from IMDS local-hostname".into(),
        // cloud-init sets the short name, imgforge's unit the whole one.
        ok: hostname.trim() == LOCAL_HOSTNAME
            || Some(hostname.trim()) == LOCAL_HOSTNAME.split('.').next(),
        expected: LOCAL_HOSTNAME.into(),
        actual: hostname.trim().to_string(),
    });
    let identity =
        instance.ssh("cat /etc/machine-id; ls /etc/ssh/ | grep -c '^ssh_host_.*_key$'")?;
    let lines: Vec<&str> = identity.lines().map(str::trim).collect();
    let machine_id = lines.first().copied().unwrap_or("");
    let host_keys: u32 = lines.get(1).and_then(|n| n.parse().ok()).unwrap_or(0);
    checks.push(Check {
        name: "machine-id and host keys generated".into(),
        ok: machine_id.len() == 32
            && machine_id.chars().all(|c| c.is_ascii_hexdigit())
            && host_keys > 0,
        expected: "a 32-hex machine-id and SSH host keys".into(),
        actual: format!("machine-id `{machine_id}`, {host_keys} host key(s)"),
    });
    Ok(())
}

impl Instance {
    /// Waits for the guest's report line (multi-user reached, first-boot
    /// units done).
    fn wait_for_report(&mut self, deadline: Instant) -> Result<GuestReport, String> {
        // The last output while the guest restarts (from the kernel's
        // restart line until the next boot's userspace).
        let mut restarting: Option<Instant> = None;
        loop {
            let until = match (restarting, self.stall) {
                (Some(last), Some(stall)) => deadline.min(last + stall),
                _ => deadline,
            };
            match self.qemu.next_event(until) {
                Event::Line(line) => {
                    if let Some(report) = report::parse_line(&line) {
                        return Ok(report);
                    }
                    if line.contains(RESTART_LINE) {
                        restarting = Some(Instant::now());
                    } else if restarting.is_some() {
                        restarting = (!super::stall::is_userspace_line(&line)).then(Instant::now);
                    }
                    if line.contains("Kernel panic - not syncing") {
                        self.tail.push(super::qemu::squeeze(&line));
                        return Err(format!("the guest's kernel panicked: {}", line.trim()));
                    }
                    if self.tail.len() == 40 {
                        self.tail.remove(0);
                    }
                    self.tail.push(super::qemu::squeeze(&line));
                }
                Event::Exited(status) => {
                    return Err(format!("QEMU exited ({status}) before the guest reported"));
                }
                Event::Deadline if restarting.is_some() && Instant::now() < deadline => {
                    let last = self.tail.last().cloned().unwrap_or_default();
                    return Err(format!(
                        "{STALLED_AFTER_REBOOT}: no console output for {} s after: {last}",
                        self.stall.map_or(0, |s| s.as_secs())
                    ));
                }
                Event::Deadline => {
                    return Err("no IMGFORGE-REPORT line on the serial console in time".into());
                }
                Event::Interrupted => return Err("interrupted".into()),
            }
        }
    }

    /// Runs a command in the guest as the default user; its stdout. Retries
    /// the connection for a while: sshd may still be starting.
    /// Runs `command` in the guest; its standard output.
    fn ssh(&self, command: &str) -> Result<String, String> {
        let out = self.ssh_output(command)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `command` in the guest: its exit status, and its standard
    /// output followed by its standard error.
    fn ssh_run(&self, command: &str) -> Result<(i32, String), String> {
        let out = self.ssh_output(command)?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Ok((out.status.code().unwrap_or(-1), text))
    }

    /// Retries while ssh itself fails (the guest's sshd may not listen yet).
    fn ssh_output(&self, command: &str) -> Result<std::process::Output, String> {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let out = Command::new("ssh")
                .args([
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
                .arg(command)
                .output()
                .map_err(|e| format!("cannot run ssh: {e}"))?;
            // 255: ssh itself failed (connection, authentication).
            if out.status.code() != Some(255) {
                return Ok(out);
            }
            if Instant::now() >= until || crate::sys::interrupt::requested() {
                return Err(format!(
                    "ssh {}@127.0.0.1 -p {} failed: {}",
                    self.user,
                    self.ssh_port,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}

/// A TCP port on 127.0.0.1 that nothing listens on now.
fn free_port() -> Result<u16, BootTestError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(BootTestError::TempDir)?;
    Ok(listener
        .local_addr()
        .map_err(BootTestError::TempDir)?
        .port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boottest::qemu::MachineFirmware;

    #[test]
    fn a_launch_replaces_the_plain_network_looks_like_ec2_and_allows_reboots() {
        let mut machine = Machine {
            platform: crate::platform::lookup("x86_64").unwrap(),
            accel: crate::boottest::qemu::Accel::Tcg,
            cpu: "max".into(),
            firmware: MachineFirmware::Bios,
            smp: 4,
            memory_mib: 1024,
            disk: "/tmp/disk.qcow2".into(),
            disk_format: "qcow2".into(),
            firmware_log: None,
            launch: None,
        };
        let plain = machine.command_text();
        assert!(plain.contains("-no-reboot"), "{plain}");
        assert!(plain.contains("-netdev user,id=net0 "), "{plain}");
        assert!(!plain.contains("-smbios"), "{plain}");
        machine.launch = Some(Launch {
            netdev: netdev("/usr/bin/imgforge imds-relay 127.0.0.1:1234", 2222),
            system_identity: SYSTEM_IDENTITY.into(),
        });
        let joined = machine.command_text();
        assert!(!joined.contains("-no-reboot"), "{joined}");
        assert!(joined.contains("net=169.254.0.0/16"), "{joined}");
        assert!(
            joined.contains(
                "guestfwd=tcp:169.254.169.254:80-cmd:/usr/bin/imgforge imds-relay 127.0.0.1:1234"
            ),
            "{joined}"
        );
        assert!(
            joined.contains("hostfwd=tcp:127.0.0.1:2222-:22"),
            "{joined}"
        );
        assert!(
            joined.contains("-smbios type=1,manufacturer=Amazon EC2,"),
            "{joined}"
        );
    }
}
