//! UEFI Secure Boot: `build --secure-boot` lays out the distribution's
//! signed chain (shim -> Debian-signed GRUB -> Debian-signed kernel), and
//! `boot-test --secure-boot` boots it under OVMF's Secure Boot firmware
//! with Microsoft's keys enrolled, passing only when the guest's kernel
//! reports Secure Boot enforced, with a software TPM 2.0 (`--tpm`) whose
//! measured-boot event log reaches the kernel and whose PCR 7 tpm2-tools
//! (`--tpm-tools`) read; a DKMS module signed with the owner's key
//! (`--secure-boot-key`) loads under the kernel's lockdown; the variable
//! store that boot ran with holds the Secure Boot variables `upload` ships
//! as UefiData (read with virt-fw-vars and python-uefivars), the owner's
//! module certificate in db; the same image with its GRUB's signature
//! removed is refused by shim, and boot-test says so.
//!
//! Needs root, mmdebstrap, QEMU, OVMF's secboot firmware, mtools and
//! sbsigntool (under CI=true a missing one fails the test). The Secure
//! Boot image has its own package set (tpm2-tools, DKMS, kernel headers),
//! so its first build bootstraps a tree of its own (about a minute).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::qemu::{assert_nothing_left, boot_test, boot_test_ok, imgforge_in};
use common::{BOOT, BUILD, IMGFORGE, Need, heavy, prerequisites, text};
use serde_json::Value;

const SECURE_BOOT: &[Need] = &[
    Need::File("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"),
    Need::File("/usr/share/OVMF/OVMF_VARS_4M.ms.fd"),
    Need::Tool("mcopy"),
    Need::Tool("sbattach"),
    Need::Tool("sbverify"),
    Need::Tool("swtpm"),
    Need::Tool("swtpm_setup"),
    Need::Tool("openssl"),
    Need::Tool("uefivars"),
    Need::Tool("virt-fw-vars"),
];

fn plan(args: &[&str]) -> (bool, Value, String) {
    let out = Command::new(IMGFORGE)
        .args(["build", "--plan", "--json"])
        .args(args)
        .output()
        .unwrap();
    let value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.success(), value, text(&out))
}

