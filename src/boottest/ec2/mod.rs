//! `imgforge boot-test --ec2`: a launch rehearsal. The image boots as an EC2
//! instance would see it: a root volume larger than the image, a metadata
//! service at 169.254.169.254 (IMDSv2 only, see [`super::imds`]) with a
//! fresh launch key, user-data, instance-id and local-hostname; then
//! imgforge logs in over SSH as the image's default user and checks what a
//! user relies on ([`checks`]), reboots the same instance and checks again.
//!
//! QEMU's user network is put on 169.254.0.0/16 so that the metadata
//! address lies inside it (QEMU forwards only addresses of its own network);
//! the guest still gets its address by DHCP. The host's network is not
//! touched: SSH reaches the guest through a forwarded port on 127.0.0.1.
//!
//! Each firmware's rehearsal runs in the attempt loop plain boots use
//! ([`super::attempts`]): a guest that stalls while it restarts gets one
//! more attempt with a fresh volume.

mod checks;
mod instance;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::attempts::{self, ConsoleLog};
use super::imds::{ImdsCounts, ImdsServer, InstanceMetadata};
use super::preflight::Preflight;
use super::qemu::{Launch, Machine, Qemu};
use super::report::{Check, Expectations};
use super::{BootTestError, BootTestRequest, Ec2Request, progress};
use crate::data::DataDir;
use crate::firstboot::{FirstBootModes, RehearsalProbes};
use crate::image::firmware::Firmware;
use crate::image::inspect::ImageInfo;
use crate::sys::interrupt;
use crate::sys::tool::{HostTool, Tool};
use instance::{Instance, STALLED_AFTER_REBOOT, Stop};

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
pub const USER_DATA_MAX_BYTES: usize = 16 * 1024;

/// The SMBIOS system identity of a Nitro instance: vendor "Amazon EC2", a
/// UUID and serial starting with "ec2" (what cloud-init's and
/// systemd-detect-virt's EC2 checks read).
const SYSTEM_IDENTITY: &str = "type=1,manufacturer=Amazon EC2,product=c7i.xlarge,\
serial=ec2e1916-9099-7caf-fd21-0123456789ab,uuid=ec2e1916-9099-7caf-fd21-0123456789ab";

const INSTANCE_ID: &str = "i-0imgforge0rehearsal";
const LOCAL_HOSTNAME: &str = "ip-10-11-12-13.ec2.internal";

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

    fn given(bytes: &[u8]) -> Result<Self, BootTestError> {
        if bytes.len() > USER_DATA_MAX_BYTES {
            return Err(BootTestError::Ec2(format!(
                "user-data of {} bytes; EC2 accepts at most {USER_DATA_MAX_BYTES} (compress it, \
                 or fetch the rest from S3 in the script)",
                bytes.len()
            )));
        }
        Ok(Self {
            is_script: bytes.starts_with(b"#!"),
            bytes: bytes.to_vec(),
            counts_runs: false,
        })
    }
}

/// The launch rehearsals' results (`--json`'s document).
#[derive(Debug, Serialize)]
pub struct RehearsalSummary {
    pub image: PathBuf,
    pub ec2_rehearsal: bool,
    pub passed: bool,
    pub results: Vec<RehearsalResult>,
}

/// One rehearsal's verdict.
#[derive(Debug, Serialize)]
pub struct RehearsalResult {
    pub firmware: Firmware,
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

#[derive(Debug, Serialize)]
pub struct SshCommandRun {
    pub command: String,
    pub status: i32,
    /// Its standard output, then its standard error.
    pub output: String,
}

/// What every rehearsal of the image shares.
struct Launches {
    volume_bytes: u64,
    default_user: String,
    user_data: UserData,
    probes: RehearsalProbes,
}

/// What one rehearsal needs.
pub struct Rehearsal<'a> {
    pub firmware: Firmware,
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
    /// The longest console silence while the guest restarts (None: no
    /// limit but the timeout).
    pub stall: Option<Duration>,
}

/// A rehearsal per firmware of the preflight.
pub fn run_all(
    request: &BootTestRequest,
    ec2: &Ec2Request,
    p: &Preflight,
    log: Option<&ConsoleLog>,
) -> Result<RehearsalSummary, BootTestError> {
    let launches = launches(request, ec2, &p.info)?;
    let mut results = Vec::new();
    for &firmware in &p.firmwares {
        let result = rehearse_firmware(request, ec2, p, &launches, firmware, log)?;
        progress(&format!(
            "{firmware}: launch rehearsal {} in {:.1} s",
            if result.passed { "PASS" } else { "FAIL" },
            result.seconds
        ));
        results.push(result);
        interrupt::check()?;
    }
    Ok(RehearsalSummary {
        image: request.image.clone(),
        ec2_rehearsal: true,
        passed: results.iter().all(|r| r.passed),
        results,
    })
}

/// The volume's size, the default user, the user-data and the first-boot
/// mode's probes.
fn launches(
    request: &BootTestRequest,
    ec2: &Ec2Request,
    info: &ImageInfo,
) -> Result<Launches, BootTestError> {
    let image_bytes = std::fs::metadata(&request.image)
        .map_err(BootTestError::TempDir)?
        .len();
    let volume_bytes = match ec2.volume_size {
        Some(size) => size.bytes(),
        None => image_bytes.div_ceil(1 << 30) * (1 << 30) + (2 << 30),
    };
    if volume_bytes < image_bytes {
        return Err(BootTestError::Ec2(format!(
            "--volume-size is smaller than the image ({image_bytes} bytes): a volume holds at least its snapshot"
        )));
    }
    // Unpacked once for both look-ups.
    let data = DataDir::open(None).map_err(|e| BootTestError::Ec2(e.to_string()))?;
    Ok(Launches {
        volume_bytes,
        default_user: default_user(&data, info),
        user_data: match &ec2.user_data {
            Some(bytes) => UserData::given(bytes)?,
            None => UserData::rehearsal_script(),
        },
        probes: first_boot_probes(&data, info)?,
    })
}

