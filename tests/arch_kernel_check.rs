//! The kernel-config check against Arch's real kernel config lines
//! (tests/fixtures/arch-linux.config: `CONFIG_EXT4_FS=m`, `CONFIG_JBD2=m`,
//! `CONFIG_FS_MBCACHE=m`) and an initramfs in mkinitcpio's format, made with
//! the host's bsdtar and zstd: an uncompressed early cpio (microcode), then
//! the main newc cpio, zstd-compressed, with the modules where mkinitcpio's
//! `filesystems` hook puts them. The check passes and says the module was
//! found in the initramfs; it fails, naming the module, when the initramfs
//! lacks it, and when no initramfs is given. Also what `--plan` and `--help`
//! say of how far Arch is tested.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;

use common::{IMGFORGE, Need, prerequisites, text};

const MODULES: &str = "usr/lib/modules/6.12.1-arch1-1/kernel";

fn fixture_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/arch-linux.config")
}

fn sh(script: &str, dir: &Path) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{script}: {}", text(&out));
}

/// An initramfs as mkinitcpio writes it, carrying `modules` (paths under
/// the kernel's module folder, e.g. `fs/ext4/ext4.ko.zst`).
fn initramfs(dir: &Path, name: &str, modules: &[&str]) -> PathBuf {
    let early = dir.join(format!("{name}-early"));
    let main = dir.join(format!("{name}-main"));
    fs::create_dir_all(early.join("kernel/x86/microcode")).unwrap();
    fs::write(early.join("kernel/x86/microcode/GenuineIntel.bin"), "ucode").unwrap();
    for module in modules {
        let path = main.join(MODULES).join(module);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, b"\x28\xb5\x2f\xfd module").unwrap();
    }
    fs::create_dir_all(main.join("usr/bin")).unwrap();
    fs::write(main.join("init"), "#!/usr/bin/ash\n").unwrap();
    let image = dir.join(format!("{name}.img"));
    let out = image.display();
    sh(
        &format!(
            "cd '{}' && bsdtar --format newc -cf - . > '{out}'",
            early.display()
        ),
        dir,
    );
    sh(
        &format!(
            "cd '{}' && bsdtar --format newc -cf - . | zstd -q -T0 -c >> '{out}'",
            main.display()
        ),
        dir,
    );
    image
}

fn kernel_check(extra: &[&str], initramfs: Option<&Path>) -> Output {
    let mut command = Command::new(IMGFORGE);
    command
        .arg("kernel-check")
        .arg(fixture_config())
        .args(["--tuning", "base"])
        .args(extra)
        .env_remove("IMGFORGE_DATA_DIR");
    if let Some(path) = initramfs {
        command.arg("--initramfs").arg(path);
    }
    command.output().unwrap()
}

#[test]
fn arch_ext4_as_a_module_passes_only_when_the_initramfs_carries_it() {
    if !prerequisites(
        "arch_ext4_as_a_module_passes_only_when_the_initramfs_carries_it",
        &[&[Need::Tool("bsdtar"), Need::Tool("zstd")]],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let full = initramfs(
        dir.path(),
        "full",
        &[
            "fs/ext4/ext4.ko.zst",
            "fs/jbd2/jbd2.ko.zst",
            "fs/mbcache.ko.zst",
            "drivers/nvme/host/nvme.ko.zst",
        ],
    );
    let out = kernel_check(&[], Some(&full));
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("ok      cloud.config")
            && all.contains("CONFIG_EXT4_FS: not built in; module ext4 in the initramfs")
            && all.contains("fs/ext4/ext4.ko.zst"),
        "{all}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&kernel_check(&["--json"], Some(&full)).stdout).unwrap();
    assert_eq!(json["passed"], true);
    let modules: Vec<&str> = json["fragments"][0]["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["module"].as_str().unwrap())
        .collect();
    assert_eq!(modules, ["ext4", "jbd2", "mbcache"]);

    // The same initramfs without ext4 (a filesystems hook that did not run):
    // exit 1, naming what it lacks.
    let no_ext4 = initramfs(
        dir.path(),
        "no-ext4",
        &["fs/jbd2/jbd2.ko.zst", "fs/mbcache.ko.zst"],
    );
    let out = kernel_check(&[], Some(&no_ext4));
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("MISSING cloud.config: CONFIG_EXT4_FS=y")
            && all.contains("the initramfs lacks ext4"),
        "{all}"
    );
    // No initramfs: a module cannot be vouched for.
    let out = kernel_check(&[], None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("--initramfs"), "{}", text(&out));
    // Not an initramfs: bad input, exit 2.
    let out = kernel_check(&[], Some(&fixture_config()));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("is not an initramfs imgforge can read"),
        "{}",
        text(&out)
    );
}

/// `--plan` and `--help` say plainly that Arch is tested offline against a
/// fixture repository, and what only a real mirror proves.
#[test]
fn plan_and_help_say_how_far_arch_is_tested() {
    let out = Command::new(IMGFORGE)
        .args(["build", "--distro", "arch", "--plan", "--json"])
        .env_remove("IMGFORGE_DATA_DIR")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tested = plan["notes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n[0] == "tested")
        .and_then(|n| n[1].as_str())
        .expect("a `tested` note")
        .to_string();
    for words in [
        "offline only",
        "fixture repository",
        "real mirror",
        "mkinitcpio",
    ] {
        assert!(tested.contains(words), "{words}: {tested}");
    }
    let help = Command::new(IMGFORGE)
        .args(["build", "--help"])
        .output()
        .unwrap();
    // As one line: clap wraps the help to the terminal's width.
    let help = text(&help).split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        help.contains("Arch is tested offline only, against a fixture")
            && help.contains("proven only on a real mirror"),
        "{help}"
    );
}
