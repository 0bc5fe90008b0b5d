//! An Arch-layout image built by `imgforge build --distro arch` from a
//! fixture repository, then booted by `imgforge boot-test` under BIOS and
//! UEFI: as far as a machine without an Arch mirror gets.
//!
//! The fixture: a Debian bookworm userland (mmdebstrap from the host's apt
//! sources: systemd, udev, the cloud kernel, GRUB, initramfs-tools,
//! OpenSSH, sudo, chrony, curl, Debian's pacman) repackaged with `makepkg`
//! (as `nobody`) into Arch-format packages named as Arch's are, signed by a
//! throw-away key and served by `repo-add` as `file://` repositories `core`
//! and `extra`. `imgforge build` takes them through its real Arch path:
//! pacman with `SigLevel = Required` and `--keyring`, `filesystem` first,
//! the API filesystems mounted for alpm hooks, the initramfs hook chrooted,
//! the initrd and kernel-config checks, Arch's grub.cfg paths, the layers'
//! units enabled, the build keyring scrubbed. The boot then runs the
//! first-boot units, pacman's keyring unit among them.
//!
//! What the fixture fakes (each a shim a real Arch mirror does not need):
//!
//! - every package's files are Debian's, already configured by dpkg (no
//!   package scriptlets run); what no named package claims goes into one
//!   package `debian-userland`, which `base` depends on;
//! - `filesystem` keeps Debian's merged-/usr layout (/usr/sbin a folder,
//!   /lib64 to usr/lib64), and the userland has Arch's `wheel` group (Arch's
//!   `filesystem` ships it; Debian has none);
//! - `linux`: Debian's cloud kernel at Arch's /usr/lib/modules/VERSION/vmlinuz
//!   with a `pkgbase` file, and Debian's /boot/config-VERSION appended to it
//!   as an IKCONFIG block (Debian builds without CONFIG_IKCONFIG; Arch's
//!   kernel carries it inside its compressed payload), and as
//!   /usr/lib/modules/VERSION/config, which the mkinitcpio wrapper puts at
//!   /boot/config-VERSION while mkinitramfs runs (it reads it there);
//! - `mkinitcpio`: Arch's install hook (`Type = Path`, `usr/lib/modules/*/
//!   vmlinuz`, `NeedsTargets`) and its script, which copies the kernel to
//!   /boot/vmlinuz-PKGBASE as Arch's does, but /usr/bin/mkinitcpio is a
//!   wrapper over Debian's mkinitramfs that reads MODULES from
//!   /etc/mkinitcpio.conf.d (imgforge's drop-in) and ignores HOOKS;
//! - `openssh` and `chrony`: Debian's ssh.service and chrony.service renamed
//!   to Arch's sshd.service and chronyd.service (their Alias lines dropped);
//!   the host keys and unit symlinks dpkg made are left out;
//! - `pacman`: Debian's pacman-package-manager plus /usr/share/makepkg/util
//!   copied from the host's makepkg (pacman-key sources it; Arch's pacman
//!   ships it, Debian's makepkg package does), and Arch's pacman.conf;
//! - `archlinux-keyring`: one test signing key (archlinux-trusted, no master
//!   keys: the keyring chain is arch_bootstrap.rs's subject), at Arch's
//!   usr/share/pacman/keyrings and at usr/share/keyrings, where Debian's
//!   pacman-key reads it; `base` depends on it and on `pacman`, as Arch's.
//!
//! Cost, measured here (2 cores, shared with other work): staging tree
//! 57-105 s, makepkg and repo-add 34-94 s, the build 15-70 s, the two TCG
//! boots 233-303 s; the whole file 5 min 49 s and 5 min 54 s when the
//! machine was quiet, 7 min 54 s and 8 min 52 s while others built and
//! booted. `IMGFORGE_TEST_KEEP=1`
//! keeps the fixture folder (/var/tmp/imgforge-arch-boot-PID) for a look.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Instant;

use serde_json::Value;

use common::gpg::GpgHome;
use common::qemu::{assert_nothing_left, boot_test};
use common::{BOOT, IMGFORGE, Need, heavy, prerequisites, text};

