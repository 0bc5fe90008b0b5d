//! `boot-test --ec2`: launch rehearsals of the Debian small image under real
//! QEMU, with the metadata stand-in, a volume larger than the image and SSH.
//!
//! Needs root (the build does), qemu-system-x86, ovmf, qemu-utils and
//! openssh-client. Each rehearsal boots twice (launch, then a reboot of the
//! same instance): a few minutes under TCG. The rehearsals run one after the
//! other (two TCG guests at once on a 2-core host make both crawl). The
//! image is the run's shared Debian small image (tests/common/image.rs); set
//! IMGFORGE_TEST_IMAGE=/path/image.raw to reuse a built image.

mod common;

use std::path::{Path, PathBuf};
use std::sync::MutexGuard;

use common::qemu::boot_test;
use common::{BOOT, BUILD, Need, heavy, prerequisites};

/// One guest at a time, and the run's shared Debian small image.
fn image() -> (MutexGuard<'static, ()>, PathBuf) {
    let image = common::image::debian_small().path.clone();
    (heavy(), image)
}

/// What a rehearsal needs beyond a boot: SSH with a fresh launch key.
const SSH: &[Need] = &[Need::Tool("ssh"), Need::Tool("ssh-keygen")];

/// Runs a rehearsal; its exit status and parsed --json summary.
fn rehearse(image: &Path, extra: &[&str]) -> (bool, serde_json::Value, String) {
    let scratch = tempfile::tempdir().unwrap();
    let mut args = vec!["--ec2"];
    args.extend_from_slice(extra);
    let boot = boot_test(scratch.path(), image, &args);
    (boot.ok, boot.summary, boot.output)
}

fn check<'a>(result: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    result["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check `{name}` in {result:#}"))
}

fn failed_checks(result: &serde_json::Value) -> Vec<String> {
    result["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] != true)
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_launch_of_the_debian_image_grows_the_volume_runs_user_data_once_and_passes() {
    if !prerequisites(
        "a_launch_of_the_debian_image_grows_the_volume_runs_user_data_once_and_passes",
        &[BUILD, BOOT, SSH],
    ) {
        return;
    }
    let (_one_guest, image) = image();
    let (ok, summary, all) = rehearse(&image, &["--firmware", "uefi", "--volume-size", "5G"]);
    // The failures first: a CI log may keep only the start of the output.
    assert!(
        ok,
        "the rehearsal failed: {:#}\n{all}",
        summary["results"][0]["failures"]
    );
    assert_eq!(summary["ec2_rehearsal"], true);
    let result = &summary["results"][0];
    assert_eq!(result["firmware"], "uefi");
    assert_eq!(result["passed"], true, "{result:#}");
    assert_eq!(result["volume_bytes"].as_u64(), Some(5 << 30));
    // The checks a launch depends on, each present and passing.
    for name in [
        "ssh login with the launch key",
        "passwordless sudo",
        "root partition fills the volume",
        "root filesystem fills its partition",
        "partition table valid (backup GPT at the end)",
        "user-data ran",
        "user-data exit status",
        "user-data runs recorded by the script",
        "user-data not run again after a reboot",
        "hostname from IMDS local-hostname",
        "machine-id and host keys generated",
        "no failed units",
        "no failed units after the reboot",
        "imdsv2 only",
    ] {
        assert_eq!(check(result, name)["ok"], true, "{name}: {result:#}");
    }
    let imds = &result["imds"];
    assert!(imds["tokens_issued"].as_u64().unwrap() > 0);
    assert_eq!(imds["refused_without_token"].as_u64(), Some(0));
    // Fetched on each boot; run on the first only.
    assert!(imds["user_data_fetches"].as_u64().unwrap() >= 1, "{imds:#}");
}

#[test]
fn a_failing_user_data_script_is_reported_does_not_fail_the_boot_and_runs_once() {
    if !prerequisites(
        "a_failing_user_data_script_is_reported_does_not_fail_the_boot_and_runs_once",
        &[BUILD, BOOT, SSH],
    ) {
        return;
    }
    let (_one_guest, image) = image();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("user-data.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\n\
         mkdir -p /var/lib/imgforge-test\n\
         echo run >> /var/lib/imgforge-test/runs\n\
         echo 'user-data: about to fail'\n\
         echo 'user-data: giving up with status 3' >&2\n\
         exit 3\n",
    )
    .unwrap();
    let (ok, summary, all) = rehearse(
        &image,
        &[
            "--firmware",
            "bios",
            "--user-data",
            script.to_str().unwrap(),
            "--ssh-command",
            "wc -l < /var/lib/imgforge-test/runs; systemctl is-system-running",
        ],
    );
    assert!(
        !ok,
        "a failing user-data script must fail the rehearsal:\n{all}"
    );
    let result = &summary["results"][0];
    assert_eq!(result["passed"], false);
    // Only the script's own status fails: the instance booted, nothing else.
    assert_eq!(
        failed_checks(result),
        ["user-data exit status"],
        "{:#}\n{result:#}",
        result["failures"]
    );
    let status = check(result, "user-data exit status");
    let actual = status["actual"].as_str().unwrap();
    assert!(actual.starts_with("3;"), "{actual}");
    assert!(actual.contains("giving up with status 3"), "{actual}");
    assert_eq!(check(result, "user-data ran")["ok"], true);
    assert_eq!(check(result, "no failed units")["ok"], true);
    assert_eq!(
        check(result, "user-data not run again after a reboot")["ok"],
        true
    );
    // Its own record, read with --ssh-command before the reboot: one run.
    let run = &result["ssh_command"];
    assert_eq!(run["status"].as_i64(), Some(0), "{run:#}");
    let output = run["output"].as_str().unwrap();
    assert_eq!(output.lines().next(), Some("1"), "{output}");
    assert!(output.contains("running"), "{output}");
    assert!(all.contains("user-data exit status"), "{all}");
}
