//! imgforge's own Arch bootstrap (`imgforge::distro::arch`), offline,
//! against tiny Arch-format packages made here with `makepkg` (run as
//! `nobody`: makepkg refuses root) and `repo-add`, served as `file://`
//! repositories `core` and `extra`:
//!
//! - `filesystem`: the first package (a few folders, /etc/os-release, the
//!   usr-merge symlinks);
//! - `testshell`: /usr/bin/sh (the host's dash and its libraries), which
//!   scriptlets and hooks need inside the tree;
//! - `scripted`: a post_install scriptlet that reads /proc/self/stat and
//!   writes /scripted-marker: proof that it ran chrooted with /proc mounted;
//! - `hooked`: ships an alpm hook (usr/share/libalpm/hooks) that writes
//!   /hook-marker when `hooked` is installed;
//! - `archlinux-keyring`: the test key as an Arch keyring package, for the
//!   default keyring path (host keyring, then the mirror's keyring package);
//! - `linux`, `linux-lts`: /boot/vmlinuz-NAME and an alpm hook in
//!   mkinitcpio's place, failing for `linux` (pacman still exits 0), writing
//!   the initramfs for `linux-lts`.
//!
//! Runs: unsigned (`SigLevel = Never`, default keyring path), signed with a
//! throw-away key under `Required` (the `--keyring` path), a tampered
//! package (refused, with the clear error), a failed initramfs hook (the
//! bootstrap fails, no archive), an unreachable mirror (fails
//! fast, leaves nothing), and a missing host tool (names its package).
//!
//! Needs root (pacman installs as root, mounts /proc) and the host tools
//! (`.ci/setup` installs them): under CI=true a missing one fails the test;
//! elsewhere the test says loudly that it did not run.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use imgforge::data::DataDir;
use imgforge::distro::arch::{Arch, SigLevel};
use imgforge::distro::{BootstrapJob, Distro, DistroError, SourceOptions, Sources, read_data};
use imgforge::sys::progress::Progress;
use imgforge::sys::workdir::mounts_below;

mod common;

use common::gpg::GpgHome;
use common::{IMGFORGE, Need, heavy, prerequisites};

const TOOLS: &[&str] = &[
    "pacman",
    "pacman-key",
    "makepkg",
    "repo-add",
    "bsdtar",
    "fakeroot",
    "zstd",
    "gpg",
    "gpgconf",
    "setpriv",
    "unshare",
    "tar",
    "dash",
];

/// Root and every tool of [`TOOLS`]: true when the test can run.
fn ready(test: &str) -> bool {
    let mut needs = vec![Need::Root];
    needs.extend(TOOLS.iter().map(|t| Need::Tool(t)));
    prerequisites(test, &[&needs])
}

macro_rules! skip_unless_ready {
    ($test:literal) => {
        if !ready($test) {
            return;
        }
    };
}

fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The built repositories, made once per test process.
struct Fixture {
    /// `file://…/$repo/os/$arch` of the three repository sets.
    unsigned: String,
    signed: String,
    tampered: String,
    /// A keyring folder with the test keys (the --keyring form), the
    /// packager key renewed.
    keyring: PathBuf,
    /// The same keys with the packager key expired.
    starting_keyring: PathBuf,
    /// A third-party repository `tools` for `--repository`: its Server URL
    /// and its own signing key (armored), apart from the Arch keys.
    tools: ToolsRepository,
}

struct ToolsRepository {
    server: String,
    key: PathBuf,
    fingerprint: String,
    /// A local package (`--package-file`) depending on `localdep` (extra).
    local_package: PathBuf,
}

/// `tools`' packages: `toolbox` and `extratool` signed with the
/// repository's key, `rogue` left unsigned; `localtool` is a package file
/// only.
const TOOLS_PACKAGES: &[PackageSpec] = &[
    PackageSpec {
        name: "toolbox",
        repo: "tools",
        depends: &["testshell"],
        install: None,
    },
    // Installed only by the steps' pacman, from the synced databases.
    PackageSpec {
        name: "extratool",
        repo: "tools",
        depends: &["testshell"],
        install: None,
    },
    PackageSpec {
        name: "rogue",
        repo: "tools",
        depends: &["testshell"],
        install: None,
    },
    PackageSpec {
        name: "localtool",
        repo: "",
        depends: &["localdep"],
        install: None,
    },
];

/// The `tools` repository (`BASE/tools/$arch`), signed by a key of its own.
fn build_tools_repository(base: &Path, keyring: &Path) -> ToolsRepository {
    let gnupg = GpgHome::create(&base.join("tools-gnupg"));
    let fingerprint = gnupg.generate_key("tools <tools@imgforge.invalid>", "sign", "never");
    let key = base.join("tools-key.asc");
    fs::write(&key, gnupg.run(&["--armor", "--export", &fingerprint])).unwrap();
    let pkgdest = base.join("tools-pkgs");
    makepkg_all(TOOLS_PACKAGES, &base.join("tools-build"), &pkgdest, keyring);
    let file_of = |name: &str| pkgdest.join(format!("{name}-1-1-x86_64.pkg.tar.zst"));
    let dir = base.join("tools/x86_64");
    fs::create_dir_all(&dir).unwrap();
    for name in ["toolbox", "extratool", "rogue"] {
        let file = dir.join(file_of(name).file_name().unwrap());
        fs::copy(file_of(name), &file).unwrap();
        let file = file.to_str().unwrap();
        if name != "rogue" {
            let sig = format!("{file}.sig");
            gnupg.run(&[
                "--local-user",
                &fingerprint,
                "--detach-sign",
                "--output",
                &sig,
                file,
            ]);
        }
        let db = dir.join("tools.db.tar.gz");
        run("repo-add", &["--quiet", db.to_str().unwrap(), file]);
    }
    gnupg.stop_agent();
    ToolsRepository {
        server: format!("file://{}/tools/$arch", base.display()),
        key,
        fingerprint,
        local_package: file_of("localtool"),
    }
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(build_fixture)
}

struct PackageSpec {
    name: &'static str,
    repo: &'static str,
    depends: &'static [&'static str],
    install: Option<&'static str>,
}

const PACKAGES: &[PackageSpec] = &[
    PackageSpec {
        name: "filesystem",
        repo: "core",
        depends: &[],
        install: None,
    },
    PackageSpec {
        name: "testshell",
        repo: "core",
        depends: &["filesystem"],
        install: None,
    },
    // As Arch's: archlinux-keyring depends on pacman (here a stand-in),
    // which the keyring refresh must not fetch or verify.
    PackageSpec {
        name: "archlinux-keyring",
        repo: "core",
        depends: &["pacman"],
        install: None,
    },
    PackageSpec {
        name: "pacman",
        repo: "core",
        depends: &["testshell"],
        install: None,
    },
    // Only ever installed as a dependency (of the --package-file test's
    // local package).
    PackageSpec {
        name: "localdep",
        repo: "extra",
        depends: &["testshell"],
        install: None,
    },
    PackageSpec {
        name: "scripted",
        repo: "extra",
        depends: &["testshell"],
        install: Some(
            "post_install() {\n  \
               if read line < /proc/self/stat; then\n    \
                 echo \"proc: $line\" > /scripted-marker\n  \
               else\n    \
                 echo 'no /proc' > /scripted-marker\n  \
               fi\n\
             }\n",
        ),
    },
    PackageSpec {
        name: "hooked",
        repo: "extra",
        depends: &["testshell"],
        install: None,
    },
    // Kernels: /boot/vmlinuz-NAME and an alpm hook standing in for
    // mkinitcpio's. `linux`'s hook fails as mkinitcpio does on a missing
    // module (pacman still exits 0); `linux-lts`'s writes the initramfs.
    PackageSpec {
        name: "linux",
        repo: "core",
        depends: &["testshell"],
        install: None,
    },
    PackageSpec {
        name: "linux-lts",
        repo: "core",
        depends: &["testshell"],
        install: None,
    },
    // Keeps pacman busy in a scriptlet (with the API filesystems mounted)
    // long enough to be interrupted; the test shell has no `sleep`.
    PackageSpec {
        name: "sleepy",
        repo: "extra",
        depends: &["testshell"],
        install: Some(
            "post_install() {\n  \
               echo started > /sleepy-started\n  \
               i=0\n  \
               while [ $i -lt 200000000 ]; do i=$((i + 1)); done\n\
             }\n",
        ),
    },
];

const HOOK: &str = "[Trigger]\nOperation = Install\nType = Package\nTarget = hooked\n\n\
[Action]\nDescription = imgforge test hook\nWhen = PostTransaction\n\
Exec = /bin/sh -c 'echo hooked > /hook-marker'\n";

/// The initramfs hook of a fixture kernel package: `linux` fails, `linux-lts`
/// writes /boot/initramfs-linux-lts.img.
fn initramfs_hook(kernel: &str) -> String {
    let exec = if kernel == "linux" {
        "/bin/sh -c 'echo \"==> ERROR: module not found: nvme\" >&2; exit 1'".to_string()
    } else {
        format!("/bin/sh -c 'echo initramfs > /boot/initramfs-{kernel}.img'")
    };
    format!(
        "[Trigger]\nOperation = Install\nOperation = Upgrade\nType = Package\nTarget = {kernel}\n\n\
         [Action]\nDescription = Building the initramfs (imgforge test)\nWhen = PostTransaction\n\
         Exec = {exec}\n"
    )
}