const TOOLS: &[Need] = &[
    Need::Root,
    Need::Tool("mmdebstrap"),
    Need::Tool("pacman"),
    Need::Tool("makepkg"),
    Need::Tool("repo-add"),
    Need::Tool("bsdtar"),
    Need::Tool("fakeroot"),
    Need::Tool("zstd"),
    Need::Tool("gpg"),
    Need::Tool("setpriv"),
    Need::Tool("debugfs"),
];

/// The Debian packages of the staging tree (with their dependencies).
const DEBIAN_PACKAGES: &str = "initramfs-tools,systemd-sysv,systemd-resolved,udev,dbus,\
openssh-server,chrony,curl,ca-certificates,sudo,iproute2,ethtool,less,procps,fdisk,e2fsprogs,\
linux-image-cloud-amd64,grub-pc-bin,grub-efi-amd64-bin,grub2-common,pacman-package-manager,passwd,zstd";

/// One Arch-format package of the fixture: the files of these Debian
/// packages (and everything under these path prefixes) from the staging
/// tree, plus what [`extra_files`] adds.
struct Repackaged {
    name: &'static str,
    repo: &'static str,
    debs: &'static [&'static str],
    prefixes: &'static [&'static str],
    depends: &'static [&'static str],
}

const USERLAND: &str = "debian-userland";

const PACKAGES: &[Repackaged] = &[
    Repackaged {
        name: "filesystem",
        repo: "core",
        debs: &[],
        prefixes: &[],
        depends: &[],
    },
    Repackaged {
        name: USERLAND,
        repo: "core",
        debs: &[],
        prefixes: &[],
        depends: &["filesystem"],
    },
    Repackaged {
        name: "base",
        repo: "core",
        debs: &[],
        prefixes: &[],
        // As Arch's base: pacman and the keyring come with it.
        depends: &["filesystem", USERLAND, "pacman", "archlinux-keyring"],
    },
    Repackaged {
        name: "linux",
        repo: "core",
        debs: &[],
        prefixes: &["usr/lib/modules/"],
        depends: &[USERLAND],
    },
    Repackaged {
        name: "mkinitcpio",
        repo: "core",
        debs: &["initramfs-tools", "initramfs-tools-core"],
        prefixes: &[],
        depends: &[USERLAND],
    },
    Repackaged {
        name: "grub",
        repo: "core",
        debs: &[
            "grub-common",
            "grub2-common",
            "grub-pc-bin",
            "grub-efi-amd64-bin",
        ],
        prefixes: &["usr/lib/grub/"],
        depends: &[USERLAND],
    },
    Repackaged {
        name: "openssh",
        repo: "core",
        debs: &["openssh-server", "openssh-client", "openssh-sftp-server"],
        prefixes: &[],
        depends: &[USERLAND],
    },
    Repackaged {
        name: "sudo",
        repo: "core",
        debs: &["sudo"],
        prefixes: &[],
        depends: &[USERLAND],
    },
    Repackaged {
        name: "chrony",
        repo: "extra",
        debs: &["chrony"],
        prefixes: &[],
        depends: &[USERLAND],
    },
    Repackaged {
        name: "curl",
        repo: "core",
        debs: &["curl"],
        prefixes: &[],
        depends: &[USERLAND],
    },
    Repackaged {
        name: "iproute2",
        repo: "core",
        debs: &["iproute2"],
        prefixes: &[],
        depends: &[USERLAND],
    },
    Repackaged {
        name: "ethtool",
        repo: "extra",
        debs: &["ethtool"],
        prefixes: &[],
        depends: &[USERLAND],
    },
    Repackaged {
        name: "less",
        repo: "core",
        debs: &["less"],
        prefixes: &[],
        depends: &[USERLAND],
    },
    Repackaged {
        name: "e2fsprogs",
        repo: "core",
        debs: &["e2fsprogs"],
        prefixes: &[],
        depends: &[USERLAND],
    },
    Repackaged {
        name: "pacman",
        repo: "core",
        debs: &["pacman-package-manager", "libalpm13"],
        prefixes: &[],
        depends: &[USERLAND],
    },
    // As Arch's: the keyring depends on pacman.
    Repackaged {
        name: "archlinux-keyring",
        repo: "core",
        debs: &[],
        prefixes: &[],
        depends: &["pacman"],
    },
];

