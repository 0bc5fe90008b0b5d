//! arm64 (Graviton) images.
//!
//! Always run (cheap): `imgforge inspect` and `imgforge upload` of an arm64
//! disk (a real GPT written by imgforge's own layout, UEFI only, arm64 root
//! type) against moto through the recording proxy: RegisterImage gets
//! `Architecture=arm64` and `BootMode=uefi` with no flag, and a contradicting
//! `--architecture` stops the upload before anything is written.
//!
//! Ignored (slow; run with `cargo test --test arm64 -- --ignored`, needs
//! root, qemu-user-static, arch-test, qemu-system-arm and qemu-efi-aarch64;
//! `IMGFORGE_TEST_ARM64=1` is no longer needed): a real `build --arch
//! arm64` (a foreign bootstrap through qemu-user-static and binfmt_misc) and
//! a real `boot-test` under qemu-system-aarch64 -M virt (TCG) with AAVMF and
//! an NVMe disk, with the boot test's usual report and checks; then the
//! same tree built with `--secure-boot` boots under AAVMF's Secure Boot
//! firmware with a software TPM, enforced, with the event log. On the 2-core
//! build machine the pair took about 8 minutes from an empty arm64 tree
//! cache (build 358 s, boot 131 s; see the README's arm64 section), beyond
//! CI's budget.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::*;
use imgforge::image::layout::{self, DiskIds};
use serde_json::Value;

const ARM64_ROOT: &str = "B921B045-1DF0-41C3-AF44-4C6F280D3FAE";

/// A sparse disk laid out as `build --arch arm64` lays it out (ESP, arm64
/// root; no BIOS boot partition), with some data in the root partition.
fn arm64_disk(dir: &Path) -> PathBuf {
    let path = dir.join("graviton.raw");
    let arch = imgforge::platform::lookup("arm64").unwrap();
    let layout = layout::layout(256 << 20, DiskIds::from_seed("arm64-test"), arch);
    let root = layout.offset(layout::ROOT);
    make_image(&path, layout.disk_bytes, &[(root, pattern(7, 3 << 20))]);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    layout::write_gpt(&mut file, &layout).unwrap();
    path
}

#[test]
fn inspect_reads_arm64_from_the_root_partition_type() {
    let dir = tempfile::tempdir().unwrap();
    let image = arm64_disk(dir.path());
    let out = Command::new(IMGFORGE)
        .args(["inspect", "--json"])
        .arg(&image)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["architecture"]["name"], "arm64");
    assert_eq!(info["architecture"]["source"], "root partition type");
    let types: Vec<&str> = info["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type_guid"].as_str().unwrap())
        .collect();
    assert_eq!(types.len(), 2, "no BIOS boot partition: {types:?}");
    assert_eq!(types[1], ARM64_ROOT);
    let out = Command::new(IMGFORGE)
        .arg("inspect")
        .arg(&image)
        .output()
        .unwrap();
    let shown = text(&out);
    assert!(
        shown.contains("arch        arm64 (from the root partition type)"),
        "{shown}"
    );
    assert!(shown.contains("Linux root (arm64)"), "{shown}");
}

