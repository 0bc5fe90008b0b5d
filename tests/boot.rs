//! boot-test and export against a real image, under real QEMU.
//!
//! Needs root (the build does), qemu-system-x86, ovmf and qemu-utils (under
//! CI=true a missing one fails the test). The Debian image is the run's
//! shared small image (tests/common/image.rs); the one long test boots it
//! with SeaBIOS, exports a VDI and boots that with OVMF, and checks the
//! failures: wiped BIOS boot code, a timeout, a stall, Ctrl-C. The short
//! tests need no image. Set IMGFORGE_TEST_IMAGE=/path/image.raw to reuse a
//! built image.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::qemu::{
    Boot, assert_nothing_left, assert_verify_passed, boot_test_ok, imgforge_in, leftover_qemus,
};
use common::{BOOT, BUILD, Need, heavy, prerequisites, text};

fn scratch() -> tempfile::TempDir {
    common::scratch("imgforge-boot-suite-")
}

#[test]
fn a_file_that_is_not_a_disk_image_is_refused() {
    if !prerequisites(
        "a_file_that_is_not_a_disk_image_is_refused",
        &[&[Need::Tool("qemu-img"), Need::Tool("qemu-system-x86_64")]],
    ) {
        return;
    }
    let dir = scratch();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let imgforge = || imgforge_in(&tmp);
    let text_file = dir.path().join("notes.txt");
    std::fs::write(&text_file, "not a disk\n").unwrap();
    let blank = dir.path().join("blank.raw");
    std::fs::File::create(&blank)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    for (file, reason) in [
        (&text_file, "too small for a GPT disk"),
        (&blank, "no partition table"),
    ] {
        let out = imgforge().arg("boot-test").arg(file).output().unwrap();
        let all = text(&out);
        assert!(!out.status.success(), "{all}");
        assert!(all.contains("is not a disk image"), "{all}");
        assert!(all.contains(reason), "{all}");
        let out = imgforge()
            .arg("export")
            .arg(file)
            .args(["--format", "vdi"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(text(&out).contains("is not a disk image"), "{}", text(&out));
    }
    assert!(!dir.path().join("blank.vdi").exists());
    let out = imgforge()
        .arg("boot-test")
        .arg(dir.path().join("absent.raw"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("cannot read"), "{}", text(&out));
    assert_nothing_left(&tmp);
}

#[test]
fn missing_ovmf_names_the_debian_package() {
    let dir = scratch();
    // boot-test reads the image's architecture before it looks for that
    // architecture's firmware: an empty GPT disk with an x86_64 root type.
    let image = dir.path().join("any.raw");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let sgdisk = Command::new("sgdisk")
        .args(["-o", "-n", "1:2048:+1M", "-t"])
        .arg("1:4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709")
        .arg(&image)
        .output()
        .unwrap();
    assert!(sgdisk.status.success(), "{}", text(&sgdisk));
    let out = imgforge_in(dir.path())
        .arg("boot-test")
        .arg(&image)
        .args(["--firmware", "uefi"])
        .env("IMGFORGE_OVMF_CODE", dir.path().join("no-code.fd"))
        .env("IMGFORGE_OVMF_VARS", dir.path().join("no-vars.fd"))
        .output()
        .unwrap();
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("apt-get install ovmf"), "{all}");
}

fn assert_good_report(result: &serde_json::Value, firmware: &str, root_uuid: &str) {
    assert_eq!(result["firmware"], firmware, "{result:#}");
    assert_eq!(result["passed"], true, "{result:#}");
    let seconds = result["seconds"].as_f64().unwrap();
    assert!(seconds > 0.0 && seconds < 300.0);
    let report = &result["report"];
    assert_eq!(report["firmware"], firmware);
    assert_eq!(report["multi_user"], "active");
    assert_eq!(report["cpus_online"], "0-3");
    assert_eq!(report["isolated"], "2-3", "small on 4 vCPUs isolates 2-3");
    let cmdline = report["cmdline"].as_str().unwrap();
    for token in [
        "isolcpus=managed_irq,domain,2-N",
        "nohz_full=2-N",
        "rcu_nocbs=2-N",
        "irqaffinity=0-1",
        "skew_tick=1",
    ] {
        assert!(
            cmdline.split(' ').any(|t| t == token),
            "{token} not in {cmdline}"
        );
    }
    assert!(
        cmdline.contains(&format!("root=UUID={root_uuid}")),
        "{cmdline}"
    );
    assert_eq!(
        report["root_uuid"].as_str().unwrap().to_lowercase(),
        root_uuid
    );
    assert!(
        report["root_dev"]
            .as_str()
            .unwrap()
            .starts_with("/dev/nvme0n1p")
    );
    assert_eq!(report["dhcp"], "yes");
    assert!(report["net_addr"].as_str().unwrap().starts_with("10.0.2."));
    assert_eq!(report["sshd"], "active");
    assert_eq!(report["ssh_listen"], "yes");
    assert!(result["failures"].as_array().unwrap().is_empty());
    // Attempts: the passing one is the last; only stalls came before it.
    let attempts = result["attempts"].as_array().expect("attempts");
    assert_eq!(result["attempt"].as_u64(), Some(attempts.len() as u64));
    let (last, earlier) = attempts.split_last().expect("at least one attempt");
    assert_eq!(last["outcome"], "passed", "{result:#}");
    assert!(
        earlier.iter().all(|a| a["outcome"] == "stalled"),
        "{result:#}"
    );
    assert!(last["longest_silence_seconds"].as_f64().unwrap() < 60.0);
}

#[test]
fn debian_image_boots_under_both_firmwares_and_as_vdi() {
    if !prerequisites(
        "debian_image_boots_under_both_firmwares_and_as_vdi",
        &[BUILD, BOOT],
    ) {
        return;
    }
    let shared = common::image::debian_small();
    let _one_guest = heavy();
    let dir = scratch();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let imgforge = || imgforge_in(&tmp);
    let image = shared.path.clone();
    let root_uuid = shared.root_uuid();
    let image_sha = file_sha(&image);

    // The raw image under SeaBIOS, accelerator chosen by the probe. (OVMF
    // boots the same disk exported as a VDI below: one TCG boot per
    // firmware, each about two CPU minutes. `--firmware both` is
    // arch_boot.rs's.)
    let log = dir.path().join("console.log");
    let Boot {
        summary, output, ..
    } = boot_test_ok(
        &tmp,
        &image,
        &["--firmware", "bios", "--log", log.to_str().unwrap()],
    );
    eprintln!("{output}");
    assert_eq!(summary["passed"], true);
    assert_eq!(summary["size_class"], "small");
    let results = summary["results"].as_array().unwrap();
    assert_eq!(results.len(), 1);
    assert_good_report(&results[0], "bios", &root_uuid);
    assert_verify_passed(&results[0]);
    // Raw console bytes: GRUB draws its menu frame in a non-UTF-8 code page.
    let console = String::from_utf8_lossy(&std::fs::read(&log).unwrap()).into_owned();
    assert!(
        console.contains("IMGFORGE-REPORT {"),
        "the log holds the console"
    );
    assert_nothing_left(&tmp);
    assert_eq!(file_sha(&image), image_sha, "boot-test wrote to the image");

    // Exported for VirtualBox, the VDI boots under OVMF.
    let vdi = dir.path().join("exported.vdi");
    let out = imgforge()
        .arg("export")
        .arg(&image)
        .args(["--format", "vdi", "-o"])
        .arg(&vdi)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&vdi)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "vdi");
    // With a software TPM and without Secure Boot: the kernel started
    // through its EFI stub (linuxefi), so it got the firmware's event log.
    let summary = boot_test_ok(
        &tmp,
        &vdi,
        &["--firmware", "uefi", "--accel", "tcg", "--tpm"],
    )
    .summary;
    assert_eq!(summary["format"], "vdi");
    assert_good_report(&summary["results"][0], "uefi", &root_uuid);
    let report = &summary["results"][0]["report"];
    assert_eq!(report["secure_boot"], "disabled", "{report:#}");
    assert_eq!(report["tpm_version"], "2", "{report:#}");
    let event_log: u64 = report["tpm_event_log"].as_str().unwrap().parse().unwrap();
    assert!(
        event_log > 1000,
        "event log of {event_log} bytes: {report:#}"
    );
    // UEFI, TCG, 4 vCPUs, 1 GiB: tuning.rs's configuration for this check.
    assert_verify_passed(&summary["results"][0]);
    assert_nothing_left(&tmp);

    // BIOS boot code wiped: refused before booting, saying what is missing.
    let broken = common::image::copy_of(dir.path(), "no-boot-code.raw");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&broken)
            .unwrap();
        file.seek(SeekFrom::Start(0)).unwrap();
        file.write_all(&[0u8; 440]).unwrap();
    }
    let out = imgforge()
        .arg("boot-test")
        .arg(&broken)
        .args(["--firmware", "bios", "--accel", "tcg"])
        .output()
        .unwrap();
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("has no BIOS bootloader"), "{all}");
    assert!(all.contains("MBR boot code is missing"), "{all}");
    assert_nothing_left(&tmp);

    // A timeout: fails in time, with the console's last lines.
    let started = Instant::now();
    let out = imgforge()
        .arg("boot-test")
        .arg(&image)
        .args(["--firmware", "bios", "--accel", "tcg", "--timeout", "8"])
        .output()
        .unwrap();
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(started.elapsed() < Duration::from_secs(30), "{all}");
    assert!(
        all.contains("no IMGFORGE-REPORT line on the serial console within 8 s"),
        "{all}"
    );
    assert!(all.contains("console lines ---"), "{all}");
    assert_nothing_left(&tmp);

    // A stall on every attempt fails, with both attempts in the JSON. One
    // second of console silence before systemd happens in every boot under
    // TCG (firmware start, kernel decompression), so --stall-seconds 1 makes
    // this image "stall" each time, in seconds rather than the timeout.
    let started = Instant::now();
    let out = imgforge()
        .arg("boot-test")
        .arg(&image)
        .args(["--firmware", "bios", "--accel", "tcg", "--json"])
        .args(["--stall-seconds", "1"])
        .output()
        .unwrap();
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(started.elapsed() < Duration::from_secs(120), "{all}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON summary ({e}):\n{all}"));
    let result = &summary["results"][0];
    assert_eq!(summary["passed"], false, "{all}");
    assert_eq!(result["stalled"], true, "{all}");
    assert_eq!(result["attempt"], 2, "{all}");
    let attempts = result["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{all}");
    assert!(attempts.iter().all(|a| a["outcome"] == "stalled"), "{all}");
    assert!(
        result["failures"][0]
            .as_str()
            .unwrap()
            .starts_with("the guest stalled after: "),
        "{all}"
    );
    assert!(all.contains("attempt 2 of 2"), "{all}");
    assert_nothing_left(&tmp);

    // Ctrl-C while QEMU runs: imgforge stops it and exits 130.
    let mut child = imgforge()
        .arg("boot-test")
        .arg(&image)
        .args(["--firmware", "uefi", "--accel", "tcg"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    while leftover_qemus(&tmp).is_empty() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!leftover_qemus(&tmp).is_empty(), "QEMU never started");
    std::thread::sleep(Duration::from_secs(3));
    // SAFETY: kill has no memory preconditions; the pid is our child's.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let stopped = Instant::now();
    let status = child.wait().unwrap();
    assert!(stopped.elapsed() < Duration::from_secs(15));
    assert_eq!(status.code(), Some(130));
    assert_nothing_left(&tmp);
}

fn file_sha(path: &Path) -> Vec<u8> {
    use sha2::Digest;
    use std::io::Read;
    let mut hasher = sha2::Sha256::new();
    let mut file = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hasher.finalize().to_vec()
}