#[test]
fn the_plan_shows_the_signed_chain_and_arch_is_refused() {
    let (ok, p, out) = plan(&["--secure-boot"]);
    assert!(ok, "{out}");
    let sb = &p["secure_boot"];
    let files: Vec<&str> = sb["esp_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert_eq!(
        files,
        [
            "EFI/BOOT/BOOTX64.EFI <- /usr/lib/shim/shimx64.efi.signed (shim)",
            "EFI/BOOT/grubx64.efi <- /usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed \
             (signed GRUB)",
            "EFI/debian/grub.cfg -> /boot/grub/grub.cfg",
        ]
    );
    assert!(
        sb["bios"].as_str().unwrap().starts_with("unchanged"),
        "{sb}"
    );
    // The same packages with and without --secure-boot: one cached tree.
    let (_, plain, _) = plan(&[]);
    assert_eq!(plain["secure_boot"], Value::Null);
    assert_eq!(plain["packages"], p["packages"]);
    assert_eq!(plain["cache_key"], p["cache_key"]);
    let packages = p["packages"].to_string();
    assert!(packages.contains("\"shim-signed\""), "{packages}");
    assert!(packages.contains("\"grub-efi-amd64-signed\""), "{packages}");

    let (_, arm, out) = plan(&["--secure-boot", "--arch", "arm64"]);
    assert!(
        arm["secure_boot"]["esp_files"][0]
            .as_str()
            .unwrap()
            .starts_with("EFI/BOOT/BOOTAA64.EFI <- /usr/lib/shim/shimaa64.efi.signed"),
        "{out}"
    );

    // The owner's module key: shown when it fits its certificate, refused
    // (exit 2, before any work) when it does not or without --secure-boot.
    let keys = tempfile::tempdir().unwrap();
    let (key, cert) = key_pair(keys.path(), "modules", "plan module signer");
    let (other_key, _) = key_pair(keys.path(), "other", "someone else");
    let (key, cert, other_key) = (
        key.to_str().unwrap(),
        cert.to_str().unwrap(),
        other_key.to_str().unwrap(),
    );
    let signing = ["--secure-boot-key", key, "--secure-boot-cert", cert];
    let (ok, p, out) = plan(&[&["--secure-boot"][..], &signing].concat());
    assert!(ok, "{out}");
    let shown = p["secure_boot"]["module_signing"].as_str().unwrap();
    assert!(shown.contains("CN=plan module signer"), "{shown}");
    for (flags, says) in [
        (signing.to_vec(), "add --secure-boot"),
        (
            vec![
                "--secure-boot",
                "--secure-boot-key",
                other_key,
                "--secure-boot-cert",
                cert,
            ],
            "is not the one in --secure-boot-cert",
        ),
        (
            vec![
                "--secure-boot",
                "--secure-boot-key",
                key,
                "--secure-boot-cert",
                key,
            ],
            "not an X.509 certificate",
        ),
    ] {
        let out = Command::new(IMGFORGE)
            .args(["build", "--plan"])
            .args(&flags)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {}", text(&out));
        assert!(text(&out).contains(says), "{flags:?}: {}", text(&out));
    }

    let out = Command::new(IMGFORGE)
        .args(["build", "--distro", "arch", "--secure-boot", "--plan"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("arch has no signed boot chain"),
        "{}",
        text(&out)
    );
}

/// The ESP's byte offset in a raw image, from its manifest.
fn esp_offset(manifest: &Value) -> u64 {
    manifest["disk"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["filesystem"] == "vfat")
        .unwrap()["first_lba"]
        .as_u64()
        .unwrap()
        * 512
}

/// `mcopy` of one ESP file out of (or, with `into`, into) a raw image.
fn esp_copy(image: &Path, offset: u64, esp_path: &str, file: &Path, into: bool) {
    let drive = format!("{}@@{offset}", image.display());
    let esp = format!("::/{esp_path}");
    let mut command = Command::new("mcopy");
    command.args(["-n", "-o", "-i", &drive]);
    if into {
        command.arg(file).arg(&esp);
    } else {
        command.arg(&esp).arg(file);
    }
    let out = command.output().unwrap();
    assert!(out.status.success(), "mcopy {esp}: {}", text(&out));
}

fn signers(file: &Path) -> String {
    text(
        &Command::new("sbverify")
            .arg("--list")
            .arg(file)
            .output()
            .unwrap(),
    )
}

/// The owner's own PK and KEK (`--secure-boot-keys DIR`), made with openssl.
fn owner_keys(dir: &Path) -> PathBuf {
    let keys = dir.join("keys");
    std::fs::create_dir(&keys).unwrap();
    for name in ["PK", "KEK"] {
        key_pair(&keys, name, &format!("test owner {name}"));
    }
    keys
}

/// `DIR/NAME.key` and `DIR/NAME.crt`, a self-signed RSA-2048 pair.
fn key_pair(dir: &Path, name: &str, common_name: &str) -> (PathBuf, PathBuf) {
    let (key, cert) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.crt")),
    );
    let out = Command::new("openssl")
        .args([
            "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
        ])
        .args(["-subj", &format!("/CN={common_name}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    (key, cert)
}

/// The DKMS module the Secure Boot image carries (built in the bootstrap
/// against the image's kernel headers), loaded at boot by a layer.
const DKMS_PACKAGES: &str = "dkms,linux-headers-cloud-amd64,acpi-call-dkms";
const DKMS_MODULE: &str = "acpi_call";

/// The UefiData `upload` registers the image with (through moto and the
/// recording proxy), with the owner's keys.
fn shipped_blob(dir: &Path, image: &Path, keys: &Path) -> String {
    use common::aws::{Proxy, imgforge, moto, run, stderr};
    let proxy = Proxy::start(moto(), dir, &[]);
    let out = run(imgforge(dir)
        .arg("upload")
        .arg(image)
        .args([
            "--endpoint-url",
            &proxy.url(),
            "--name",
            "sb-v1",
            "--secure-boot-keys",
        ])
        .arg(keys));
    assert!(out.status.success(), "{}", stderr(&out));
    let requests = proxy.requests();
    let register = &Proxy::operations(&requests, "RegisterImage")[0]["params"];
    assert_eq!(register["BootMode"], "uefi");
    register["UefiData"].as_str().unwrap().to_string()
}

/// The Secure Boot image: with tpm2-tools, and a DKMS module signed with
/// the owner's module key (returned: key, certificate).
fn build_secure_boot_image(dir: &Path) -> (PathBuf, Value, (PathBuf, PathBuf)) {
    let image = dir.join("sb.raw");
    let module_key = key_pair(dir, "modules", "test module signer");
    let layer = dir.join("load-module");
    std::fs::create_dir_all(layer.join("etc/modules-load.d")).unwrap();
    std::fs::write(
        layer.join(format!("etc/modules-load.d/{DKMS_MODULE}.conf")),
        format!("{DKMS_MODULE}\n"),
    )
    .unwrap();
    let out = Command::new(IMGFORGE)
        .args(["build", "--distro", "debian", "--size-class", "small"])
        .args(["--secure-boot", "--tpm-tools", "--packages", DKMS_PACKAGES])
        .arg("--layer")
        .arg(&layer)
        .arg("--secure-boot-key")
        .arg(&module_key.0)
        .arg("--secure-boot-cert")
        .arg(&module_key.1)
        .arg("-o")
        .arg(&image)
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!(
        "secure-boot build: {:.0} s, tree from cache: {}",
        summary["seconds"], summary["bootstrap_from_cache"]
    );
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("sb.raw.json")).unwrap()).unwrap();
    (image, manifest, module_key)
}

/// Whether `needle` occurs anywhere in the image's bytes (grep -F).
fn image_contains(image: &Path, needle: &str) -> bool {
    let out = Command::new("grep")
        .args(["-a", "-c", "-F", needle])
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim() != "0"
}

#[test]
fn secure_boot_image_boots_enforced_and_an_unsigned_grub_is_refused() {
    if !prerequisites(
        "secure_boot_image_boots_enforced_and_an_unsigned_grub_is_refused",
        &[BUILD, BOOT, SECURE_BOOT],
    ) {
        return;
    }
    let shared = common::image::debian_small();
    let dir = common::scratch("imgforge-secure-boot-");
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let _one_guest = heavy();

    // An image without the signed chain is refused before any boot.
    let out = imgforge_in(&tmp)
        .arg("boot-test")
        .arg(&shared.path)
        .arg("--secure-boot")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("was not built with --secure-boot"),
        "{}",
        text(&out)
    );

    let (image, manifest, (module_key, module_cert)) = build_secure_boot_image(dir.path());
    assert_eq!(manifest["boot_modes"], serde_json::json!(["bios", "uefi"]));
    let sb = &manifest["secure_boot"];
    assert_eq!(
        sb["esp_files"],
        serde_json::json!([
            "EFI/BOOT/BOOTX64.EFI",
            "EFI/BOOT/grubx64.efi",
            "EFI/debian/grub.cfg"
        ])
    );
    assert_eq!(sb["packages"][0]["name"], "shim-signed");
    assert!(!sb["packages"][0]["version"].as_str().unwrap().is_empty());
    // The DKMS module was signed with the owner's key, whose certificate
    // the manifest carries; the private key is nowhere in the image.
    let signing = &sb["module_signing"];
    assert_eq!(signing["subject"], "CN=test module signer", "{sb:#}");
    assert_eq!(
        signing["certificate"].as_str().unwrap().trim(),
        std::fs::read_to_string(&module_cert).unwrap().trim()
    );
    let modules: Vec<&str> = signing["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert!(
        modules.iter().any(|m| m.starts_with("/lib/modules/")
            && m.ends_with(&format!("/updates/dkms/{DKMS_MODULE}.ko"))),
        "{modules:?}"
    );
    let key_line = std::fs::read_to_string(&module_key)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_string();
    assert!(
        !image_contains(&image, &key_line),
        "the module key is in the image"
    );

    // What is on the ESP: shim signed by Microsoft, GRUB by Debian, and the
    // early config at GRUB's prefix finding the root by its UUID.
    let offset = esp_offset(&manifest);
    let shim = dir.path().join("BOOTX64.EFI");
    let grub = dir.path().join("grubx64.efi");
    let cfg = dir.path().join("grub.cfg");
    esp_copy(&image, offset, "EFI/BOOT/BOOTX64.EFI", &shim, false);
    esp_copy(&image, offset, "EFI/BOOT/grubx64.efi", &grub, false);
    esp_copy(&image, offset, "EFI/debian/grub.cfg", &cfg, false);
    assert!(
        signers(&shim).contains("Microsoft Corporation UEFI CA"),
        "{}",
        signers(&shim)
    );
    assert!(
        signers(&grub).contains("Debian Secure Boot"),
        "{}",
        signers(&grub)
    );
    let early = std::fs::read_to_string(&cfg).unwrap();
    let root_uuid = manifest["disk"]["partitions"][2]["filesystem_uuid"]
        .as_str()
        .unwrap();
    assert!(
        early.contains(&format!("--set=root {root_uuid}")),
        "{early}"
    );
    assert!(early.contains("configfile $prefix/grub.cfg"), "{early}");

    // --tpm is UEFI only, and not for launch rehearsals.
    for (flags, says) in [
        (&["--tpm", "--firmware", "bios"][..], "boot UEFI only"),
        (&["--tpm", "--ec2"][..], "--tpm is for plain boots"),
    ] {
        let out = imgforge_in(&tmp)
            .arg("boot-test")
            .arg(&image)
            .args(flags)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {}", text(&out));
        assert!(text(&out).contains(says), "{flags:?}: {}", text(&out));
    }

    // One boot proves both: Secure Boot enforced, and a TPM 2.0 with the
    // firmware's event log (the EFI stub, which Secure Boot makes GRUB use,
    // hands it to the kernel).
    let keys = owner_keys(dir.path());
    let vars = dir.path().join("vars.fd");
    let (keys_arg, vars_arg) = (keys.to_str().unwrap(), vars.to_str().unwrap());
    let boot = boot_test_ok(
        &tmp,
        &image,
        &[
            "--secure-boot",
            "--tpm",
            "--secure-boot-keys",
            keys_arg,
            "--save-vars",
            vars_arg,
        ],
    );
    let result = boot.result();
    assert_eq!(result["firmware"], "uefi", "--secure-boot boots UEFI only");
    let report = &result["report"];
    assert_eq!(report["secure_boot"], "enabled", "{result:#}");
    assert_eq!(report["secure_boot_line"], "Secure boot enabled");
    assert_eq!(report["tpm_version"], "2", "{report:#}");
    let log_bytes: u64 = report["tpm_event_log"].as_str().unwrap().parse().unwrap();
    assert!(log_bytes > 1000, "event log of {log_bytes} bytes");
    // tpm2-tools (--tpm-tools) read PCR 7, which Secure Boot's policy
    // extended: not its reset value.
    let pcr7 = report["tpm_pcr7"].as_str().unwrap();
    assert_eq!(pcr7.len(), 64, "{report:#}");
    assert!(pcr7.chars().any(|c| c != '0'), "{report:#}");
    // The DKMS module signed with the owner's key loaded under lockdown.
    assert_eq!(
        report["updates_modules"],
        format!("{DKMS_MODULE}=loaded"),
        "{report:#}"
    );
    assert_eq!(report["module_rejected"], "", "{report:#}");
    for name in [
        "Secure Boot enforced",
        "TPM version",
        "measured-boot event log",
        "PCR 7 read with tpm2_pcrread",
        &format!("module {DKMS_MODULE} (signed with your key) loaded"),
    ] {
        let check = result["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no check {name}: {result:#}"));
        assert_eq!(check["ok"], true, "{check}");
    }
    assert_nothing_left(&tmp);
    // What was tested is what is shipped: the Secure Boot variables of the
    // store the firmware booted with (virt-fw-vars) are those of the
    // UefiData upload registers (python-uefivars): names, GUIDs,
    // attributes, data and times.
    let tested = common::uefi::secure_boot_only(&common::uefi::read_store(dir.path(), &vars));
    let shipped = common::uefi::decode_blob(dir.path(), &shipped_blob(dir.path(), &image, &keys));
    assert_eq!(
        tested.keys().collect::<Vec<_>>(),
        ["KEK", "PK", "db", "dbx"]
    );
    assert_eq!(tested, shipped);
    // db holds the owner's module certificate beside Microsoft's.
    let cert_der = Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(&module_cert)
        .output()
        .unwrap()
        .stdout;
    assert!(
        tested["db"]
            .data
            .windows(cert_der.len())
            .any(|w| w == cert_der.as_slice()),
        "the module certificate is not in db"
    );
    assert!(
        !Command::new("pgrep")
            .args(["-f", &format!("swtpm socket.*{}", tmp.display())])
            .status()
            .unwrap()
            .success(),
        "swtpm outlived boot-test"
    );

    // The same image, its GRUB's signature removed: shim refuses it, and
    // boot-test says so at once rather than waiting for the timeout.
    let unsigned = dir.path().join("unsigned.raw");
    assert!(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(&image)
            .arg(&unsigned)
            .status()
            .unwrap()
            .success()
    );
    std::fs::copy(
        dir.path().join("sb.raw.json"),
        dir.path().join("unsigned.raw.json"),
    )
    .unwrap();
    let out = Command::new("sbattach")
        .arg("--remove")
        .arg(&grub)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        signers(&grub).contains("No signature table"),
        "{}",
        signers(&grub)
    );
    esp_copy(&unsigned, offset, "EFI/BOOT/grubx64.efi", &grub, true);
    let refused = boot_test(
        &tmp,
        &unsigned,
        &[
            "--secure-boot",
            "--timeout",
            "120s",
            "--secure-boot-keys",
            keys_arg,
        ],
    );
    assert!(!refused.ok, "{}", refused.output);
    let result = refused.result();
    let failures = result["failures"].to_string();
    assert!(failures.contains("Verification failed"), "{failures}");
    assert!(failures.contains("shim refused"), "{failures}");
    assert_eq!(
        result["attempts"].as_array().unwrap().len(),
        1,
        "no retry: {result:#}"
    );
    assert!(
        result["seconds"].as_f64().unwrap() < 100.0,
        "refused before the timeout: {result:#}"
    );
    assert_nothing_left(&tmp);
}