fn build_fixture() -> Fixture {
    // A fixed place under target/ (a static is never dropped, so a temporary
    // folder would outlive the run): made afresh by every run.
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("arch-fixture");
    if base.exists() {
        fs::remove_dir_all(&base).unwrap();
    }
    fs::create_dir_all(&base).unwrap();
    let base = base.as_path();
    let gnupg = GpgHome::create(&base.join("gnupg"));
    let (keyring, starting_keyring, packager) = make_keys(base, &gnupg);

    // Packages, built by nobody.
    let pkgdest = base.join("pkgs");
    makepkg_all(PACKAGES, &base.join("build"), &pkgdest, &keyring);
    let file_of = |name: &str| pkgdest.join(format!("{name}-1-1-x86_64.pkg.tar.zst"));

    // Three repository sets: unsigned, signed, signed with one package
    // altered after signing.
    let make_repo = |set: &str, sign: bool, tamper: Option<&str>| -> String {
        for spec in PACKAGES {
            let dir = base.join(set).join(spec.repo).join("os/x86_64");
            fs::create_dir_all(&dir).unwrap();
            let file = dir.join(file_of(spec.name).file_name().unwrap());
            fs::copy(file_of(spec.name), &file).unwrap();
            let file_str = file.to_str().unwrap();
            if sign {
                gnupg.run(&[
                    "--local-user",
                    &packager,
                    "--yes",
                    "--detach-sign",
                    "--no-armor",
                    "--output",
                    &format!("{file_str}.sig"),
                    file_str,
                ]);
            }
            let db = dir.join(format!("{}.db.tar.gz", spec.repo));
            run("repo-add", &["--quiet", db.to_str().unwrap(), file_str]);
            if tamper == Some(spec.name) {
                let mut bytes = fs::read(&file).unwrap();
                let middle = bytes.len() / 2;
                bytes[middle] ^= 0xff;
                fs::write(&file, bytes).unwrap();
            }
        }
        format!("file://{}/{set}/$repo/os/$arch", base.display())
    };
    let unsigned = make_repo("unsigned", false, None);
    let signed = make_repo("signed", true, None);
    let tampered = make_repo("tampered", true, Some("hooked"));
    let tools = build_tools_repository(base, &keyring);
    gnupg.stop_agent();
    Fixture {
        unsigned,
        signed,
        tampered,
        keyring,
        starting_keyring,
        tools,
    }
}

/// Builds each package of `specs` with makepkg (as nobody: makepkg
/// refuses root) into `pkgdest`, its payload from [`stage_payload`].
fn makepkg_all(specs: &[PackageSpec], build: &Path, pkgdest: &Path, keyring: &Path) {
    for d in [build, pkgdest] {
        fs::create_dir_all(d).unwrap();
    }
    for spec in specs {
        let pkg = build.join(spec.name);
        let payload = pkg.join("payload");
        fs::create_dir_all(&payload).unwrap();
        stage_payload(spec.name, &payload, keyring);
        let mut pkgbuild = format!(
            "pkgname={}\npkgver=1\npkgrel=1\npkgdesc='imgforge test package'\narch=(x86_64)\n\
             license=({})\noptions=(!strip !debug emptydirs)\ndepends=({})\n",
            spec.name,
            licences_of(spec.name),
            spec.depends.join(" ")
        );
        if let Some(script) = spec.install {
            fs::write(pkg.join(format!("{}.install", spec.name)), script).unwrap();
            pkgbuild.push_str(&format!("install={}.install\n", spec.name));
        }
        if spec.name == "pacman" {
            pkgbuild.push_str("backup=(etc/pacman.conf)\n");
        }
        pkgbuild.push_str("package() {\n  cp -a \"$startdir/payload/.\" \"$pkgdir/\"\n}\n");
        fs::write(pkg.join("PKGBUILD"), pkgbuild).unwrap();
    }
    run("chown", &["-R", "nobody:nogroup", build.to_str().unwrap()]);
    run("chown", &["nobody:nogroup", pkgdest.to_str().unwrap()]);
    for spec in specs {
        let pkg = build.join(spec.name);
        let out = Command::new("setpriv")
            .args([
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "makepkg",
                "--force",
                "--nodeps",
                "--noconfirm",
            ])
            .current_dir(&pkg)
            .env("HOME", &pkg)
            .env("PKGDEST", pkgdest)
            .env("BUILDDIR", pkg.join("work"))
            .env("SRCDEST", pkg.join("src"))
            .env("PKGEXT", ".pkg.tar.zst")
            .env("LC_ALL", "C")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "makepkg {}: {}{}",
            spec.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A fixture package's `license` array: SPDX ids (two for `hooked`, both
/// apply; two expressions for `testshell`), and a pre-SPDX custom name for
/// `scripted` (no assertion in the SBOM).
fn licences_of(name: &str) -> &'static str {
    match name {
        "hooked" => "'GPL-2.0-or-later' 'LGPL-2.1-or-later'",
        "testshell" => "'Apache-2.0 OR MIT' 'GPL-2.0-only WITH Linux-syscall-note'",
        "scripted" => "'custom:imgforge-test'",
        _ => "MIT",
    }
}

/// Arch's trust model in small: a master key (no expiry, in
/// archlinux-trusted) certifies a packager key that signs the packages.
/// The packager key is made in the past (gpg's faked clock) with a one-year
/// expiry, so the starting keyring (exported then) holds it expired, as a
/// Debian host's 2023 keyring holds 38 of Arch's packager keys today; then
/// it is renewed, and the renewed keyring is what `--keyring` takes and
/// what the `archlinux-keyring` package ships. Returns (renewed keyring,
/// starting keyring, the packager key's fingerprint).
fn make_keys(base: &Path, gnupg: &GpgHome) -> (PathBuf, PathBuf, String) {
    // Three master keys: archlinux-trusted gives each marginal ownertrust
    // (`:4:`), so a packager key needs three certifications, as in Arch.
    let mut masters = Vec::new();
    for n in 1..=3 {
        let uid = format!("test master {n} <master{n}@imgforge.invalid>");
        gnupg.run_at(
            "20190101T000000",
            &["--quick-gen-key", &uid, "ed25519", "cert", "never"],
        );
        masters.push(gnupg.fingerprint_of(&format!("master{n}@imgforge.invalid")));
    }
    let packager_uid = "test packager <packager@imgforge.invalid>";
    gnupg.run_at(
        "20200101T000000",
        &["--quick-gen-key", packager_uid, "ed25519", "sign", "1y"],
    );
    let packager = gnupg.fingerprint_of("packager@imgforge.invalid");
    for master in &masters {
        gnupg.run_at(
            "20200102T000000",
            &["--default-key", master, "--quick-sign-key", &packager],
        );
    }
    let masters: Vec<&str> = masters.iter().map(String::as_str).collect();
    let mut keys = vec![packager.as_str()];
    keys.extend_from_slice(&masters);
    let starting = base.join("starting-keyring");
    gnupg.write_pacman_keyring(&starting, &keys, &masters);
    gnupg.run(&["--quick-set-expire", &packager, "0"]);
    let keyring = base.join("keyring");
    gnupg.write_pacman_keyring(&keyring, &keys, &masters);
    (keyring, starting, packager)
}

fn stage_payload(name: &str, payload: &Path, keyring: &Path) {
    match name {
        "filesystem" => {
            for d in [
                "usr/bin",
                "usr/lib",
                "etc",
                "var/lib",
                "var/cache",
                "root",
                "boot",
            ] {
                fs::create_dir_all(payload.join(d)).unwrap();
            }
            let tmp = payload.join("tmp");
            fs::create_dir_all(&tmp).unwrap();
            fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777)).unwrap();
            // As Arch's filesystem package: /usr/sbin is /usr/bin.
            symlink("bin", payload.join("usr/sbin")).unwrap();
            for (link, to) in [
                ("bin", "usr/bin"),
                ("sbin", "usr/bin"),
                ("lib", "usr/lib"),
                ("lib64", "usr/lib"),
            ] {
                symlink(to, payload.join(link)).unwrap();
            }
            fs::write(payload.join("etc/os-release"), "ID=imgforge-test\n").unwrap();
        }
        "testshell" => {
            let bin = payload.join("usr/bin");
            let lib = payload.join("usr/lib");
            fs::create_dir_all(&bin).unwrap();
            fs::create_dir_all(&lib).unwrap();
            let dash = imgforge::sys::tool::find_in_path("dash").unwrap();
            fs::copy(&dash, bin.join("sh")).unwrap();
            let ldd = run("ldd", &[dash.to_str().unwrap()]);
            for word in String::from_utf8_lossy(&ldd.stdout).split_whitespace() {
                if word.starts_with('/') && Path::new(word).is_file() {
                    let name = Path::new(word).file_name().unwrap();
                    fs::copy(word, lib.join(name)).unwrap();
                }
            }
        }
        "hooked" => {
            let hooks = payload.join("usr/share/libalpm/hooks");
            fs::create_dir_all(&hooks).unwrap();
            fs::write(hooks.join("imgforge-test.hook"), HOOK).unwrap();
        }
        "linux" | "linux-lts" => {
            let hooks = payload.join("usr/share/libalpm/hooks");
            fs::create_dir_all(&hooks).unwrap();
            fs::create_dir_all(payload.join("boot")).unwrap();
            fs::write(payload.join(format!("boot/vmlinuz-{name}")), "kernel").unwrap();
            fs::write(hooks.join("90-initramfs.hook"), initramfs_hook(name)).unwrap();
        }
        // pacman's configuration as Arch's pacman package ships it.
        "pacman" => {
            fs::create_dir_all(payload.join("etc")).unwrap();
            fs::write(
                payload.join("etc/pacman.conf"),
                "[options]\nArchitecture = auto\nSigLevel = Required DatabaseOptional\n\n\
                 [core]\nInclude = /etc/pacman.d/mirrorlist\n\n\
                 [extra]\nInclude = /etc/pacman.d/mirrorlist\n",
            )
            .unwrap();
        }
        "archlinux-keyring" => {
            let dir = payload.join("usr/share/pacman/keyrings");
            fs::create_dir_all(&dir).unwrap();
            for file in ["archlinux.gpg", "archlinux-trusted", "archlinux-revoked"] {
                fs::copy(keyring.join(file), dir.join(file)).unwrap();
            }
        }
        _ => {
            fs::create_dir_all(payload.join("usr/share/doc")).unwrap();
            fs::write(payload.join(format!("usr/share/doc/{name}")), name).unwrap();
        }
    }
}