#[test]
fn upload_registers_an_arm64_image_as_arm64_uefi_and_refuses_a_contradiction() {
    let dir = tempfile::tempdir().unwrap();
    let moto = moto();
    let proxy = Proxy::start(moto, dir.path(), &[]);
    let image = arm64_disk(dir.path());

    // Told x86_64: refused before any snapshot is started.
    let out = imgforge(dir.path())
        .arg("upload")
        .arg(&image)
        .args(["--endpoint-url", &proxy.url(), "--name", "graviton-v0"])
        .args(["--arch", "x86_64"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("--arch x86_64 contradicts the image")
            && said.contains("is arm64 (from its root partition type)"),
        "{said}"
    );
    assert!(
        Proxy::operations(&proxy.requests(), "StartSnapshot").is_empty(),
        "nothing written"
    );
    // Told legacy-bios: Graviton has no BIOS.
    let out = imgforge(dir.path())
        .arg("upload")
        .arg(&image)
        .args(["--endpoint-url", &proxy.url(), "--name", "graviton-v0"])
        .args(["--boot-mode", "legacy-bios"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("UEFI only"), "{}", text(&out));

    // Told nothing: arm64 and uefi, from the image.
    let out = run(imgforge(dir.path())
        .arg("upload")
        .arg(&image)
        .args(["--endpoint-url", &proxy.url(), "--name", "graviton-v1"])
        .args(["--workers", "4", "--json"]));
    let result = json_stdout(&out);
    assert_eq!(result["architecture"], "arm64");
    assert_eq!(result["boot_mode"], "uefi");
    let requests = proxy.requests();
    let registers = Proxy::operations(&requests, "RegisterImage");
    assert_eq!(registers.len(), 1);
    let p = &registers[0]["params"];
    assert_eq!(p["Architecture"], "arm64");
    assert_eq!(p["BootMode"], "uefi");
    assert_eq!(p["Name"], "graviton-v1");
}

/// The slow part, opt-in.
#[test]
#[ignore = "foreign bootstrap + TCG boot, about 8 minutes on 2 cores; run with: \
            cargo test --test arm64 -- --ignored"]
fn builds_and_boots_an_arm64_small_image_under_emulation() {
    let needs: &[Need] = &[
        Need::Tool("qemu-aarch64-static"),
        Need::Tool("arch-test"),
        Need::Tool("qemu-system-aarch64"),
        Need::File("/usr/share/AAVMF/AAVMF_CODE.fd"),
        Need::File("/usr/share/AAVMF/AAVMF_VARS.fd"),
    ];
    if !prerequisites(
        "builds_and_boots_an_arm64_small_image_under_emulation",
        &[BUILD, needs],
    ) {
        return;
    }
    let binfmt_before = binfmt_entries();
    let dir = tempfile::Builder::new()
        .prefix("imgforge-arm64-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let image = dir.path().join("arm64.raw");
    let started = Instant::now();
    let out = Command::new(IMGFORGE)
        .args([
            "build",
            "--arch",
            "arm64",
            "--size-class",
            "small",
            "--json",
            "-o",
        ])
        .arg(&image)
        .output()
        .unwrap();
    assert!(out.status.success(), "build failed:\n{}", text(&out));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!(
        "arm64 build: {:.0} s (bootstrap from cache: {}); stages: {}",
        started.elapsed().as_secs_f64(),
        summary["bootstrap_from_cache"],
        summary["stages"]
    );
    assert_eq!(
        binfmt_entries(),
        binfmt_before,
        "binfmt_misc is left as it was found"
    );

    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{}.json", image.display())).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["architecture"], "arm64");
    assert_eq!(manifest["boot_modes"], serde_json::json!(["uefi"]));
    assert!(
        manifest["kernel_version"]
            .as_str()
            .unwrap()
            .ends_with("cloud-arm64"),
        "{}",
        manifest["kernel_version"]
    );
    let cmdline = manifest["kernel_cmdline"].as_str().unwrap();
    assert!(
        cmdline.contains("console=ttyAMA0,115200n8 console=ttyS0,115200n8"),
        "{cmdline}"
    );
    let parts = manifest["disk"]["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "UEFI only: {parts:?}");
    assert_eq!(parts[1]["type_guid"], ARM64_ROOT);
    // BOOTAA64.EFI on the ESP, an arm64 PE image (machine 0xaa64).
    let esp_offset = parts[0]["first_lba"].as_u64().unwrap() * 512;
    let listing = Command::new("mdir")
        .args(["-/", "-b", "-i"])
        .arg(format!("{}@@{esp_offset}", image.display()))
        .arg("::/EFI/BOOT")
        .output()
        .unwrap();
    assert!(
        text(&listing).contains("BOOTAA64.EFI"),
        "{}",
        text(&listing)
    );

    let started = Instant::now();
    let out = Command::new(IMGFORGE)
        .args(["boot-test", "--json", "--timeout", "1500"])
        .arg(&image)
        .output()
        .unwrap();
    let seconds = started.elapsed().as_secs_f64();
    assert!(out.status.success(), "boot test failed:\n{}", text(&out));
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!(
        "arm64 boot-test: {seconds:.0} s in all; {}",
        result["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| format!("{} {} in {} s", r["firmware"], r["passed"], r["seconds"]))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert_eq!(result["results"].as_array().unwrap().len(), 1, "UEFI only");
    assert_eq!(result["results"][0]["firmware"], "uefi");
    assert_eq!(result["accel"]["accel"], "tcg");

    // The same tree with --secure-boot: shimaa64 -> Debian's signed GRUB
    // -> Debian's signed kernel, booted under AAVMF's Secure Boot firmware
    // with the shipped variables and a software TPM (tpm-tis-device): the
    // kernel reports Secure Boot enforced and has the event log.
    let signed = dir.path().join("arm64-sb.raw");
    let out = Command::new(IMGFORGE)
        .args(["build", "--arch", "arm64", "--size-class", "small"])
        .args(["--secure-boot", "-o"])
        .arg(&signed)
        .output()
        .unwrap();
    assert!(out.status.success(), "secure-boot build:\n{}", text(&out));
    let keys = dir.path().join("state");
    let console = dir.path().join("sb-console.log");
    let out = Command::new(IMGFORGE)
        .env("XDG_STATE_HOME", &keys)
        .args([
            "boot-test",
            "--json",
            "--timeout",
            "1500s",
            "--secure-boot",
            "--tpm",
        ])
        .arg("--log")
        .arg(&console)
        .arg(&signed)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "secure boot test failed:\n{}",
        text(&out)
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    let report = &result["results"][0]["report"];
    eprintln!(
        "arm64 secure boot: {} s; {report}",
        result["results"][0]["seconds"]
    );
    assert_eq!(report["secure_boot"], "enabled", "{report:#}");
    assert_eq!(report["secure_boot_line"], "Secure boot enabled");
    // On arm64 the EFI stub says so first, from the firmware's variable.
    let console = String::from_utf8_lossy(&std::fs::read(&console).unwrap()).into_owned();
    assert!(
        console.contains("EFI stub: UEFI Secure Boot is enabled."),
        "no EFI stub line on the console"
    );
    assert_eq!(report["tpm_version"], "2", "{report:#}");
    let log: u64 = report["tpm_event_log"].as_str().unwrap().parse().unwrap();
    assert!(log > 1000, "event log of {log} bytes");
}

/// The binfmt_misc entries registered now (empty when it is not mounted).
fn binfmt_entries() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/proc/sys/fs/binfmt_misc")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "register" && n != "status")
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