/// Strips the signature from the image's kernels, making them "the
/// owner's own": what a kernel from a user's --package-file looks like.
const UNSIGN_KERNEL_SCRIPT: &str = "#!/bin/sh\nset -e\n\
    apt-get install -y --no-install-recommends sbsigntool\n\
    for kernel in /boot/vmlinuz-*; do sbattach --remove \"$kernel\"; done\n\
    apt-get purge -y sbsigntool\n";

#[test]
fn an_owners_unsigned_kernel_is_refused_without_a_key_and_boots_signed_with_one() {
    if !prerequisites(
        "an_owners_unsigned_kernel_is_refused_without_a_key_and_boots_signed_with_one",
        &[BUILD, BOOT, SECURE_BOOT],
    ) {
        return;
    }
    let _shared_tree = common::image::debian_small();
    let dir = common::scratch("imgforge-owner-kernel-");
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let script = dir.path().join("unsign-kernel.sh");
    std::fs::write(&script, UNSIGN_KERNEL_SCRIPT).unwrap();
    let (key, cert) = key_pair(dir.path(), "kernel", "test kernel signer");
    let image = dir.path().join("own-kernel.raw");
    let build = |signing: &[&Path]| {
        let mut command = Command::new(IMGFORGE);
        command
            .args(["build", "--distro", "debian", "--size-class", "small"])
            .arg("--secure-boot")
            .arg("--script")
            .arg(&script)
            .arg("-o")
            .arg(&image);
        if let [key, cert] = signing {
            command
                .arg("--secure-boot-key")
                .arg(key)
                .arg("--secure-boot-cert")
                .arg(cert);
        }
        command.output().unwrap()
    };

    // Without a key: the build stops, naming the kernel, and writes nothing.
    let out = build(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("the kernel is not signed") && text(&out).contains("/boot/vmlinuz-"),
        "{}",
        text(&out)
    );
    assert!(!image.exists(), "a refused build left its image");

    // With the owner's key the kernel is signed with it, and the image boots
    // with Secure Boot enforced: shim verified the kernel against db.
    let out = build(&[&key, &cert]);
    assert!(out.status.success(), "{}", text(&out));
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("own-kernel.raw.json")).unwrap(),
    )
    .unwrap();
    let signing = &manifest["secure_boot"]["module_signing"];
    let kernels = signing["kernels"].as_array().unwrap();
    assert_eq!(kernels.len(), 1, "{signing:#}");
    assert!(
        kernels[0].as_str().unwrap().starts_with("/boot/vmlinuz-"),
        "{signing:#}"
    );
    let _one_guest = heavy();
    let keys = owner_keys(dir.path());
    let boot = boot_test_ok(
        &tmp,
        &image,
        &[
            "--secure-boot",
            "--secure-boot-keys",
            keys.to_str().unwrap(),
        ],
    );
    let report = &boot.result()["report"];
    assert_eq!(report["secure_boot"], "enabled", "{report:#}");
    assert_nothing_left(&tmp);
}
