//! The real Arch build, against a real Arch mirror: ignored (no Arch mirror
//! is reachable from the machine imgforge is developed on, nor from CI), run
//! with `IMGFORGE_ARCH_MIRROR='https://geo.mirror.pkgbuild.com/$repo/os/$arch'
//! cargo test --test arch_real -- --ignored` (a URL with `$repo` and `$arch`).
//!
//! With it: `imgforge build --distro arch --mirror $IMGFORGE_ARCH_MIRROR`
//! (which itself reads the kernel's config from /boot/vmlinuz-linux via
//! IKCONFIG and checks it against kernel-configs/), the manifest, the
//! kernel's config read again here with debugfs + `extract_ikconfig`, the
//! image's mirrorlist, then `imgforge boot-test` under BIOS and UEFI.

mod common;

use std::path::Path;
use std::process::Command;

use common::{IMGFORGE, is_root, text};

/// A file of the ext4 root, read with debugfs (no mount).
fn debugfs_cat(image: &Path, offset: u64, path: &str) -> Vec<u8> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(format!("{}?offset={offset}", image.display()))
        .output()
        .unwrap();
    out.stdout
}

#[test]
#[ignore = "needs an Arch mirror, which these machines never reach; run with: \
            IMGFORGE_ARCH_MIRROR='https://geo.mirror.pkgbuild.com/$repo/os/$arch' \
            cargo test --test arch_real -- --ignored"]
fn real_arch_image_builds_and_boots_under_both_firmwares() {
    let mirror = std::env::var("IMGFORGE_ARCH_MIRROR")
        .ok()
        .filter(|m| !m.is_empty())
        .expect(
            "set IMGFORGE_ARCH_MIRROR to an Arch mirror URL with $repo and $arch \
             (e.g. https://geo.mirror.pkgbuild.com/$repo/os/$arch) to build and boot a real Arch image",
        );
    assert!(
        is_root(),
        "IMGFORGE_ARCH_MIRROR is set but the test is not root: the build needs root"
    );
    let dir = tempfile::Builder::new()
        .prefix("imgforge-arch-real-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let image = dir.path().join("arch.raw");
    let out = Command::new(IMGFORGE)
        .args([
            "build", "--distro", "arch", "--mirror", &mirror, "--json", "-o",
        ])
        .arg(&image)
        .output()
        .unwrap();
    assert!(out.status.success(), "build failed:\n{}", text(&out));

    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{}.json", image.display())).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["distro"], "arch");
    let packages = manifest["packages"].as_array().unwrap();
    for want in [
        "linux",
        "mkinitcpio",
        "grub",
        "openssh",
        "archlinux-keyring",
    ] {
        assert!(packages.iter().any(|p| p["name"] == want), "{want}");
    }

    // The kernel's config, read here again from the image's own vmlinuz.
    let root = manifest["disk"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "root")
        .expect("no root partition in the manifest")
        .clone();
    let offset = root["first_lba"].as_u64().unwrap() * 512;
    let vmlinuz = debugfs_cat(&image, offset, "/boot/vmlinuz-linux");
    assert!(
        vmlinuz.len() > 1 << 20,
        "no /boot/vmlinuz-linux in the image"
    );
    let config = imgforge::distro::arch::extract_ikconfig(&vmlinuz)
        .expect("IKCONFIG not found in the Arch kernel");
    for option in [
        "CONFIG_BLK_DEV_NVME=",
        "CONFIG_ENA_ETHERNET=",
        "CONFIG_VIRTIO_BLK=",
    ] {
        assert!(config.contains(option), "{option} not in the kernel config");
    }
    let initramfs = debugfs_cat(&image, offset, "/boot/initramfs-linux.img");
    assert!(!initramfs.is_empty(), "no initramfs");
    let mirrorlist =
        String::from_utf8(debugfs_cat(&image, offset, "/etc/pacman.d/mirrorlist")).unwrap();
    assert!(
        mirrorlist.contains(&format!("Server = {mirror}")),
        "{mirrorlist}"
    );
    let gnupg = Command::new("debugfs")
        .arg("-R")
        .arg("ls /etc/pacman.d/gnupg")
        .arg(format!("{}?offset={offset}", image.display()))
        .output()
        .unwrap();
    assert!(
        text(&gnupg).contains("File not found"),
        "the build's keyring is in the image"
    );

    for firmware in ["bios", "uefi"] {
        let out = Command::new(IMGFORGE)
            .arg("boot-test")
            .arg(&image)
            .args(["--firmware", firmware, "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "boot-test {firmware}:\n{}",
            text(&out)
        );
        // Each boot-test boot is an instance's first: the keyring unit ran.
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let units = json["results"][0]["report"]["first_boot_units"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            units.contains("imgforge-pacman-init.service=ran"),
            "{firmware}: first-boot units {units:?}"
        );
    }
}