/// Left out of every package: what dpkg generated for this one tree (host
/// keys, unit enablement, the kernel's files in /boot, which `linux` and
/// the initramfs hook put back at Arch's paths) and the API mount points'
/// contents.
const LEFT_OUT: &[&str] = &[
    "boot/",
    "dev/",
    "proc/",
    "sys/",
    "run/",
    "tmp/",
    "etc/systemd/system/",
    "etc/ssh/ssh_host_",
    "etc/machine-id",
    "var/lib/dbus/machine-id",
    "var/cache/apt/",
    "var/lib/apt/lists/",
];

/// Arch's mkinitcpio install hook, as its package ships it.
const MKINITCPIO_HOOK: &str = "[Trigger]\nType = Path\nOperation = Install\nOperation = Upgrade\n\
Target = usr/lib/modules/*/vmlinuz\nTarget = usr/lib/initcpio/*\n\n[Action]\n\
Description = Updating linux initcpios...\nWhen = PostTransaction\n\
Exec = /usr/share/libalpm/scripts/mkinitcpio install\nNeedsTargets\n";

/// The hook's script, as Arch's for the install case: the kernel to
/// /boot/vmlinuz-PKGBASE, then the initramfs.
const MKINITCPIO_SCRIPT: &str = r#"#!/bin/sh -e
# imgforge fixture: Arch's mkinitcpio install script, install case only.
while read -r line; do
  case "$line" in
    usr/lib/modules/*/vmlinuz) ;;
    *) continue ;;
  esac
  dir=/${line%/vmlinuz}
  read -r pkgbase < "$dir/pkgbase"
  install -Dm644 "/$line" "/boot/vmlinuz-$pkgbase"
  mkinitcpio -k "${dir##*/}" -g "/boot/initramfs-$pkgbase.img"
done
"#;

/// /usr/bin/mkinitcpio: Debian's mkinitramfs with MODULES from
/// mkinitcpio's config and drop-ins (sourced, as mkinitcpio does).
const MKINITCPIO_WRAPPER: &str = r#"#!/bin/bash -e
# imgforge fixture: mkinitcpio's -k and -g over Debian's mkinitramfs.
while getopts k:g: opt; do
  case $opt in k) kver=$OPTARG ;; g) out=$OPTARG ;; *) exit 2 ;; esac