/// One firmware's rehearsal, in the shared attempt loop.
fn rehearse_firmware(
    request: &BootTestRequest,
    ec2: &Ec2Request,
    p: &Preflight,
    launches: &Launches,
    firmware: Firmware,
    log: Option<&ConsoleLog>,
) -> Result<RehearsalResult, BootTestError> {
    let want = p.expectations(firmware);
    let mut runs = attempts::each(
        firmware,
        p.scratch.path(),
        log,
        |env| {
            let disk = volume_overlay(&request.image, &p.format, env.dir, launches.volume_bytes)?;
            rehearse(Rehearsal {
                firmware,
                machine: p.machine(firmware, disk, env.dir, request.memory_mib())?,
                want: want.clone(),
                default_user: launches.default_user.clone(),
                volume_bytes: launches.volume_bytes,
                timeout: request.timeout,
                dir: env.dir,
                log: env.log,
                user_data: &launches.user_data,
                probes: &launches.probes,
                ssh_command: ec2.ssh_command.as_deref(),
                stall: request.stall,
            })
        },
        stalled_after_reboot,
        |why, _| {
            format!(
                "{firmware}: launch rehearsal attempt 1 ended: {why}; one more attempt with a \
                 fresh volume"
            )
        },
    )?;
    let first_attempt = (runs.len() > 1)
        .then(|| stalled_after_reboot(&runs[0]))
        .flatten();
    let last = runs.pop().expect("at least one attempt");
    Ok(RehearsalResult {
        attempt: runs.len() as u32 + 1,
        first_attempt,
        ..last
    })
}

/// Why the rehearsal's guest stalled while it restarted, if it did.
fn stalled_after_reboot(result: &RehearsalResult) -> Option<String> {
    result
        .failures
        .iter()
        .find(|f| f.starts_with(STALLED_AFTER_REBOOT))
        .cloned()
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

/// One rehearsal: a launch key, the metadata stand-in, the instance, the
/// checks. Failed checks are in the result; only Ctrl-C and what stops the
/// launch itself are an `Err`.
pub fn rehearse(mut r: Rehearsal) -> Result<RehearsalResult, BootTestError> {
    SSH.require()?;
    SSH_KEYGEN.require()?;
    let started = Instant::now();
    let (key, public_key) = launch_key(r.dir)?;
    let imds = ImdsServer::start(InstanceMetadata {
        instance_id: INSTANCE_ID.into(),
        local_hostname: LOCAL_HOSTNAME.into(),
        availability_zone: "eu-west-1a".into(),
        public_key,
        user_data: Some(r.user_data.bytes.clone()),
    })
    .map_err(|e| BootTestError::Ec2(e.to_string()))?;
    let mut instance = launch(&mut r, &imds, key)?;
    let mut result = RehearsalResult {
        firmware: r.firmware,
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
    let outcome = checks::run_checks(&mut instance, &r, &mut result);
    instance.qemu.stop();
    result.imds = imds.counts();
    result.checks.push(imdsv2_only(&result.imds));
    match outcome {
        Ok(()) => {}
        Err(Stop::Interrupted(interrupted)) => return Err(interrupted.into()),
        Err(Stop::Failed(failure)) => {
            result.failures.push(failure);
            result.console_tail = instance.tail.clone();
        }
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

/// A fresh ed25519 launch key in `dir`: its path and its public half.
fn launch_key(dir: &Path) -> Result<(PathBuf, String), BootTestError> {
    let key = dir.join("launch-key");
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
    Ok((key, public_key))
}

/// Starts the instance: the machine on the rehearsal's network (metadata
/// relay, SSH port) with EC2's system identity.
fn launch(r: &mut Rehearsal, imds: &ImdsServer, key: PathBuf) -> Result<Instance, BootTestError> {
    let ssh_port = instance::free_port()?;
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
    let log = r.log.take();
    let console_copy = log.as_ref().and_then(|f| f.try_clone().ok());
    Ok(Instance {
        stall: r.stall,
        qemu: Qemu::spawn(r.machine.program(), &args, console_copy)?,
        program: r.machine.program(),
        args,
        log,
        rebooting: false,
        ssh_port,
        key,
        user: r.default_user.clone(),
        tail: Vec::new(),
    })
}

/// Every metadata call of the guest carried a session token.
fn imdsv2_only(imds: &ImdsCounts) -> Check {
    Check {
        name: "imdsv2 only".into(),
        ok: imds.refused_without_token == 0 && imds.tokens_issued > 0,
        expected: "every metadata call with a session token".into(),
        actual: format!(
            "{} tokens, {} calls without one",
            imds.tokens_issued, imds.refused_without_token
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boottest::firmware::MachineFirmware;

    #[test]
    fn a_launch_replaces_the_plain_network_and_looks_like_ec2() {
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
            tpm_socket: None,
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
        // A reboot ends QEMU; the rehearsal powers the instance on again.
        assert!(joined.contains("-no-reboot"), "{joined}");
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
