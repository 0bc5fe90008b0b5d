//! `imgforge build` end to end: a real Debian bootstrap (host's mirror), a
//! real image, checked with tools that are not imgforge's: sgdisk, e2fsck,
//! debugfs, blkid, fsck.vfat, mtools, sha256sum. Needs root, like the build.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{BUILD, IMGFORGE, heavy, prerequisites, run_program as run, text};

fn imgforge(args: &[&str]) -> Output {
    run(IMGFORGE, args)
}

fn scratch() -> tempfile::TempDir {
    common::scratch("imgforge-test-")
}

/// Reads a file out of the ext4 root with debugfs (no mount).
fn debugfs(image: &Path, offset: u64, command: &str) -> String {
    let target = format!("{}?offset={offset}", image.display());
    let out = run("debugfs", &["-R", command, &target]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[derive(serde::Deserialize)]
struct Part {
    name: String,
    first_lba: u64,
    last_lba: u64,
    filesystem_uuid: Option<String>,
}

#[test]
fn builds_a_debian_image_that_independent_tools_accept() {
    if !prerequisites(
        "builds_a_debian_image_that_independent_tools_accept",
        &[BUILD],
    ) {
        return;
    }
    // The run's shared small image first: its tree is in the cache.
    let small = common::image::debian_small();
    let _heavy = heavy();
    let dir = scratch();
    let image = dir.path().join("image.raw");
    let image_str = image.to_str().unwrap();
    let out = imgforge(&["build", "--size-class", "medium", "-o", image_str, "--json"]);
    assert!(out.status.success(), "build failed:\n{}", text(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    // The manifest beside the image: sha256 as sha256sum computes it.
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{image_str}.json")).unwrap())
            .unwrap();
    let sha = text(&run("sha256sum", &[image_str]));
    assert_eq!(
        manifest["sha256"].as_str().unwrap(),
        sha.split_whitespace().next().unwrap()
    );
    assert_eq!(summary["sha256"], manifest["sha256"]);
    assert_eq!(manifest["size_class"], "medium");
    assert_eq!(manifest["distro"], "debian");
    assert!(
        manifest["kernel_version"]
            .as_str()
            .unwrap()
            .contains("cloud-amd64")
    );
    assert!(
        manifest["packages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "openssh-server")
    );
    assert_eq!(manifest["boot_modes"], serde_json::json!(["bios", "uefi"]));
    let parts: Vec<Part> = serde_json::from_value(manifest["disk"]["partitions"].clone()).unwrap();

    // GPT: sgdisk verifies it and sees the three partitions.
    let verify = run("sgdisk", &["-v", image_str]);
    assert!(
        text(&verify).contains("No problems found"),
        "{}",
        text(&verify)
    );
    let table = text(&run("sgdisk", &["-p", image_str]));
    assert!(
        table.contains("EF02") && table.contains("EF00") && table.contains("8304"),
        "{table}"
    );

    // ext4 root: e2fsck finds nothing; blkid reads the UUID the manifest names.
    let root = parts.iter().find(|p| p.name == "root").unwrap();
    let root_offset = root.first_lba * 512;
    let fsck = run(
        "e2fsck",
        &["-fn", &format!("{image_str}?offset={root_offset}")],
    );
    assert!(fsck.status.success(), "e2fsck: {}", text(&fsck));
    let blkid = text(&run(
        "blkid",
        &[
            "-p",
            "-O",
            &root_offset.to_string(),
            "-s",
            "UUID",
            "-o",
            "value",
            image_str,
        ],
    ));
    let root_uuid = root.filesystem_uuid.clone().unwrap();
    assert_eq!(blkid.trim(), root_uuid);

    // ESP: fsck.vfat on the partition's bytes; the UEFI loader is there.
    let esp = parts.iter().find(|p| p.name == "esp").unwrap();
    let esp_file = dir.path().join("esp.img");
    let dd = run(
        "dd",
        &[
            &format!("if={image_str}"),
            &format!("of={}", esp_file.display()),
            "bs=512",
            &format!("skip={}", esp.first_lba),
            &format!("count={}", esp.last_lba - esp.first_lba + 1),
            "status=none",
        ],
    );
    assert!(dd.status.success());
    let fat = run("fsck.vfat", &["-n", esp_file.to_str().unwrap()]);
    assert!(fat.status.success(), "fsck.vfat: {}", text(&fat));
    let listing = text(&run(
        "mdir",
        &["-/", "-b", "-i", esp_file.to_str().unwrap(), "::"],
    ));
    assert!(listing.contains("::/EFI/BOOT/BOOTX64.EFI"), "{listing}");
    let esp_uuid = text(&run(
        "blkid",
        &["-s", "UUID", "-o", "value", esp_file.to_str().unwrap()],
    ));
    assert_eq!(Some(esp_uuid.trim().to_string()), esp.filesystem_uuid);

    // BIOS: boot.img in LBA 0 points at core.img in the BIOS boot partition.
    let bytes = std::fs::read(&image).unwrap();
    let bios = parts.iter().find(|p| p.name == "bios-boot").unwrap();
    assert_eq!(
        u64::from_le_bytes(bytes[0x5c..0x64].try_into().unwrap()),
        bios.first_lba
    );
    assert_eq!(bytes[0x1fe..0x200], [0x55, 0xAA]);
    assert_eq!(bytes[446 + 4], 0xEE, "protective MBR entry kept");
    let core = (bios.first_lba * 512) as usize;
    assert_eq!(
        u64::from_le_bytes(bytes[core + 0x1f4..core + 0x1fc].try_into().unwrap()),
        bios.first_lba + 1
    );
    drop(bytes);

    // GRUB files and the command line, read from the root with debugfs.
    let grub_cfg = debugfs(&image, root_offset, "cat /boot/grub/grub.cfg");
    for token in [
        format!("root=UUID={root_uuid}"),
        "console=ttyS0".to_string(),
        "isolcpus=managed_irq,domain,4-N".to_string(),
        "nohz_full=4-N".to_string(),
        "rcu_nocbs=4-N".to_string(),
        "irqaffinity=0-3".to_string(),
    ] {
        assert!(
            grub_cfg.contains(&token),
            "grub.cfg lacks {token}:\n{grub_cfg}"
        );
    }
    assert!(debugfs(&image, root_offset, "ls /boot/grub/i386-pc").contains("normal.mod"));
    assert!(debugfs(&image, root_offset, "ls /boot/grub/x86_64-efi").contains("linux.mod"));

    // fstab by UUID, no build-host device names; identity reset; no secrets.
    let fstab = debugfs(&image, root_offset, "cat /etc/fstab");
    assert!(
        fstab.contains(&format!("UUID={root_uuid} / ext4")),
        "{fstab}"
    );
    assert!(
        !fstab.contains("/dev/loop") && !fstab.contains("/dev/sd"),
        "{fstab}"
    );
    // Nothing but the usual top-level entries: a stray file here (a data
    // folder's README copied in with its files) lands on every instance.
    let top = debugfs(&image, root_offset, "ls -p /");
    let names: Vec<&str> = top
        .lines()
        .filter_map(|l| l.split('/').nth(5))
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
        .collect();
    assert!(names.contains(&"usr") && names.contains(&"etc"), "{top}");
    for name in &names {
        let usual = [
            "bin",
            "boot",
            "dev",
            "etc",
            "home",
            "lib",
            "lib32",
            "lib64",
            "libx32",
            "lost+found",
            "media",
            "mnt",
            "opt",
            "proc",
            "root",
            "run",
            "sbin",
            "srv",
            "sys",
            "tmp",
            "usr",
            "var",
        ]
        .contains(name)
            || name.starts_with("vmlinuz")
            || name.starts_with("initrd.img");
        assert!(usual, "unexpected /{name} in the image's root: {top}");
    }
    let ssh = debugfs(&image, root_offset, "ls /etc/ssh");
    assert!(
        !ssh.contains("ssh_host_"),
        "host keys left in the image: {ssh}"
    );
    // Empty: each instance makes its own. A Debian image has no first-boot
    // units, so it does not ask systemd to count a first boot
    // (build::identity; Arch's keyring unit gets `uninitialized`).
    let machine_id = debugfs(&image, root_offset, "cat /etc/machine-id");
    assert_eq!(machine_id, "");
    let resolv = debugfs(&image, root_offset, "stat /etc/resolv.conf");
    assert!(
        resolv.contains("symlink") || resolv.contains("Fast link dest"),
        "{resolv}"
    );
    let affinity = debugfs(
        &image,
        root_offset,
        "cat /etc/systemd/system.conf.d/90-imgforge-affinity.conf",
    );
    assert!(affinity.contains("CPUAffinity=0-3"), "{affinity}");

    // The initramfs carries the ENA driver; NVMe is built into the kernel.
    let kernel = manifest["kernel_version"].as_str().unwrap();
    let initrd = dir.path().join("initrd.img");
    debugfs(
        &image,
        root_offset,
        &format!("dump /boot/initrd.img-{kernel} {}", initrd.display()),
    );
    let compressed = std::fs::read(&initrd).unwrap();
    let decompressor = match compressed[..4] {
        [0x1f, 0x8b, _, _] => "gzip",
        [0x28, 0xb5, 0x2f, 0xfd] => "zstd",
        _ => panic!(
            "initramfs is neither gzip nor zstd: {:02x?}",
            &compressed[..4]
        ),
    };
    let unpacked = Command::new(decompressor)
        .args(["-dc"])
        .arg(&initrd)
        .output()
        .unwrap();
    let has = |needle: &str| {
        unpacked
            .stdout
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    };
    assert!(
        has("kernel/drivers/net/ethernet/amazon/ena/ena.ko"),
        "no ena.ko in the initramfs"
    );
    let config = debugfs(&image, root_offset, &format!("cat /boot/config-{kernel}"));
    assert!(
        config.contains("CONFIG_BLK_DEV_NVME=y"),
        "NVMe is not built in"
    );

    // inspect reads the same facts back without mounting.
    let inspect = imgforge(&["inspect", image_str, "--json"]);
    assert!(inspect.status.success(), "{}", text(&inspect));
    let info: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(
        info["boot_modes"],
        serde_json::json!({"bios": true, "uefi": true})
    );
    assert_eq!(info["manifest"]["size_class"], "medium");

    // A build of the same package set in another class (this medium one,
    // after the shared small one) reuses the bootstrapped tree: nothing is
    // downloaded or installed again.
    assert_eq!(
        summary["bootstrap_from_cache"], true,
        "the medium build bootstrapped again although the shared small image's tree \
         (tree key {}) was cached; the mirror moved on since it was built? run again",
        small.summary["tree_key"]
    );
    assert!(
        small.manifest["kernel_cmdline"]
            .as_str()
            .unwrap()
            .contains("nohz_full=2-N")
    );
    assert_ne!(
        small.manifest["disk"]["disk_guid"], manifest["disk"]["disk_guid"],
        "each image has its own identity"
    );
}

#[test]
fn bad_input_fails_clearly_and_writes_nothing() {
    let dir = scratch();
    let out_path = dir.path().join("x.raw");
    let out = out_path.to_str().unwrap();
    let cases: [(&[&str], &str); 6] = [
        (
            &["build", "--distro", "gentoo", "-o", out],
            "unknown distro `gentoo`",
        ),
        (
            &["build", "--distro", "arch", "--kernel", "zen", "-o", out],
            "unknown kernel `zen` for arch; choose one of: linux, lts",
        ),
        (
            &[
                "build",
                "--distro",
                "arch",
                "--mirror",
                "http://mirror.example/archlinux",
                "-o",
                out,
            ],
            "lacks the `$repo` placeholder",
        ),
        (
            &["build", "--size-class", "huge", "-o", out],
            "choose one of: small, medium, large, xlarge",
        ),
        (
            &["build", "-o", "/no/such/dir/image.raw"],
            "output directory /no/such/dir does not exist",
        ),
        (
            &["build", "--size", "4Q", "-o", out],
            "cannot understand size `4Q`",
        ),
    ];
    for (args, expected) in cases {
        let result = imgforge(args);
        // Every case is found from the flags before any work: bad input.
        assert_eq!(result.status.code(), Some(2), "{args:?}: {}", text(&result));
        assert!(
            text(&result).contains(expected),
            "{args:?}: {}",
            text(&result)
        );
    }
    let missing_layer = imgforge(&["build", "--layer", "/no/such/layer", "-o", out]);
    assert!(text(&missing_layer).contains("layer folder /no/such/layer does not exist"));
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing written"
    );
}

#[test]
fn missing_host_tool_names_the_package() {
    let dir = scratch();
    for (distro, expected) in [
        (
            "debian",
            "`mmdebstrap` is not installed (install the Debian package `mmdebstrap`",
        ),
        (
            "arch",
            "`pacman` is not installed (install the Debian package `pacman-package-manager`",
        ),
    ] {
        let out = Command::new(IMGFORGE)
            .args(["build", "--distro", distro, "-o"])
            .arg(dir.path().join("x.raw"))
            .env("PATH", dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{distro}: {}", text(&out));
        assert!(text(&out).contains(expected), "{distro}: {}", text(&out));
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn not_root_is_refused() {
    let dir = scratch();
    let out = run(
        "setpriv",
        &[
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            IMGFORGE,
            "build",
            "-o",
            "/tmp/x.raw",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("must run as root"), "{}", text(&out));
    drop(dir);
}

#[test]
fn too_small_size_names_the_minimum() {
    let _heavy = heavy();
    let dir = scratch();
    let out = imgforge(&[
        "build",
        "--size",
        "300M",
        "-o",
        dir.path().join("x.raw").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let message = text(&out);
    assert!(
        message.contains("--size 300M is too small") && message.contains("pass --size"),
        "{message}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing written"
    );
}

fn mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(String::from))
        .filter(|m| Path::new(m).starts_with(dir))
        .collect()
}

fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) {
                found.push(cmdline);
            }
        }
    }
    found
}

/// Ctrl-C while mmdebstrap is installing packages into a tree with /proc,
/// /sys and /dev mounted: imgforge stops it, and leaves no mount, no work
/// directory, no output and no process behind.
#[test]
fn interrupted_bootstrap_leaves_the_host_untouched() {
    let _heavy = heavy();
    let dir = scratch();
    let tmp = dir.path().join("tmp");
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(&tmp).unwrap();
    let output: PathBuf = dir.path().join("out.raw");
    let mut child = Command::new(IMGFORGE)
        .args(["build", "--cache-dir"])
        .arg(&cache)
        .arg("-o")
        .arg(&output)
        .env("TMPDIR", &tmp)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the bootstrap has mounted things in its tree.
    let started = Instant::now();
    while mounts_under(&tmp).is_empty() && started.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !mounts_under(&tmp).is_empty(),
        "mmdebstrap never mounted anything under {}",
        tmp.display()
    );
    std::thread::sleep(Duration::from_secs(2));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "imgforge did not stop within 60 s of Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(
        mounts_under(&tmp).is_empty(),
        "mounts left: {:?}",
        mounts_under(&tmp)
    );
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "work directory left in {}",
        tmp.display()
    );
    assert!(!output.exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty());
    assert!(
        processes_mentioning(tmp.to_str().unwrap()).is_empty(),
        "processes left"
    );
    let cached: Vec<_> = std::fs::read_dir(cache.join("rootfs"))
        .unwrap()
        .filter_map(Result::ok)
        .collect();
    assert!(cached.is_empty(), "a partial tree was cached: {cached:?}");
}

/// A layer that enables a unit the image does not have (a renamed unit, a
/// missing package) fails the build naming the unit and the layer, before
/// `systemctl enable` runs, and leaves no image.
#[test]
fn a_layer_enabling_a_missing_unit_fails_naming_it() {
    if !prerequisites("a_layer_enabling_a_missing_unit_fails_naming_it", &[BUILD]) {
        return;
    }
    // The shared image's tree is in the cache: this build reaches configure fast.
    let _small = common::image::debian_small();
    let _heavy = heavy();
    let dir = scratch();
    let layer = dir.path().join("renamed");
    std::fs::create_dir_all(&layer).unwrap();
    std::fs::write(
        layer.join("layer.toml"),
        "enable = [\"cloud-init-network.service\"]\n",
    )
    .unwrap();
    let image = dir.path().join("image.raw");
    let out = imgforge(&[
        "build",
        "--layer",
        layer.to_str().unwrap(),
        "-o",
        image.to_str().unwrap(),
    ]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("layer renamed enables cloud-init-network.service, which is not in the image"),
        "{all}"
    );
    assert!(!image.exists(), "an image was left");
}