/// The host's /usr/share/keyrings: names, modes and contents.
fn host_keyrings() -> BTreeMap<String, (u32, Vec<u8>)> {
    fs::read_dir("/usr/share/keyrings")
        .unwrap()
        .flatten()
        .map(|e| {
            let meta = fs::symlink_metadata(e.path()).unwrap();
            let bytes = fs::read(e.path()).unwrap_or_default();
            (
                e.file_name().to_string_lossy().into_owned(),
                (meta.permissions().mode(), bytes),
            )
        })
        .collect()
}

/// Processes whose command line names `path` (a gpg-agent left behind).
fn processes_using(path: &Path) -> Vec<String> {
    let needle = path.to_string_lossy().into_owned();
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&needle))
        .collect()
}

struct Run {
    dir: tempfile::TempDir,
    result: Result<(), DistroError>,
    elapsed: Duration,
}

impl Run {
    fn output(&self) -> PathBuf {
        self.dir.path().join("rootfs.tar")
    }
}

fn arch(level: SigLevel) -> (Arch, DataDir) {
    let data_dir = DataDir::open(None).unwrap();
    let data = read_data(&data_dir, "arch").unwrap();
    (
        Arch::new(data, &data_dir).unwrap().with_sig_level(level),
        data_dir,
    )
}

/// Runs imgforge's Arch bootstrap; checks what must hold whatever the
/// outcome: no mount left, no process left using the work folder, the
/// host's keyrings unchanged, nothing written to the host's root.
fn bootstrap(
    mirror: &str,
    level: SigLevel,
    keyring: Option<&Path>,
    cache: &Path,
    packages: &[&str],
) -> Run {
    bootstrap_with(arch(level), mirror, keyring, cache, packages, false)
}

/// [`bootstrap`] with a distro set up by the caller. The mirror's state is
/// read first, as a build does (empty when the mirror cannot be read);
/// `moved` alters it, as if the mirror had been updated since.
fn bootstrap_with(
    (arch, data_dir): (Arch, DataDir),
    mirror: &str,
    keyring: Option<&Path>,
    cache: &Path,
    packages: &[&str],
    moved: bool,
) -> Run {
    let sources = arch.sources("rolling", Some(mirror)).unwrap();
    bootstrap_sources(
        (arch, data_dir),
        &sources,
        keyring,
        cache,
        packages,
        &[],
        moved,
    )
}

/// [`bootstrap_with`] from resolved sources (`--repository` entries), with
/// `--package-file`s.
fn bootstrap_sources(
    (arch, data_dir): (Arch, DataDir),
    sources: &Sources,
    keyring: Option<&Path>,
    cache: &Path,
    packages: &[&str],
    package_files: &[PathBuf],
    moved: bool,
) -> Run {
    let dir = tempfile::Builder::new()
        .prefix("imgforge-arch-run-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let work = dir.path().join("work");
    fs::create_dir_all(&work).unwrap();
    let sources = sources.clone();
    let packages: Vec<String> = packages.iter().map(|p| p.to_string()).collect();
    let bootstrap_files = data_dir
        .path()
        .join("rootfs")
        .join(arch.data().bootstrap_files.as_ref().unwrap());
    let output = dir.path().join("rootfs.tar");
    let mut mirror_state = arch
        .mirror_state("rolling", &sources, &work)
        .unwrap_or_default();
    if moved {
        for digest in &mut mirror_state {
            digest.sha256 = "0".repeat(64);
        }
    }
    let progress = Progress::new(false);
    let keyrings_before = host_keyrings();
    let started = Instant::now();
    let job = BootstrapJob {
        release: "rolling",
        packages: &packages,
        sources: &sources,
        package_cache: cache,
        bootstrap_files: Some(&bootstrap_files),
        work_dir: &work,
        output: &output,
        source_date_epoch: 0,
        keyring,
        package_files,
        locked: None,
        progress: &progress,
        mirror_state: &mirror_state,
    };
    let result = arch.bootstrap(&job);
    let elapsed = started.elapsed();
    assert_eq!(
        mounts_below(dir.path()),
        Vec::<PathBuf>::new(),
        "mounts left below the run folder"
    );
    assert_eq!(
        processes_using(&work),
        Vec::<String>::new(),
        "processes left using the work folder"
    );
    assert!(
        host_keyrings() == keyrings_before,
        "the host's /usr/share/keyrings changed"
    );
    for marker in ["/scripted-marker", "/hook-marker"] {
        assert!(
            !Path::new(marker).exists(),
            "{marker} on the host: a script ran outside the tree"
        );
    }
    Run {
        dir,
        result,
        elapsed,
    }
}

/// Path -> contents (files) of the tar archive, paths without `./`.
fn tar_contents(tar: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut archive = tar::Archive::new(fs::File::open(tar).unwrap());
    let mut files = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let path = path
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        files.insert(path, bytes);
    }
    files
}

/// What a successful bootstrap's archive must hold.
fn check_tree(run: &Run, arch: &Arch) {
    if let Err(err) = &run.result {
        panic!("bootstrap failed: {err}");
    }
    let files = tar_contents(&run.output());
    let text = |p: &str| {
        String::from_utf8_lossy(
            files
                .get(p)
                .unwrap_or_else(|| panic!("{p} not in the archive")),
        )
        .into_owned()
    };
    assert_eq!(text("etc/os-release"), "ID=imgforge-test\n");
    assert!(files.contains_key("usr/bin/sh"));
    assert!(files.contains_key("usr/share/libalpm/hooks/imgforge-test.hook"));
    // The bootstrap files came first, and stayed.
    assert!(text("etc/mkinitcpio.conf.d/imgforge.conf").contains("MODULES=("));
    // The scriptlet ran chrooted, with /proc mounted.
    let scripted = text("scripted-marker");
    assert!(scripted.starts_with("proc: "), "{scripted}");
    assert_eq!(text("hook-marker"), "hooked\n");
    // The API filesystems were unmounted before archiving: empty mount points.
    for mount_point in ["proc", "sys", "dev", "run"] {
        let inside: Vec<&String> = files
            .keys()
            .filter(|p| p.starts_with(&format!("{mount_point}/")))
            .collect();
        assert!(inside.is_empty(), "{mount_point} not empty: {inside:?}");
    }
    // The image does not get the build's keyring.
    assert!(!files.keys().any(|p| p.starts_with("etc/pacman.d/gnupg/")));
    // pacman's database in the tree lists what was installed.
    let root = run.dir.path().join("root");
    fs::create_dir_all(&root).unwrap();
    run_ok(Command::new("tar").args([
        "--numeric-owner",
        "-xpf",
        run.output().to_str().unwrap(),
        "-C",
        root.to_str().unwrap(),
    ]));
    let installed: Vec<String> = arch
        .installed_packages(&root)
        .unwrap()
        .into_iter()
        .map(|p| format!("{} {}", p.name, p.version))
        .collect();
    for want in [
        "filesystem 1-1",
        "testshell 1-1",
        "scripted 1-1",
        "hooked 1-1",
    ] {
        assert!(installed.iter().any(|p| p == want), "{want}: {installed:?}");
    }
}