done
MODULES=()
for conf in /etc/mkinitcpio.conf /etc/mkinitcpio.conf.d/*.conf; do
  [ -f "$conf" ] && . "$conf"
done
confdir=$(mktemp -d)
trap 'rm -rf "$confdir"' EXIT
cp -a /etc/initramfs-tools/. "$confdir/"
printf '%s\n' "${MODULES[@]}" >> "$confdir/modules"
# mkinitramfs reads the kernel's config from /boot; Arch keeps none there.
config=/boot/config-$kver
if [ ! -e "$config" ]; then
  cp "/usr/lib/modules/$kver/config" "$config"
  trap 'rm -rf "$confdir" "$config"' EXIT
fi
echo "==> Building $out for $kver (mkinitramfs; MODULES: ${MODULES[*]})"
mkinitramfs -d "$confdir" -o "$out" "$kver"
"#;

/// pacman's configuration as Arch's pacman package ships it.
const PACMAN_CONF: &str = "[options]\nArchitecture = auto\nSigLevel = Required DatabaseOptional\n\
LocalFileSigLevel = Optional\n\n[core]\nInclude = /etc/pacman.d/mirrorlist\n\n\
[extra]\nInclude = /etc/pacman.d/mirrorlist\n";

fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        text(&out)
    );
    out
}

/// The built repository and what the build needs with it.
struct Fixture {
    /// `file://BASE/repo/$repo/os/$arch`.
    mirror: String,
    base: PathBuf,
    /// The built image (built once, by the first test that needs it).
    image: PathBuf,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

/// Staging tree, packages, repository and image, once per test process.
fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let base = Path::new("/var/tmp").join(format!("imgforge-arch-boot-{}", std::process::id()));
        fs::create_dir_all(&base).unwrap();
        if std::env::var_os("IMGFORGE_TEST_KEEP").is_none() {
            common::remove_at_exit(&base);
        }
        let started = Instant::now();
        let staging = staging_tree(&base);
        eprintln!("staging tree: {:.0} s", started.elapsed().as_secs_f64());
        let started = Instant::now();
        let keyring = make_keyring(&base);
        let mirror = make_repository(&base, &staging, &keyring);
        fs::remove_dir_all(&staging).unwrap();
        eprintln!("repository: {:.0} s", started.elapsed().as_secs_f64());
        let started = Instant::now();
        let image = base.join("arch.raw");
        build_image(&base, &mirror, &keyring.dir, &image);
        eprintln!("build: {:.0} s", started.elapsed().as_secs_f64());
        Fixture {
            mirror,
            base,
            image,
        }
    })
}

/// The host's apt sources, as mmdebstrap takes them (file paths).
fn host_sources() -> Vec<String> {
    let mut files: Vec<String> = Vec::new();
    if Path::new("/etc/apt/sources.list").is_file() {
        files.push("/etc/apt/sources.list".into());
    }
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<String> = entries
            .flatten()
            .map(|e| e.path().display().to_string())
            .filter(|p| p.ends_with(".list") || p.ends_with(".sources"))
            .collect();
        more.sort();
        files.extend(more);
    }
    files
}

/// A Debian bookworm tree with [`DEBIAN_PACKAGES`] (no documentation), and
/// Arch's `wheel` group.
fn staging_tree(base: &Path) -> PathBuf {
    let staging = base.join("staging");
    let mut command = Command::new("nice");
    command
        .args(["mmdebstrap", "--variant=minbase", "--mode=root", "--quiet"])
        .arg(format!("--include={DEBIAN_PACKAGES}"));
    for exclude in ["man", "doc", "locale", "info"] {
        command.arg(format!("--dpkgopt=path-exclude=/usr/share/{exclude}/*"));
    }
    command.arg("bookworm").arg(&staging).args(host_sources());
    let out = command.output().unwrap();
    assert!(out.status.success(), "mmdebstrap: {}", text(&out));
    run(
        "chroot",
        &[staging.to_str().unwrap(), "groupadd", "-r", "wheel"],
    );
    staging
}

struct Keyring {
    dir: PathBuf,
    gnupg: GpgHome,
    fingerprint: String,
}

/// One signing key, no expiry, in archlinux-trusted: pacman-key
/// --populate signs it locally, so it is valid for the packages it signs.
fn make_keyring(base: &Path) -> Keyring {
    let gnupg = GpgHome::create(&base.join("gnupg"));
    let uid = "fixture packager <packager@imgforge.invalid>";
    let fingerprint = gnupg.generate_key(uid, "sign", "never");
    let dir = base.join("keyring");
    gnupg.write_pacman_keyring(&dir, &[&fingerprint], &[&fingerprint]);
    Keyring {
        dir,
        gnupg,
        fingerprint,
    }
}

/// `path` (as dpkg lists it, e.g. /lib/x) relative to the staging root,
/// its folder's symlinks resolved (bookworm's /lib is usr/lib).
fn canonical(staging: &Path, path: &str) -> Option<String> {
    let path = Path::new(path.trim_start_matches('/'));
    let parent = fs::canonicalize(staging.join(path.parent()?)).ok()?;
    let full = parent.join(path.file_name()?);
    let relative = full.strip_prefix(staging).ok()?;
    Some(relative.display().to_string())
}

/// The files (not folders) of Debian package `deb` in the staging tree.
fn files_of(staging: &Path, deb: &str) -> Vec<String> {
    let admindir = staging.join("var/lib/dpkg");
    let out = run(
        "dpkg-query",
        &["--admindir", admindir.to_str().unwrap(), "-L", deb],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| canonical(staging, l))
        // The top level (bookworm's /lib, /bin symlinks) is `filesystem`'s.
        .filter(|p| p.contains('/'))
        .filter(|p| fs::symlink_metadata(staging.join(p)).is_ok_and(|m| !m.is_dir()))
        .collect()
}

/// Every path of the staging tree below its top level (`find` order).
fn all_paths(staging: &Path) -> Vec<String> {
    let out = run(
        "find",
        &[
            staging.to_str().unwrap(),
            "-mindepth",
            "2",
            "-printf",
            "%P\n",
        ],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The staging tree split into one path list per package of [`PACKAGES`].
fn split(staging: &Path) -> Vec<(&'static Repackaged, Vec<String>)> {
    let left_out = |p: &str| {
        LEFT_OUT
            .iter()
            .any(|l| p.starts_with(l) || format!("{p}/") == *l)
    };
    let everything = all_paths(staging);
    let mut claimed = BTreeSet::new();
    let mut lists = Vec::new();
    for spec in PACKAGES {
        let mut list: Vec<String> = spec
            .debs
            .iter()
            .flat_map(|deb| files_of(staging, deb))
            .collect();
        list.extend(
            everything
                .iter()
                .filter(|p| spec.prefixes.iter().any(|pre| p.starts_with(pre)))
                .cloned(),
        );
        if spec.name == "filesystem" {
            let top = run(
                "find",
                &[
                    staging.to_str().unwrap(),
                    "-mindepth",
                    "1",
                    "-maxdepth",
                    "1",
                    "-printf",
                    "%P\n",
                ],
            );
            // Not Debian's /vmlinuz and /initrd.img links: Arch has none.
            list.extend(
                String::from_utf8_lossy(&top.stdout)
                    .lines()
                    .filter(|p| !p.starts_with("vmlinuz") && !p.starts_with("initrd.img"))
                    .map(str::to_string),
            );
        }
        list.retain(|p| !left_out(p) || spec.name == "filesystem");
        list.sort();
        list.dedup();
        claimed.extend(list.iter().cloned());
        lists.push((spec, list));
    }
    let rest: Vec<String> = everything
        .into_iter()
        .filter(|p| !claimed.contains(p) && !left_out(p))
        .collect();
    for (spec, list) in &mut lists {
        if spec.name == USERLAND {
            *list = rest.clone();
        }
    }
    lists
}

/// The files a package adds at Arch's paths (written into `extra`).
fn extra_files(name: &str, staging: &Path, extra: &Path, keyring: &Keyring) {
    let write = |path: &str, bytes: &[u8], mode: u32| {
        let path = extra.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, bytes).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    };
    let renamed_unit = |from: &str, to: &str| {
        let unit = fs::read_to_string(staging.join("usr/lib/systemd/system").join(from)).unwrap();
        let unit: String = unit
            .lines()
            .filter(|l| !l.starts_with("Alias="))
            .map(|l| format!("{l}\n"))
            .collect();
        write(
            &format!("usr/lib/systemd/system/{to}"),
            unit.as_bytes(),
            0o644,
        );
    };
    match name {
        "linux" => {
            let version = kernel_version(staging);
            let mut vmlinuz = fs::read(staging.join(format!("boot/vmlinuz-{version}"))).unwrap();
            let config = fs::read(staging.join(format!("boot/config-{version}"))).unwrap();
            let mut gz = Command::new("gzip")
                .args(["-9", "-n", "-c"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            gz.stdin.take().unwrap().write_all(&config).unwrap();
            let gzipped = gz.wait_with_output().unwrap().stdout;
            vmlinuz.extend_from_slice(b"IKCFG_ST");
            vmlinuz.extend_from_slice(&gzipped);
            vmlinuz.extend_from_slice(b"IKCFG_ED");
            write(
                &format!("usr/lib/modules/{version}/vmlinuz"),
                &vmlinuz,
                0o644,
            );
            write(
                &format!("usr/lib/modules/{version}/pkgbase"),
                b"linux\n",
                0o644,
            );
            write(&format!("usr/lib/modules/{version}/config"), &config, 0o644);
        }
        "mkinitcpio" => {
            write(
                "usr/share/libalpm/hooks/90-mkinitcpio-install.hook",
                MKINITCPIO_HOOK.as_bytes(),
                0o644,
            );
            write(
                "usr/share/libalpm/scripts/mkinitcpio",
                MKINITCPIO_SCRIPT.as_bytes(),
                0o755,
            );
            write("usr/bin/mkinitcpio", MKINITCPIO_WRAPPER.as_bytes(), 0o755);
            write(
                "etc/mkinitcpio.conf",
                b"MODULES=()\nHOOKS=(base udev autodetect modconf block filesystems fsck)\n",
                0o644,
            );
        }
        "openssh" => renamed_unit("ssh.service", "sshd.service"),
        "chrony" => renamed_unit("chrony.service", "chronyd.service"),
        "pacman" => {
            write("etc/pacman.conf", PACMAN_CONF.as_bytes(), 0o644);
            // pacman-key's helpers: Arch's pacman ships them, Debian's
            // makepkg package does (the host's, the same pacman release).
            let util = extra.join("usr/share/makepkg");
            fs::create_dir_all(&util).unwrap();
            run(
                "cp",
                &["-a", "/usr/share/makepkg/util", util.to_str().unwrap()],
            );
        }
        "archlinux-keyring" => {
            for file in ["archlinux.gpg", "archlinux-trusted", "archlinux-revoked"] {
                let bytes = fs::read(keyring.dir.join(file)).unwrap();
                write(&format!("usr/share/pacman/keyrings/{file}"), &bytes, 0o644);
                write(&format!("usr/share/keyrings/{file}"), &bytes, 0o644);
            }
        }
        _ => {}
    }
}

/// The staging tree's kernel version (its one /boot/vmlinuz-*).
fn kernel_version(staging: &Path) -> String {
    fs::read_dir(staging.join("boot"))
        .unwrap()
        .flatten()
        .find_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_prefix("vmlinuz-")
                .map(str::to_string)
        })
        .expect("a kernel in the staging tree")
}

/// Paths a package's own extra files replace (dropped from its payload).
const REPLACED: &[&str] = &[
    "usr/lib/systemd/system/ssh.service",
    "usr/lib/systemd/system/chrony.service",
    "etc/pacman.conf",
];

/// Makes each package with makepkg (as nobody), signs it and adds it to its
/// repository; returns the mirror URL.
fn make_repository(base: &Path, staging: &Path, keyring: &Keyring) -> String {
    let build = base.join("build");
    let pkgdest = base.join("pkgs");
    fs::create_dir_all(&build).unwrap();
    fs::create_dir_all(&pkgdest).unwrap();
    for (spec, mut list) in split(staging) {
        list.retain(|p| !REPLACED.contains(&p.as_str()));
        let dir = build.join(spec.name);
        fs::create_dir_all(dir.join("extra")).unwrap();
        let listing = dir.join("list");
        fs::write(&listing, list.join("\n") + "\n").unwrap();
        run(
            "tar",
            &[
                "--create",
                "--numeric-owner",
                "--xattrs",
                "--no-recursion",
                "--verbatim-files-from",
                "-C",
                staging.to_str().unwrap(),
                "-T",
                listing.to_str().unwrap(),
                "-f",
                dir.join("payload.tar").to_str().unwrap(),
            ],
        );
        extra_files(spec.name, staging, &dir.join("extra"), keyring);
        let pkgbuild = format!(
            "pkgname={}\npkgver=1\npkgrel=1\npkgdesc='imgforge fixture: Debian files, Arch layout'\n\
             arch=(x86_64)\nlicense=(custom)\noptions=(!strip !debug !zipman !purge emptydirs)\n\
             depends=({})\n\
             package() {{\n  bsdtar --numeric-owner -xpf \"$startdir/payload.tar\" -C \"$pkgdir\"\n  \
             cp -a \"$startdir/extra/.\" \"$pkgdir/\"\n}}\n",
            spec.name,
            spec.depends.join(" ")
        );
        fs::write(dir.join("PKGBUILD"), pkgbuild).unwrap();
    }
    run("chown", &["-R", "nobody:nogroup", build.to_str().unwrap()]);
    run("chown", &["nobody:nogroup", pkgdest.to_str().unwrap()]);
    let repo = base.join("repo");
    for spec in PACKAGES {
        makepkg(&build.join(spec.name), &pkgdest);
        let file = pkgdest.join(format!("{}-1-1-x86_64.pkg.tar.zst", spec.name));
        let dir = repo.join(spec.repo).join("os/x86_64");
        fs::create_dir_all(&dir).unwrap();
        let target = dir.join(file.file_name().unwrap());
        fs::rename(&file, &target).unwrap();
        let target = target.to_str().unwrap();
        keyring.gnupg.run(&[
            "--local-user",
            &keyring.fingerprint,
            "--detach-sign",
            "--no-armor",
            "--output",
            &format!("{target}.sig"),
            target,
        ]);
        let db = dir.join(format!("{}.db.tar.gz", spec.repo));
        run("repo-add", &["--quiet", db.to_str().unwrap(), target]);
    }
    fs::remove_dir_all(&build).unwrap();
    keyring.gnupg.stop_agent();
    format!("file://{}/$repo/os/$arch", repo.display())
}

fn makepkg(dir: &Path, pkgdest: &Path) {
    let out = Command::new("nice")
        .args([
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "makepkg",
            "--force",
            "--nodeps",
            "--noconfirm",
        ])
        .current_dir(dir)
        .env("HOME", dir)
        .env("PKGDEST", pkgdest)
        .env("BUILDDIR", dir.join("work"))
        .env("SRCDEST", dir.join("src"))
        .env("PKGEXT", ".pkg.tar.zst")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "makepkg {}: {}",
        dir.display(),
        text(&out)
    );
}

/// `imgforge build --distro arch` against the fixture repository.
fn build_image(base: &Path, mirror: &str, keyring: &Path, image: &Path) {
    let out = Command::new("nice")
        .arg(IMGFORGE)
        .args(["build", "--distro", "arch", "--mirror", mirror, "--keyring"])
        .arg(keyring)
        .arg("--cache-dir")
        .arg(base.join("cache"))
        .args(["--seed", "arch-boot", "--json", "-o"])
        .arg(image)
        .env("TMPDIR", base)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "imgforge build --distro arch:\n{}",
        text(&out)
    );
}

/// The byte offset of the image's root partition, from its manifest.
fn root_offset(manifest: &Value) -> u64 {
    let root = manifest["disk"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "root")
        .expect("a root partition in the manifest");
    root["first_lba"].as_u64().unwrap() * 512
}

/// `debugfs -R REQUEST` on the image's root filesystem (no mount).
fn debugfs(image: &Path, offset: u64, request: &str) -> Output {
    Command::new("debugfs")
        .arg("-R")
        .arg(request)
        .arg(format!("{}?offset={offset}", image.display()))
        .output()
        .unwrap()
}

fn manifest(image: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(format!("{}.json", image.display())).unwrap()).unwrap()
}

const NEEDS: &[&[Need]] = &[TOOLS];

#[test]
fn fixture_repository_builds_an_arch_layout_image() {
    if !prerequisites("fixture_repository_builds_an_arch_layout_image", NEEDS) {
        return;
    }
    let _heavy = heavy();
    let fixture = fixture();
    let image = &fixture.image;
    let manifest = manifest(image);
    assert_eq!(manifest["distro"], "arch");
    let packages = manifest["packages"].as_array().unwrap();
    for want in [
        "filesystem",
        "base",
        "linux",
        "mkinitcpio",
        "grub",
        "openssh",
        "pacman",
        "archlinux-keyring",
    ] {
        assert!(
            packages.iter().any(|p| p["name"] == want),
            "{want}: {packages:?}"
        );
    }
    // The SBOM lists pacman's packages (alpm purls), not the dpkg database
    // the fixture's repackaged Debian userland also carries.
    assert_eq!(manifest["package_database"], "pacman");
    let sbom_path = format!("{}.cdx.json", image.display());
    let sbom: Value = serde_json::from_str(&fs::read_to_string(&sbom_path).unwrap()).unwrap();
    let purls: Vec<&str> = sbom["components"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["purl"].as_str())
        .collect();
    assert!(
        purls.iter().all(|p| p.starts_with("pkg:alpm/arch/")),
        "{purls:?}"
    );
    assert_eq!(purls.len(), packages.len(), "{purls:?}");
    let offset = root_offset(&manifest);
    let cat = |path: &str| debugfs(image, offset, &format!("cat {path}")).stdout;

    // GRUB with Arch's paths: the kernel and initramfs the hook made.
    let grub_cfg = String::from_utf8(cat("/boot/grub/grub.cfg")).unwrap();
    let lines = |word: &str| -> Vec<String> {
        grub_cfg
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with(word))
            .map(|l| l.split_whitespace().nth(1).unwrap_or_default().to_string())
            .collect()
    };
    let (kernels, initrds) = (lines("linux "), lines("initrd "));
    assert!(
        !kernels.is_empty() && kernels.iter().all(|k| k == "/boot/vmlinuz-linux"),
        "{grub_cfg}"
    );
    assert!(
        !initrds.is_empty() && initrds.iter().all(|i| i == "/boot/initramfs-linux.img"),
        "{grub_cfg}"
    );
    // The hook copied the package's kernel, IKCONFIG block and all.
    let vmlinuz = cat("/boot/vmlinuz-linux");
    let config = imgforge::distro::arch::extract_ikconfig(&vmlinuz).expect("IKCONFIG");
    assert!(
        config.contains("CONFIG_BLK_DEV_NVME="),
        "no NVMe in the kernel config"
    );
    // The initramfs (mkinitramfs under the mkinitcpio hook) carries the
    // drop-in's MODULES.
    let initramfs = imgforge::initramfs::parse(&cat("/boot/initramfs-linux.img")).unwrap();
    // ena is a network driver: MODULES=most leaves it out, the drop-in's
    // MODULES=(... ena ...) puts it in.
    assert!(
        initramfs.files.iter().any(|f| f.ends_with("/ena.ko")
            || f.ends_with("/ena.ko.zst")
            || f.ends_with("/ena.ko.xz")),
        "ena.ko not in the initramfs ({} files)",
        initramfs.files.len()
    );
    // The build's keyring is not in the image; the instance makes its own.
    let gnupg = text(&debugfs(image, offset, "ls /etc/pacman.d/gnupg"));
    assert!(gnupg.contains("File not found"), "{gnupg}");
    let mirrorlist = String::from_utf8(cat("/etc/pacman.d/mirrorlist")).unwrap();
    assert!(
        mirrorlist.contains(&format!("Server = {}", fixture.mirror)),
        "{mirrorlist}"
    );
    // Arch's unit names enabled, and an identity that counts as a first boot.
    let wants = text(&debugfs(
        image,
        offset,
        "ls -l /etc/systemd/system/multi-user.target.wants",
    ));
    for unit in [
        "imgforge-pacman-init.service",
        "sshd.service",
        "chronyd.service",
    ] {
        assert!(wants.contains(unit), "{unit} not enabled: {wants}");
    }
    let machine_id = String::from_utf8(cat("/etc/machine-id")).unwrap();
    assert_eq!(machine_id.trim(), "uninitialized");
}

#[test]
fn fixture_image_boots_under_bios_and_uefi_and_runs_the_keyring_unit() {
    if !prerequisites(
        "fixture_image_boots_under_bios_and_uefi_and_runs_the_keyring_unit",
        &[TOOLS, BOOT],
    ) {
        return;
    }
    let _heavy = heavy();
    let fixture = fixture();
    let tmp = fixture.base.join("boot-tmp");
    fs::create_dir_all(&tmp).unwrap();
    let boot = boot_test(&tmp, &fixture.image, &["--firmware", "both"]);
    assert!(boot.ok, "boot-test failed:\n{}", boot.output);
    let results = boot.summary["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{:#}", boot.summary);
    for result in results {
        let units = result["report"]["first_boot_units"]
            .as_str()
            .unwrap_or_default();
        assert!(
            units.contains("imgforge-pacman-init.service=ran"),
            "{}: first-boot units {units:?}",
            result["firmware"]
        );
        // The other first-boot units ran too (each boot is a first boot).
        let not_ran: Vec<&str> = units
            .split_whitespace()
            .filter(|u| !u.ends_with("=ran"))
            .collect();
        assert!(
            not_ran.is_empty(),
            "{}: {not_ran:?} of {units:?}",
            result["firmware"]
        );
        eprintln!("{}: first-boot units {units}", result["firmware"]);
    }
    eprintln!("boot-test, both firmwares: {:.0} s", boot.seconds);
    assert_nothing_left(&tmp);
}
