//! What a launch rehearsal checks in the guest, over SSH: the login with
//! the launch key, sudo, the root volume's growth, the partition table,
//! hostname, machine-id and host keys, user-data (once, not again after a
//! reboot), and the guest's own report before and after the reboot.

use std::time::Instant;

use super::super::progress;
use super::super::report::{self, Check, GuestReport};
use super::instance::{Instance, Stop};
use super::{
    INSTANCE_ID, LOCAL_HOSTNAME, Rehearsal, RehearsalResult, SshCommandRun, USER_DATA_RUNS,
};

/// Boot, log in, check; reboot, log in, check again. An `Err` is a failure
/// that stopped the rehearsal (the checks so far are kept) or Ctrl-C.
pub fn run_checks(
    instance: &mut Instance,
    r: &Rehearsal,
    result: &mut RehearsalResult,
) -> Result<(), Stop> {
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
    instance.reboot();
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
) -> Result<(), Stop> {
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
) -> Result<(), Stop> {
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