/// `--lock` for Arch: the set from pacman's local database, the newest
/// build date (an Arch Linux Archive day) and the repository databases'
/// digests, written and read back; an unchanged repository keeps its state,
/// a changed one does not.
fn check_lock_file(run: &Run, arch: &Arch, mirror: &str) {
    let root = run.dir.path().join("root");
    let packages = arch.installed_packages(&root).unwrap();
    let sources = arch.sources("rolling", Some(mirror)).unwrap();
    let work = run.dir.path().join("lock-work");
    let state = arch.mirror_state("rolling", &sources, &work).unwrap();
    let urls: Vec<&str> = state.iter().map(|m| m.url.as_str()).collect();
    assert_eq!(urls.len(), 2, "{urls:?}");
    assert!(urls[0].ends_with("/core/os/x86_64/core.db"), "{urls:?}");
    assert!(urls[1].ends_with("/extra/os/x86_64/extra.db"), "{urls:?}");
    assert_eq!(
        state,
        arch.mirror_state("rolling", &sources, &work).unwrap(),
        "the same repositories, the same state"
    );
    let date = arch
        .newest_package_date(&root, &state)
        .unwrap()
        .expect("makepkg records a build date");
    // makepkg ran minutes ago, in this test process.
    let today = imgforge::distro::mirror::epoch_to_iso(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    );
    assert_eq!(date[..10], today[..10], "{date}");
    // Each database carries its packages' newest build date, known before
    // a bootstrap: what a fresh one stamps the initramfs with.
    for repository in &state {
        let published = repository.date.as_deref().expect("a database date");
        assert_eq!(published[..10], today[..10], "{repository:?}");
    }
    let installed = imgforge::distro::mirror::iso_to_epoch(&date).unwrap();
    assert!(imgforge::distro::mirror::newest_date(&state).unwrap() >= installed);
    let lock = imgforge::build::lock::Lock {
        format: imgforge::build::lock::FORMAT,
        distro: "arch".into(),
        release: "rolling".into(),
        architecture: arch.data().architecture.clone(),
        kernel: "linux".into(),
        sources: sources.lines.clone(),
        newest_package_date: Some(date),
        requested: TEST_PACKAGES.iter().map(|p| p.to_string()).collect(),
        bootstrap_epoch: None,
        mirror_state: state.clone(),
        packages: packages
            .iter()
            .map(|p| (p.name.clone(), p.version.clone()))
            .collect(),
    };
    let path = run.dir.path().join("arch.lock");
    lock.write(&path).unwrap();
    let read = imgforge::build::lock::Lock::read(&path).unwrap();
    assert_eq!(read, lock);
    assert!(read.differences(&packages).is_empty());
    assert_eq!(read.packages["scripted"], "1-1");

    // A repository that changed (a copy with one database rewritten) has
    // another state.
    let copy = run.dir.path().join("mirror-copy");
    let folder = mirror.strip_prefix("file://").unwrap();
    let folder = folder.trim_end_matches("/$repo/os/$arch");
    run_ok(Command::new("cp").args(["-a", folder, copy.to_str().unwrap()]));
    let copied = arch
        .sources(
            "rolling",
            Some(&format!("file://{}/$repo/os/$arch", copy.display())),
        )
        .unwrap();
    let extra_db = copy.join("extra/os/x86_64/extra.db");
    let real = fs::canonicalize(&extra_db).unwrap();
    let mut bytes = fs::read(&real).unwrap();
    bytes.extend_from_slice(b"\0");
    fs::remove_file(&extra_db).unwrap();
    fs::write(&extra_db, bytes).unwrap();
    let changed = arch.mirror_state("rolling", &copied, &work).unwrap();
    assert_eq!(changed[0].sha256, state[0].sha256, "core.db is the same");
    assert_ne!(changed[1].sha256, state[1].sha256, "extra.db changed");
}

fn run_ok(command: &mut Command) {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const TEST_PACKAGES: &[&str] = &["testshell", "scripted", "hooked"];

#[test]
fn unsigned_repository_with_the_default_keyring_path() {
    skip_unless_ready!("unsigned_repository_with_the_default_keyring_path");
    let _heavy = heavy();
    let fx = fixture();
    let cache = tempfile::tempdir().unwrap();
    // SigLevel Never for the packages, but the keyring is still made the
    // default way: the host's archlinux-keyring, then the mirror's
    // archlinux-keyring package (here: the test key) populated in a private
    // mount namespace.
    let run = bootstrap(
        &fx.unsigned,
        SigLevel::Never,
        None,
        cache.path(),
        TEST_PACKAGES,
    );
    let (arch, _d) = arch(SigLevel::Never);
    check_tree(&run, &arch);
    check_lock_file(&run, &arch, &fx.unsigned);
    check_sbom(&run);
    // Downloads were kept in the package cache, outside the tree.
    let cached: Vec<String> = fs::read_dir(cache.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    // The keyring package is fetched apart, into the work folder.
    for p in ["filesystem", "scripted"] {
        assert!(
            cached.iter().any(|c| c.starts_with(&format!("{p}-1-1"))),
            "{p}: {cached:?}"
        );
    }
}

#[test]
fn signed_repository_with_keyring_folder() {
    skip_unless_ready!("signed_repository_with_keyring_folder");
    let _heavy = heavy();
    let fx = fixture();
    let cache = tempfile::tempdir().unwrap();
    let run = bootstrap(
        &fx.signed,
        SigLevel::Required,
        Some(&fx.keyring),
        cache.path(),
        TEST_PACKAGES,
    );
    let (arch, _d) = arch(SigLevel::Required);
    check_tree(&run, &arch);
    // With --keyring, the mirror's keyring package is not fetched.
    assert!(
        !fs::read_dir(cache.path()).unwrap().flatten().any(|e| e
            .file_name()
            .to_string_lossy()
            .starts_with("archlinux-keyring")),
        "archlinux-keyring was downloaded although --keyring was given"
    );
}

#[test]
fn tampered_package_is_refused_with_a_clear_error() {
    skip_unless_ready!("tampered_package_is_refused_with_a_clear_error");
    let _heavy = heavy();
    let fx = fixture();
    let cache = tempfile::tempdir().unwrap();
    let run = bootstrap(
        &fx.tampered,
        SigLevel::Required,
        Some(&fx.keyring),
        cache.path(),
        TEST_PACKAGES,
    );
    let err = run
        .result
        .as_ref()
        .expect_err("a tampered package was installed");
    let text = err.to_string();
    println!("the error, as the user sees it:\n{text}");
    assert!(text.contains("hooked"), "names the package: {text}");
    assert!(text.contains("signature"), "{text}");
    assert!(text.contains("--keyring"), "says what to do: {text}");
    assert!(!run.output().exists(), "an archive was written");
    // The bad download does not stay in the cache to fail the next build.
    assert!(
        !cache.path().join("hooked-1-1-x86_64.pkg.tar.zst").exists(),
        "the tampered file stayed in the cache"
    );
}

/// The keyring refresh from a starting keyring whose packager key has
/// expired (as a Debian host's 2023 archlinux-keyring has 38 today), every
/// package signed by that key and `SigLevel = Required`: pacman alone
/// refuses the packages; imgforge fetches archlinux-keyring alone (not its
/// dependency `pacman`), accepts it through the master key's certification,
/// populates the renewed key, and the bootstrap then installs everything
/// verified.
#[test]
fn expired_packager_key_is_renewed_from_the_keyring_package_alone() {
    skip_unless_ready!("expired_packager_key_is_renewed_from_the_keyring_package_alone");
    let _heavy = heavy();
    let fx = fixture();
    // The fixture models the real failure: with the starting keyring as it
    // is, pacman refuses the packages by their expired signer.
    let cache = tempfile::tempdir().unwrap();
    let stale = bootstrap(
        &fx.signed,
        SigLevel::Required,
        Some(&fx.starting_keyring),
        cache.path(),
        TEST_PACKAGES,
    );
    let err = stale
        .result
        .as_ref()
        .expect_err("pacman accepted a package signed by an expired key")
        .to_string();
    assert!(err.contains("signature"), "{err}");

    let cache = tempfile::tempdir().unwrap();
    let (distro, data_dir) = arch(SigLevel::Required);
    let distro = distro.with_starting_keyring(&fx.starting_keyring);
    let run = bootstrap_with(
        (distro, data_dir),
        &fx.signed,
        None,
        cache.path(),
        TEST_PACKAGES,
        false,
    );
    let (arch, _d) = arch(SigLevel::Required);
    check_tree(&run, &arch);
    // Exactly one package fetched for the keyring, beside its signature,
    // in the build's work folder; pacman was not fetched at all.
    let fetched: Vec<String> = fs::read_dir(run.dir.path().join("work/keyring"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".pkg.tar"))
        .collect();
    let mut fetched = fetched;
    fetched.sort();
    assert_eq!(
        fetched,
        [
            "archlinux-keyring-1-1-x86_64.pkg.tar.zst",
            "archlinux-keyring-1-1-x86_64.pkg.tar.zst.sig",
            "archlinux-keyring-1-1-x86_64.pkg.tar.zst.status",
        ]
    );
    let cached: Vec<String> = fs::read_dir(cache.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !cached.iter().any(|c| c.starts_with("pacman-1-1")),
        "the keyring's dependency was fetched: {cached:?}"
    );
}

/// The databases pacman syncs must be the ones the mirror's state (the
/// cache key) read: a mirror updated in between fails the bootstrap.
#[test]
fn a_mirror_updated_after_its_state_was_read_fails_the_bootstrap() {
    skip_unless_ready!("a_mirror_updated_after_its_state_was_read_fails_the_bootstrap");
    let _heavy = heavy();
    let fx = fixture();
    let cache = tempfile::tempdir().unwrap();
    let run = bootstrap_with(
        arch(SigLevel::Required),
        &fx.signed,
        Some(&fx.keyring),
        cache.path(),
        &["testshell"],
        true,
    );
    let err = run
        .result
        .as_ref()
        .expect_err("a tree from other databases than the key's was accepted")
        .to_string();
    assert!(
        err.contains("core.db") && err.contains("changed between reading"),
        "{err}"
    );
    assert!(!run.output().exists(), "an archive was written");
}

/// mkinitcpio runs in a pacman hook, and a failed hook does not fail
/// pacman: the bootstrap itself must notice that the initramfs grub.cfg
/// names is not there, and write no archive. A kernel whose hook works
/// passes the same check.
#[test]
fn failed_initramfs_hook_fails_the_bootstrap() {
    skip_unless_ready!("failed_initramfs_hook_fails_the_bootstrap");
    let _heavy = heavy();
    let fx = fixture();
    let cache = tempfile::tempdir().unwrap();
    let run = bootstrap(
        &fx.signed,
        SigLevel::Required,
        Some(&fx.keyring),
        cache.path(),
        &["testshell", "linux"],
    );
    let err = run
        .result
        .as_ref()
        .expect_err("a tree without its initramfs was accepted")
        .to_string();
    println!("the error, as the user sees it:\n{err}");
    assert!(
        err.contains("/boot/vmlinuz-linux")
            && err.contains("no initramfs at /boot/initramfs-linux.img")
            && err.contains("mkinitcpio"),
        "{err}"
    );
    assert!(!run.output().exists(), "an archive was written");

    let run = bootstrap(
        &fx.signed,
        SigLevel::Required,
        Some(&fx.keyring),
        cache.path(),
        &["testshell", "linux-lts"],
    );
    if let Err(err) = &run.result {
        panic!("a kernel whose initramfs hook worked was refused: {err}");
    }
    let files = tar_contents(&run.output());
    assert_eq!(
        files.get("boot/initramfs-linux-lts.img").map(Vec::as_slice),
        Some(&b"initramfs\n"[..])
    );
}

#[test]
fn unreachable_mirror_fails_fast_and_leaves_nothing() {
    skip_unless_ready!("unreachable_mirror_fails_fast_and_leaves_nothing");
    let _heavy = heavy();
    let cache = tempfile::tempdir().unwrap();
    let mirror = "http://127.0.0.1:9/$repo/os/$arch";
    let run = bootstrap(
        mirror,
        SigLevel::Required,
        None,
        cache.path(),
        TEST_PACKAGES,
    );
    let text = run.result.as_ref().expect_err("succeeded").to_string();
    assert!(text.contains(mirror), "names the mirror: {text}");
    assert!(run.elapsed < Duration::from_secs(30), "{:?}", run.elapsed);
    assert!(!run.output().exists());

    // The same through the command line: no work folder under TMPDIR, no
    // partial archive in the cache, no mount.
    let tmp = tempfile::Builder::new()
        .prefix("imgforge-tmpdir-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let started = Instant::now();
    let out = Command::new(IMGFORGE)
        .args(["build", "--distro", "arch", "--mirror", mirror])
        .arg("--cache-dir")
        .arg(cache.path())
        .arg("-o")
        .arg(tmp.path().join("image.raw"))
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("127.0.0.1:9"), "{text}");
    assert!(elapsed < Duration::from_secs(30), "{elapsed:?}");
    let left: Vec<String> = fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("imgforge-build-"))
        .collect();
    assert!(left.is_empty(), "work folders left: {left:?}");
    let partial: Vec<String> = fs::read_dir(cache.path().join("rootfs"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(partial.is_empty(), "left in the cache: {partial:?}");
    assert!(mounts_below(tmp.path()).is_empty());
}

#[test]
fn mirror_without_repo_and_unknown_kernel_are_refused_before_any_work() {
    // No root needed: --plan stops before the bootstrap.
    let out = Command::new(IMGFORGE)
        .args([
            "build",
            "--distro",
            "arch",
            "--plan",
            "--mirror",
            "https://m.example/core/os/x86_64",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains("$repo"), "{text}");
    let out = Command::new(IMGFORGE)
        .args(["build", "--distro", "arch", "--plan", "--kernel", "zen"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && text.contains("`zen`") && text.contains("lts"),
        "{text}"
    );
    let out = Command::new(IMGFORGE)
        .args(["build", "--distro", "arch", "--plan", "--kernel", "lts"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("linux-lts") && text.contains("Required DatabaseOptional"),
        "{text}"
    );
}

#[test]
fn missing_host_tool_names_its_debian_package() {
    skip_unless_ready!("missing_host_tool_names_its_debian_package");
    // A PATH with every tool the build checks except pacman.
    let bin = tempfile::tempdir().unwrap();
    for tool in [
        "tar",
        "pacman-key",
        "bsdtar",
        "gpg",
        "gpgconf",
        "unshare",
        "mount",
        "cp",
        "sh",
    ] {
        if let Some(path) = imgforge::sys::tool::find_in_path(tool) {
            symlink(path, bin.path().join(tool)).unwrap();
        }
    }
    if Path::new("/usr/sbin/pacman").exists() || Path::new("/sbin/pacman").exists() {
        // Not a missing prerequisite: this host cannot hide pacman at all
        // (Debian's pacman-package-manager, which CI installs, is in /usr/bin).
        assert!(
            !common::in_ci(),
            "pacman is in sbin, which imgforge always searches: this test cannot hide it"
        );
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"\n*** SKIPPED missing_host_tool_names_its_debian_package: pacman is in sbin, \
              which imgforge always searches (DID NOT RUN) ***\n",
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(IMGFORGE)
        .args(["build", "--distro", "arch"])
        .arg("--cache-dir")
        .arg(tmp.path().join("cache"))
        .arg("-o")
        .arg(tmp.path().join("image.raw"))
        .env("PATH", bin.path())
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        text.contains("`pacman`") && text.contains("apt-get install pacman-package-manager"),
        "{text}"
    );
}

/// Every process whose root directory lies below `dir` (chrooted there).
fn processes_rooted_below(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let root = entry.path().join("root");
        if let Ok(target) = fs::read_link(&root)
            && target.starts_with(dir)
        {
            found.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    found
}

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if entry.file_name() == name {
            return Some(path);
        }
        let kind = entry.file_type().ok()?;
        // Not into the API filesystems mounted in the tree.
        if kind.is_dir()
            && !["proc", "sys", "dev", "run"].contains(&&*entry.file_name().to_string_lossy())
            && let Some(found) = find_file(&path, name)
        {
            return Some(found);
        }
    }
    None
}

#[test]
fn ctrl_c_during_pacman_leaves_no_mount_process_work_dir_or_partial_tarball() {
    skip_unless_ready!("ctrl_c_during_pacman_leaves_no_mount_process_work_dir_or_partial_tarball");
    let _heavy = heavy();
    let fixture = fixture();
    // A data folder whose Arch installs only test packages (the binary
    // always verifies signatures, so the signed repository and --keyring).
    let data = tempfile::Builder::new()
        .prefix("imgforge-arch-data-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR"));
    for folder in ["rootfs", "boot", "kernel-configs"] {
        run_ok(
            Command::new("cp")
                .arg("-a")
                .arg(source.join(folder))
                .arg(data.path()),
        );
    }
    let toml = data.path().join("rootfs/distros/arch.toml");
    let text = fs::read_to_string(&toml).unwrap();
    let start = text.find("packages = [").unwrap();
    let end = start + text[start..].find(']').unwrap() + 1;
    let text = format!(
        "{}packages = [\"testshell\", \"sleepy\"]{}",
        &text[..start],
        &text[end..]
    );
    // No GRUB (the build is stopped long before the boot loader) and the
    // test package as the kernel.
    let text = text
        .replacen("grub_packages = [\"grub\"]", "grub_packages = []", 1)
        .replacen("linux = [\"linux\"]", "linux = [\"hooked\"]", 1);
    assert!(text.contains("[\"hooked\"]"), "arch.toml changed shape");
    fs::write(&toml, text).unwrap();

    let tmp = tempfile::Builder::new()
        .prefix("imgforge-tmpdir-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut child = Command::new(IMGFORGE)
        .args(["build", "--distro", "arch", "--mirror", &fixture.signed])
        .arg("--keyring")
        .arg(&fixture.keyring)
        .arg("--data-dir")
        .arg(data.path())
        .arg("--cache-dir")
        .arg(cache.path())
        .arg("-o")
        .arg(tmp.path().join("image.raw"))
        .env("TMPDIR", tmp.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the scriptlet: pacman is then running with /proc, /sys and
    // /dev mounted in the tree.
    let until = Instant::now() + Duration::from_secs(120);
    let started = loop {
        if let Some(marker) = find_file(tmp.path(), "sleepy-started") {
            break marker;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "imgforge ended ({status}) before the scriptlet ran: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(Instant::now() < until, "the scriptlet never started");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        !mounts_below(tmp.path()).is_empty(),
        "the API filesystems are mounted while pacman runs ({})",
        started.display()
    );
    let interrupted = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let stopped_in = interrupted.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(stopped_in < Duration::from_secs(20), "{stopped_in:?}");
    assert!(mounts_below(tmp.path()).is_empty(), "mounts left");
    assert!(
        processes_rooted_below(tmp.path()).is_empty(),
        "processes left in the tree"
    );
    let left: Vec<String> = fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
    let cached: Vec<String> = fs::read_dir(cache.path().join("rootfs"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(cached.is_empty(), "left in the cache: {cached:?}");
}

/// The fixture's sources with `--repository` entries, as a build resolves them.
fn sources_with_repositories(arch: &Arch, mirror: &str, repositories: &[String]) -> Sources {
    arch.sources_with(
        "rolling",
        &SourceOptions {
            mirror: Some(mirror),
            security_mirror: None,
            repositories,
        },
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn tools_spec(tools: &ToolsRepository) -> String {
    format!(
        "tools Server={} Key={} SigLevel=Required,DatabaseOptional",
        tools.server,
        tools.key.display()
    )
}

/// `--repository` (a signed file:// repository with its own key) and
/// `--package-file` under `SigLevel = Required`: the repository's package
/// is installed by name, the local package with its dependency from the
/// fixture's extra; the image's pacman.conf gets the section, its
/// keyrings the key with its trust, its first boot the populate drop-in.
#[test]
fn extra_repository_and_package_file_are_installed_and_configured() {
    skip_unless_ready!("extra_repository_and_package_file_are_installed_and_configured");
    let _heavy = heavy();
    let fx = fixture();
    let cache = tempfile::tempdir().unwrap();
    let (distro, data_dir) = arch(SigLevel::Required);
    let sources = sources_with_repositories(&distro, &fx.signed, &[tools_spec(&fx.tools)]);
    // The mirror's state covers the repository's database too.
    let state_files = distro.mirror_state_files("rolling", &sources);
    assert!(
        state_files
            .iter()
            .any(|u| u.ends_with("/tools/x86_64/tools.db")),
        "{state_files:?}"
    );
    let mut packages = TEST_PACKAGES.to_vec();
    packages.extend(["pacman", "archlinux-keyring", "toolbox"]);
    let run = bootstrap_sources(
        (distro, data_dir),
        &sources,
        Some(&fx.keyring),
        cache.path(),
        &packages,
        std::slice::from_ref(&fx.tools.local_package),
        false,
    );
    let (arch, _d) = arch(SigLevel::Required);
    check_tree(&run, &arch);
    let root = run.dir.path().join("root");
    let installed: Vec<String> = (arch.installed_packages(&root).unwrap().into_iter())
        .map(|p| format!("{} {}", p.name, p.version))
        .collect();
    for want in ["toolbox 1-1", "localtool 1-1", "localdep 1-1"] {
        assert!(installed.iter().any(|p| p == want), "{want}: {installed:?}");
    }
    assert!(!installed.iter().any(|p| p.starts_with("rogue ")));

    arch.configure(&root, &sources).unwrap();
    let conf = fs::read_to_string(root.join("etc/pacman.conf")).unwrap();
    // The package's own configuration first, then the section.
    assert!(
        conf.starts_with("[options]\nArchitecture = auto\n"),
        "{conf}"
    );
    let section = format!(
        "[tools]\nSigLevel = Required DatabaseOptional\nServer = {}\n",
        fx.tools.server
    );
    assert!(conf.contains(&section), "{conf}");
    let keyrings = root.join("usr/share/pacman/keyrings");
    assert_eq!(
        fs::read(keyrings.join("imgforge-tools.gpg")).unwrap(),
        fs::read(&fx.tools.key).unwrap()
    );
    assert_eq!(
        fs::read_to_string(keyrings.join("imgforge-tools-trusted")).unwrap(),
        format!("{}:4:\n", fx.tools.fingerprint)
    );
    let dropin =
        root.join("etc/systemd/system/imgforge-pacman-init.service.d/imgforge-repositories.conf");
    let dropin = fs::read_to_string(dropin).unwrap();
    assert!(
        dropin.contains("ExecStart=/usr/bin/pacman-key --populate imgforge-tools\n"),
        "{dropin}"
    );
    let mirrorlist = fs::read_to_string(root.join("etc/pacman.d/mirrorlist")).unwrap();
    assert!(
        mirrorlist.contains(&format!("Server = {}", fx.signed)),
        "{mirrorlist}"
    );
    check_steps_pacman(&arch, &root, &sources, run.dir.path());
}

/// What `--script` steps get before they run: a `pacman -S` against the
/// tree's own databases and keyring (no `-y`) installs a signed package of
/// the `--repository` under SigLevel Required. Here the host's pacman
/// stands in for the image's (the fixture has none that runs), with the
/// tree's paths, the ones the image's pacman reads.
fn check_steps_pacman(arch: &Arch, root: &Path, sources: &Sources, scratch: &Path) {
    let conf = scratch.join("steps-check.conf");
    fs::write(
        &conf,
        format!(
            "[options]\nArchitecture = x86_64\nSigLevel = Required DatabaseOptional\n\n\
             [core]\nServer = {m}\n[extra]\nServer = {m}\n[tools]\nServer = {t}\n",
            m = fixture().signed,
            t = fixture().tools.server
        ),
    )
    .unwrap();
    let gpgdir = root.join("etc/pacman.d/gnupg");
    let cache = scratch.join("steps-cache");
    let install = || {
        Command::new("pacman")
            .arg("--config")
            .arg(&conf)
            .arg("--root")
            .arg(root)
            .arg("--dbpath")
            .arg(root.join("var/lib/pacman"))
            .arg("--gpgdir")
            .arg(&gpgdir)
            .arg("--cachedir")
            .arg(&cache)
            .args(["--noconfirm", "-S", "extratool"])
            .env("LC_ALL", "C")
            .output()
            .unwrap()
    };
    // Without the preparation: no databases, nothing found.
    let before = install();
    assert!(!before.status.success(), "{before:?}");
    let work = scratch.join("steps-work");
    arch.prepare_package_manager(root, sources, &work)
        .unwrap_or_else(|e| panic!("{e}"));
    for db in ["core", "extra", "tools"] {
        let path = root.join(format!("var/lib/pacman/sync/{db}.db"));
        assert!(path.is_file(), "{} missing", path.display());
    }
    assert_eq!(
        processes_using(&gpgdir),
        Vec::<String>::new(),
        "processes left using the tree's keyring"
    );
    let after = install();
    assert!(
        after.status.success(),
        "{}{}",
        String::from_utf8_lossy(&after.stdout),
        String::from_utf8_lossy(&after.stderr)
    );
    GpgHome::open(&gpgdir).stop_agent();
    let installed = arch.installed_packages(root).unwrap();
    assert!(
        installed.iter().any(|p| p.name == "extratool"),
        "{installed:?}"
    );
    check_steps_session(root, sources);
}

/// The steps' session on an Arch tree: opens (no apt there), shows a step
/// the synced databases, the keyring and the file:// repositories at their
/// paths, lets it `pacman -S` a signed package of the `--repository` (and
/// not an unsigned one), and leaves no mount, no apt folder and no
/// stand-in behind.
fn check_steps_session(root: &Path, sources: &Sources) {
    use imgforge::build::provision::session::Session;
    let tools = fixture().tools.server.strip_prefix("file://").unwrap();
    let tools = Path::new(tools.trim_end_matches("/$arch"));
    let mirror = fixture().signed.strip_prefix("file://").unwrap();
    let mirror = Path::new(mirror.trim_end_matches("/$repo/os/$arch"));
    assert!(sources.repositories[0].contains(&tools.display().to_string()));
    install_host_pacman(root);
    let session = Session::open(root, "6.6.6-arch1-1", &[mirror.into(), tools.into()])
        .unwrap_or_else(|e| panic!("{e}"));
    // A step's `pacman -S`, as a script runs it: the image's own pacman.conf,
    // databases and keyring; the package downloaded and verified in the tree
    // (the unsigned one refused there).
    let script = format!(
        "test -f /var/lib/pacman/sync/tools.db && test -f /etc/pacman.d/gnupg/pubring.gpg \
         && test -f {}/x86_64/tools.db && test -f {}/core/os/x86_64/core.db \
         && test -x /usr/sbin/policy-rc.d \
         && pacman -S --noconfirm --noprogressbar extratool >&2 \
         && test -f /var/cache/pacman/pkg/extratool-1-1-x86_64.pkg.tar.zst \
         && ! pacman -S --noconfirm --noprogressbar rogue >&2 && echo ready",
        tools.display(),
        mirror.display()
    );
    let out = Command::new("chroot")
        .arg(root)
        .args(["/bin/sh", "-c", &script])
        .output()
        .unwrap();
    let closed = session.close();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ready\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    closed.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(mounts_below(root), Vec::<PathBuf>::new());
    assert!(
        !root.join("etc/apt").exists(),
        "the session made an apt folder"
    );
    assert!(!root.join("usr/bin/policy-rc.d").exists());
    assert!(!root.join(tools.strip_prefix("/").unwrap()).exists());
}

/// The host's pacman and gpg (with their libraries) copied into the tree,
/// standing in for the image's own, which the fixture does not have.
fn install_host_pacman(root: &Path) {
    for tool in ["pacman", "gpg"] {
        let path = imgforge::sys::tool::find_in_path(tool).unwrap();
        fs::copy(&path, root.join("usr/bin").join(tool)).unwrap();
        let ldd = run("ldd", &[path.to_str().unwrap()]);
        for word in String::from_utf8_lossy(&ldd.stdout).split_whitespace() {
            if word.starts_with('/') && Path::new(word).is_file() {
                let name = Path::new(word).file_name().unwrap();
                fs::copy(word, root.join("usr/lib").join(name)).unwrap();
            }
        }
    }
    fs::create_dir_all(root.join("var/cache/pacman/pkg")).unwrap();
}

/// An unsigned package in a `--repository` under `SigLevel = Required` is
/// refused, naming the package and what to do, and nothing is left; a
/// missing key file is refused before any work, and the wrong kind of
/// package file is bad input (exit 2) for either distro.
#[test]
fn repository_failures_name_the_problem_and_leave_nothing() {
    skip_unless_ready!("repository_failures_name_the_problem_and_leave_nothing");
    let _heavy = heavy();
    let fx = fixture();
    let cache = tempfile::tempdir().unwrap();
    let (distro, data_dir) = arch(SigLevel::Required);
    let sources = sources_with_repositories(&distro, &fx.signed, &[tools_spec(&fx.tools)]);
    let run = bootstrap_sources(
        (distro, data_dir),
        &sources,
        Some(&fx.keyring),
        cache.path(),
        &["testshell", "rogue"],
        &[],
        false,
    );
    let err = run
        .result
        .as_ref()
        .expect_err("an unsigned package was installed under SigLevel Required");
    let text = format!("{err}");
    println!("the error, as the user sees it:\n{text}");
    assert!(text.contains("rogue"), "names the package: {text}");
    assert!(
        text.contains("--repository") && text.contains("tools") && text.contains("Key="),
        "says what to do: {text}"
    );
    assert!(!run.output().exists(), "an archive was written");

    // Bad input, refused before any work (no root needed: --plan).
    let missing = format!(
        "tools Server={} Key={}/no-such-key.asc",
        fx.tools.server,
        run.dir.path().display()
    );
    let zst = fx.tools.local_package.to_str().unwrap();
    let deb = run.dir.path().join("tool_1_amd64.deb");
    fs::write(&deb, "!<arch>\n").unwrap();
    let deb = deb.to_str().unwrap();
    for (args, says) in [
        (
            vec![
                "--distro",
                "arch",
                "--mirror",
                &fx.signed,
                "--repository",
                &missing,
            ],
            "cannot read its key file",
        ),
        (
            vec![
                "--distro",
                "arch",
                "--mirror",
                &fx.signed,
                "--package-file",
                deb,
            ],
            "not a package file arch images take (`.pkg.tar.zst`)",
        ),
        (
            vec![
                "--distro",
                "debian",
                "--mirror",
                "http://127.0.0.1:9/debian",
                "--package-file",
                zst,
            ],
            "not a package file debian images take (`.deb`)",
        ),
    ] {
        let out = Command::new(IMGFORGE)
            .args(["build", "--plan"])
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    // The plan of a good one lists the repository and its key.
    let out = Command::new(IMGFORGE)
        .args([
            "build", "--plan", "--json", "--distro", "arch", "--mirror", &fx.signed,
        ])
        .args(["--repository", &tools_spec(&fx.tools)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = plan["sources"]["entries"].as_array().unwrap();
    let tools = entries
        .iter()
        .find(|e| e["from"] == "--repository")
        .unwrap_or_else(|| panic!("{entries:?}"));
    assert!(
        tools["line"]
            .as_str()
            .unwrap()
            .starts_with("[tools] SigLevel")
    );
    assert!(
        tools["note"]
            .as_str()
            .unwrap()
            .contains(&fx.tools.fingerprint)
    );
    assert_eq!(
        plan["sources"]["keys"][0]["image"],
        "/usr/share/pacman/keyrings/imgforge-tools.gpg"
    );
    // The same from imgforge.toml, with a package file.
    let toml = run.dir.path().join("imgforge.toml");
    fs::write(
        &toml,
        format!(
            "[defaults]\ndistro = \"arch\"\nmirror = \"{}\"\n\n[[image]]\nname = \"tools\"\n\
             repositories = [\"{}\"]\npackage_files = [\"{}\"]\n",
            fx.signed,
            tools_spec(&fx.tools),
            zst
        ),
    )
    .unwrap();
    let out = Command::new(IMGFORGE)
        .args(["build", "--plan", "--json", "--image", "tools", "--config"])
        .arg(&toml)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let from_file: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(from_file["sources"], plan["sources"]);
    assert_eq!(from_file["package_files"][0][0], zst);
}

/// The SBOM of an Arch tree: written into the tree as the build's stage
/// does, then made again by `imgforge sbom` from an image of that tree
/// (debugfs, no mount), byte for byte; both documents pass the independent
/// validators and list pacman's local database exactly, as pacman itself
/// reports it (`pacman -Qi`): every package once, with its version,
/// architecture, base package, alpm purl and licence.
fn check_sbom(run: &Run) {
    if !prerequisites(
        "unsigned_repository_with_the_default_keyring_path (its SBOM)",
        &[
            common::sbom::VALIDATORS,
            &[Need::Tool("debugfs"), Need::Tool("mkfs.ext4")],
        ],
    ) {
        return;
    }
    let started = Instant::now();
    let root = run.dir.path().join("root");
    assert!(
        root.join("var/lib/pacman/local/ALPM_DB_VERSION").is_file(),
        "pacman's database version file, the SBOM's marker"
    );
    let image = run.dir.path().join("arch.raw");
    let (manifest, layout_root_lba) = sbom_manifest(&root);
    let written = imgforge::sbom::write_into_tree(&root, &manifest)
        .unwrap()
        .expect("an SBOM for an Arch tree");
    for (inside, bytes) in [
        (imgforge::sbom::ROOTFS_SPDX, &written.0),
        (imgforge::sbom::ROOTFS_CYCLONEDX, &written.1),
    ] {
        assert_eq!(&fs::read_to_string(root.join(inside)).unwrap(), bytes);
    }
    image_of(&root, &manifest, &image);

    let out_dir = run.dir.path().join("sbom");
    fs::create_dir_all(&out_dir).unwrap();
    let out = Command::new(IMGFORGE)
        .arg("sbom")
        .arg(&image)
        .arg("-o")
        .arg(&out_dir)
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let spdx_path = PathBuf::from(result["spdx"].as_str().unwrap());
    let cdx_path = PathBuf::from(result["cyclonedx"].as_str().unwrap());
    assert_eq!(
        fs::read_to_string(&spdx_path).unwrap(),
        written.0,
        "imgforge sbom on the image (root filesystem at LBA {layout_root_lba}) vs the tree's"
    );
    assert_eq!(fs::read_to_string(&cdx_path).unwrap(), written.1);
    common::sbom::validate(&spdx_path, &cdx_path);

    let pacman = pacman_installed(&root);
    assert!(pacman.len() >= 4, "{pacman:?}");
    assert_eq!(result["packages"], pacman.len());
    let cdx: serde_json::Value = serde_json::from_str(&written.1).unwrap();
    let property = common::sbom::cdx_property;
    let libraries: Vec<&serde_json::Value> = cdx["components"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["type"] == "library")
        .collect();
    let mut listed = BTreeMap::new();
    for c in &libraries {
        let name = c["name"].as_str().unwrap().to_string();
        let licence = match c["licenses"].as_array().map(Vec::as_slice) {
            Some([l]) => Some(
                l["license"]["id"]
                    .as_str()
                    .or(l["expression"].as_str())
                    .unwrap()
                    .to_string(),
            ),
            None => None,
            other => panic!("{name}: licences {other:?}"),
        };
        let entry = PacmanPackage {
            version: c["version"].as_str().unwrap().to_string(),
            architecture: property(c, "imgforge:architecture"),
            base: property(c, "imgforge:source-package"),
            licence,
        };
        assert_eq!(
            c["purl"],
            format!(
                "pkg:alpm/arch/{name}@{}?arch={}",
                entry.version, entry.architecture
            )
        );
        assert!(listed.insert(name.clone(), entry).is_none(), "{name} twice");
    }
    assert_eq!(listed, pacman, "CycloneDX components vs pacman -Qi");
    let spdx: serde_json::Value = serde_json::from_str(&written.0).unwrap();
    let spdx_packages: Vec<(String, String, String)> = spdx["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["externalRefs"].is_array())
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["versionInfo"].as_str().unwrap().to_string(),
                p["licenseDeclared"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let from_pacman: Vec<(String, String, String)> = pacman
        .iter()
        .map(|(name, p)| {
            let licence = p.licence.as_deref().unwrap_or("NOASSERTION");
            (name.clone(), p.version.clone(), licence.to_string())
        })
        .collect();
    assert_eq!(spdx_packages, from_pacman, "SPDX packages vs pacman -Qi");
    // The fixture's licences, as the SBOM must map them.
    assert_eq!(
        pacman["hooked"].licence.as_deref(),
        Some("GPL-2.0-or-later AND LGPL-2.1-or-later")
    );
    assert_eq!(pacman["scripted"].licence, None, "custom:imgforge-test");
    assert_eq!(
        pacman["testshell"].licence.as_deref(),
        Some("(Apache-2.0 OR MIT) AND (GPL-2.0-only WITH Linux-syscall-note)")
    );
    assert_eq!(pacman["filesystem"].licence.as_deref(), Some("MIT"));
    assert_eq!(
        cdx["metadata"]["component"]["name"],
        "arch-rolling-x86_64-small-arch-sbom-test"
    );
    eprintln!("the SBOM checks took {:.1?}", started.elapsed());
}

/// A package as pacman reports it, with the licence the SBOM must give it.
#[derive(Debug, PartialEq)]
struct PacmanPackage {
    version: String,
    architecture: String,
    base: String,
    /// The SPDX expression: pacman's `Licenses` joined with AND when each
    /// is an SPDX id (the fixture's are plain ids or `custom:`).
    licence: Option<String>,
}

/// `pacman -Qi` on the tree's own database: name -> package.
fn pacman_installed(root: &Path) -> BTreeMap<String, PacmanPackage> {
    let config = root.join("../pacman-query.conf");
    fs::write(&config, "[options]\n").unwrap();
    let out = run(
        "pacman",
        &[
            "--config",
            config.to_str().unwrap(),
            "--root",
            root.to_str().unwrap(),
            "--dbpath",
            root.join("var/lib/pacman").to_str().unwrap(),
            "-Qi",
        ],
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let get = |key: &str| {
                block
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(" : ")?;
                        (k.trim() == key).then(|| v.trim().to_string())
                    })
                    .unwrap_or_else(|| panic!("no {key} in {block}"))
            };
            // pacman separates the entries with two spaces.
            let licences: Vec<String> = get("Licenses")
                .split("  ")
                .map(|l| {
                    if l.contains(' ') {
                        format!("({l})")
                    } else {
                        l.to_string()
                    }
                })
                .collect();
            let licence =
                (!licences.iter().any(|l| l.contains(':'))).then(|| licences.join(" AND "));
            (
                get("Name"),
                PacmanPackage {
                    version: get("Version"),
                    architecture: get("Architecture"),
                    // pacman 6.0's -Qi prints no base; the fixture has no
                    // split packages, so each is its own base.
                    base: get("Name"),
                    licence,
                },
            )
        })
        .collect()
}

/// The manifest of an image of `root` (laid out as a build lays out an
/// x86_64 disk), and the root partition's first LBA.
fn sbom_manifest(root: &Path) -> (imgforge::image::manifest::Manifest, u64) {
    use imgforge::image::layout;
    let arch = imgforge::platform::lookup("x86_64").unwrap();
    let disk_bytes = (imgforge::build::assemble::root_bytes_needed(root)
        + layout::fixed_bytes(arch))
    .next_multiple_of(1 << 20);
    let placed = layout::layout(
        disk_bytes,
        layout::DiskIds::from_seed("arch-sbom-test"),
        arch,
    );
    let partitions: Vec<serde_json::Value> = placed
        .partitions
        .iter()
        .enumerate()
        .map(|(i, p)| {
            serde_json::json!({
                "number": i + 1, "name": p.spec.name, "type_guid": p.spec.type_guid,
                "partition_guid": placed.ids.partition_guids[p.slot].to_string(),
                "first_lba": p.first_lba, "last_lba": p.last_lba,
                "filesystem": p.spec.filesystem,
            })
        })
        .collect();
    let manifest = serde_json::json!({
        "imgforge_version": "test", "distro": "arch", "release": "rolling",
        "architecture": "x86_64", "size_class": "small", "kernel_version": "6.12.1-arch1-1",
        "kernel_cmdline": "", "boot_modes": ["bios"], "layers": [], "packages": [],
        "build_time": 1_700_000_000u64, "seed": "arch-sbom-test",
        "disk": {
            "size_bytes": disk_bytes,
            "disk_guid": placed.ids.disk_guid.to_string(),
            "partitions": partitions,
        },
    });
    let root_lba = placed.get(layout::ROOT).unwrap().first_lba;
    (serde_json::from_value(manifest).unwrap(), root_lba)
}

/// A GPT disk image of `root` as `manifest` lays it out, without a boot
/// loader: the ext4 root filesystem (mkfs.ext4 -d) and the ESP with the
/// manifest, which is what `imgforge sbom` reads.
fn image_of(root: &Path, manifest: &imgforge::image::manifest::Manifest, image: &Path) {
    use imgforge::image::layout;
    let arch = imgforge::platform::lookup("x86_64").unwrap();
    let placed = layout::layout(
        manifest.disk.size_bytes,
        layout::DiskIds::from_seed("arch-sbom-test"),
        arch,
    );
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(image)
        .unwrap();
    file.set_len(manifest.disk.size_bytes).unwrap();
    layout::write_gpt(&mut file, &placed).unwrap();
    let esp = image.with_extension("esp");
    let manifest_path = esp.join(imgforge::image::manifest::ESP_PATH);
    fs::create_dir_all(manifest_path.parent().unwrap()).unwrap();
    fs::write(&manifest_path, serde_json::to_string(manifest).unwrap()).unwrap();
    imgforge::image::esp::write(
        &mut file,
        placed.offset(layout::ESP),
        placed.bytes(layout::ESP),
        placed.ids.esp_volume_id,
        manifest.build_time,
        &esp,
    )
    .unwrap();
    drop(file);
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-b",
            "4096",
            "-E",
            &format!("offset={}", placed.offset(layout::ROOT)),
            "-d",
            root.to_str().unwrap(),
            image.to_str().unwrap(),
            &(placed.bytes(layout::ROOT) / 4096).to_string(),
        ],
    );
}

/// `imgforge sbom` on images it cannot describe: one whose root has no
/// package database is bad input (exit 2, the databases it reads named);
/// one whose pacman database has a damaged entry fails (exit 1) naming the
/// entry inside the image. Neither leaves an SBOM file. No fixture: the
/// images are made here (mkfs.ext4 -d), in seconds.
#[test]
fn sbom_of_an_image_without_a_readable_package_database() {
    if !prerequisites(
        "sbom_of_an_image_without_a_readable_package_database",
        &[&[Need::Tool("debugfs"), Need::Tool("mkfs.ext4")]],
    ) {
        return;
    }
    let dir = common::scratch("imgforge-sbom-nodb-");
    let sbom_of = |tree: &Path, name: &str| -> (Output, PathBuf) {
        let (manifest, _) = sbom_manifest(tree);
        let image = dir.path().join(name);
        image_of(tree, &manifest, &image);
        let out = Command::new(IMGFORGE)
            .arg("sbom")
            .arg(&image)
            .output()
            .unwrap();
        assert!(!dir.path().join(format!("{name}.spdx.json")).exists());
        assert!(!dir.path().join(format!("{name}.cdx.json")).exists());
        (out, image)
    };

    let empty = dir.path().join("empty");
    fs::create_dir_all(empty.join("etc")).unwrap();
    let (out, image) = sbom_of(&empty, "empty.raw");
    let said = common::text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains(&format!(
            "{} has no package database imgforge reads",
            image.display()
        )) && said.contains("pacman (var/lib/pacman/local/ALPM_DB_VERSION)"),
        "{said}"
    );

    let damaged = dir.path().join("damaged");
    let local = damaged.join("var/lib/pacman/local");
    fs::create_dir_all(local.join("bash-5.2-1")).unwrap();
    fs::write(local.join("ALPM_DB_VERSION"), "9\n").unwrap();
    fs::write(
        local.join("bash-5.2-1/desc"),
        "%NAME%\nbash\n\n%VERSION%\n5.2-1\n\n%ARCH%\nx86_64\nx86_64_v3\n",
    )
    .unwrap();
    let (out, _) = sbom_of(&damaged, "damaged.raw");
    let said = common::text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("/var/lib/pacman/local/bash-5.2-1/desc (in the image's root filesystem)")
            && said.contains("%ARCH% has 2 values, not one"),
        "{said}"
    );
}
