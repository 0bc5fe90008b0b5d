//! `imgforge build --lock / --locked` and the tree cache keyed by the
//! mirror's state, end to end: real Debian bootstraps from the host's
//! mirror, real images. Needs root and the mirror, like the build.
//!
//! A test cannot make Debian's (signed) mirror publish an update, so the
//! "changed mirror state" case sets IMGFORGE_TEST_MIRROR_STATE_SALT, which
//! changes the key exactly where a new Release file would.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::{IMGFORGE, heavy, text};
use imgforge::build::lock::Lock;

mod common;

fn scratch() -> tempfile::TempDir {
    common::scratch("imgforge-lock-test-")
}

fn build(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(IMGFORGE)
        .arg("build")
        .args(args)
        .arg("--json")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn build_ok(args: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let out = build(args, env);
    assert!(
        out.status.success(),
        "build {args:?} failed:\n{}",
        text(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The cache folder the builds use (the default, as an operator's).
fn rootfs_cache() -> PathBuf {
    let base = std::env::var_os("IMGFORGE_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|x| PathBuf::from(x).join("imgforge")))
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/imgforge"));
    base.join("rootfs")
}

fn partials() -> Vec<PathBuf> {
    std::fs::read_dir(rootfs_cache())
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().ends_with(".partial"))
                .collect()
        })
        .unwrap_or_default()
}

fn manifest_packages(image: &Path) -> BTreeMap<String, String> {
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{}.json", image.display())).unwrap(),
    )
    .unwrap();
    manifest["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["version"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// One `build --lock` per test process: its folder, image and lock file.
struct Locked {
    dir: tempfile::TempDir,
    lock: PathBuf,
    summary: serde_json::Value,
}

static LOCKED: OnceLock<Locked> = OnceLock::new();

fn locked_build() -> &'static Locked {
    LOCKED.get_or_init(|| {
        let dir = scratch();
        common::remove_at_exit(dir.path());
        let image = dir.path().join("image.raw");
        let lock = dir.path().join("image.lock");
        let summary = build_ok(
            &[
                "-o",
                image.to_str().unwrap(),
                "--lock",
                lock.to_str().unwrap(),
            ],
            &[],
        );
        Locked { dir, lock, summary }
    })
}

#[test]
fn lock_records_the_image_packages_and_locked_reproduces_them() {
    let _heavy = heavy();
    let first = locked_build();
    let lock = Lock::read(&first.lock).unwrap();
    let file = std::fs::read_to_string(&first.lock).unwrap();
    // What the lock says: the manifest's packages, the build's setting.
    let image = first.dir.path().join("image.raw");
    assert_eq!(lock.packages, manifest_packages(&image));
    assert!(lock.packages.contains_key("openssh-server"));
    assert!(lock.packages.contains_key("libc6"));
    assert_eq!(lock.distro, "debian");
    assert_eq!(lock.architecture, "amd64");
    assert!(
        lock.requested
            .iter()
            .any(|p| p == "linux-image-cloud-amd64")
    );
    assert!(
        lock.mirror_state
            .iter()
            .any(|m| m.url.ends_with("/dists/bookworm/InRelease")),
        "{:?}",
        lock.mirror_state
    );
    let date = lock.newest_package_date.clone().unwrap();
    assert!(date.len() == 20 && date.ends_with('Z'), "{date}");
    assert_eq!(first.summary["lock"], first.lock.to_str().unwrap());
    // Sorted by name in the file.
    let names: Vec<&str> = file
        .lines()
        .skip_while(|l| *l != "[packages]")
        .skip(1)
        // TOML quotes names such as "libstdc++6"; compare the names.
        .filter_map(|l| l.split(" = ").next())
        .map(|n| n.trim_matches('"'))
        .collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted);

    // --locked: a tree keyed by the lock (a real, pinned bootstrap the
    // first time), with exactly the locked versions; its own --lock is the
    // same package set.
    // The same file name (hence the same seed) in another folder.
    let again = first.dir.path().join("again");
    std::fs::create_dir_all(&again).unwrap();
    let image2 = again.join("image.raw");
    let lock2 = again.join("image.lock");
    let args = [
        "-o",
        image2.to_str().unwrap(),
        "--locked",
        first.lock.to_str().unwrap(),
        "--lock",
        lock2.to_str().unwrap(),
    ];
    let second = build_ok(&args, &[]);
    assert_ne!(second["tree_key"], first.summary["tree_key"]);
    assert_eq!(manifest_packages(&image2), lock.packages);
    let relocked = Lock::read(&lock2).unwrap();
    assert_eq!(relocked.packages, lock.packages);
    assert_eq!(relocked.mirror_state, lock.mirror_state);
    // The same versions from the lock or from the mirror's state give the
    // same image, bit for bit (the first run bootstraps this tree anew).
    assert_eq!(second["sha256"], first.summary["sha256"]);

    // Again: the locked tree comes from the cache, and no mirror is needed
    // for that (an unreachable proxy for every URL scheme apt and curl use).
    let unreachable = "http://127.0.0.1:9";
    let third = build_ok(
        &args,
        &[("http_proxy", unreachable), ("https_proxy", unreachable)],
    );
    assert_eq!(third["bootstrap_from_cache"], true);
    assert_eq!(third["tree_key"], second["tree_key"]);

    // Without --locked and without the mirror: a clear error, no image.
    let offline_image = first.dir.path().join("offline.raw");
    let out = build(
        &["-o", offline_image.to_str().unwrap()],
        &[("http_proxy", unreachable), ("https_proxy", unreachable)],
    );
    assert!(!out.status.success());
    let message = text(&out);
    assert!(
        message.contains("cannot read the state of the Debian mirror")
            && message.contains("--locked FILE"),
        "{message}"
    );
    assert!(!offline_image.exists());
}

#[test]
fn a_locked_version_the_mirror_lacks_fails_clearly_and_leaves_nothing() {
    let _heavy = heavy();
    let first = locked_build();
    let mut lock = Lock::read(&first.lock).unwrap();
    let real = lock.packages["sudo"].clone();
    lock.packages
        .insert("sudo".into(), "0.0-imgforge-test-missing".into());
    let dir = scratch();
    let bad = dir.path().join("bad.lock");
    lock.write(&bad).unwrap();
    let image = dir.path().join("image.raw");
    let written_lock = dir.path().join("out.lock");
    let partials_before = partials();
    let out = build(
        &[
            "-o",
            image.to_str().unwrap(),
            "--locked",
            bad.to_str().unwrap(),
            "--lock",
            written_lock.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!out.status.success(), "{}", text(&out));
    let message = text(&out);
    assert!(
        message.contains("sudo 0.0-imgforge-test-missing (the mirror has")
            && message.contains(&real)
            && message.contains("Drop --locked")
            && message.contains("snapshot.debian.org"),
        "{message}"
    );
    // Nothing written: no image, no manifest, no lock file, no partial tree.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, ["bad.lock"]);
    assert_eq!(partials(), partials_before);
}

#[test]
fn the_tree_cache_follows_the_mirror_state() {
    let _heavy = heavy();
    let first = locked_build();
    let dir = scratch();
    let image = dir.path().join("image.raw");
    // Unchanged mirror state: the tree of the --lock build, no bootstrap.
    let same = build_ok(&["-o", image.to_str().unwrap()], &[]);
    assert_eq!(same["bootstrap_from_cache"], true, "{same}");
    assert_eq!(same["tree_key"], first.summary["tree_key"]);
    let bootstrap_seconds = |summary: &serde_json::Value| {
        summary["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["stage"] == "bootstrap")
            .unwrap()["seconds"]
            .as_f64()
            .unwrap()
    };
    // A new mirror state (simulated, see the top): a new bootstrap.
    let salt = format!("{}-{:?}", std::process::id(), std::time::SystemTime::now());
    let changed = build_ok(
        &["-o", image.to_str().unwrap()],
        &[("IMGFORGE_TEST_MIRROR_STATE_SALT", &salt)],
    );
    assert_eq!(changed["bootstrap_from_cache"], false, "{changed}");
    assert_ne!(changed["tree_key"], same["tree_key"]);
    assert!(
        bootstrap_seconds(&changed) > 2.0 * bootstrap_seconds(&same),
        "cached {} s, bootstrapped {} s",
        bootstrap_seconds(&same),
        bootstrap_seconds(&changed)
    );
    eprintln!(
        "bootstrap stage: cached tree {:.1} s, new mirror state {:.1} s",
        bootstrap_seconds(&same),
        bootstrap_seconds(&changed)
    );
    // The simulated state's tree is of no use to anyone: remove it.
    let key = changed["tree_key"].as_str().unwrap();
    for entry in std::fs::read_dir(rootfs_cache()).unwrap().flatten() {
        if entry.file_name().to_string_lossy().contains(key) {
            std::fs::remove_file(entry.path()).unwrap();
        }
    }
}

fn plan(args: &[&str]) -> Output {
    Command::new(IMGFORGE)
        .args(["build", "--plan", "--json"])
        .args(args)
        .output()
        .unwrap()
}

fn plan_ok(args: &[&str]) -> serde_json::Value {
    let out = plan(args);
    assert!(out.status.success(), "plan {args:?}:\n{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// --plan stays offline: a lock file decides the key without any mirror;
/// without one, the plan says the mirror's state is read at build time.
#[test]
fn plan_shows_what_keys_the_tree_without_the_network() {
    let unlocked = plan_ok(&[]);
    let state = unlocked["package_state"].as_str().unwrap();
    assert!(
        state.contains("read at build time") && state.contains("/dists/bookworm/InRelease"),
        "{state}"
    );
    let requested: Vec<String> = unlocked["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    let dir = scratch();
    let path = dir.path().join("plan.lock");
    let mut lock = Lock {
        format: imgforge::build::lock::FORMAT,
        distro: "debian".into(),
        release: "bookworm".into(),
        architecture: "amd64".into(),
        kernel: "cloud".into(),
        sources: vec![],
        newest_package_date: None,
        requested: requested.clone(),
        mirror_state: vec![],
        bootstrap_epoch: None,
        packages: requested
            .iter()
            .map(|p| (p.clone(), "1.0".into()))
            .collect(),
    };
    lock.write(&path).unwrap();
    let path_str = path.to_str().unwrap();
    let locked = plan_ok(&["--locked", path_str]);
    let key = locked["cache_key"].as_str().unwrap().to_string();
    assert_eq!(key.len(), 64);
    assert_ne!(key, unlocked["cache_key"].as_str().unwrap());
    assert!(
        locked["package_state"]
            .as_str()
            .unwrap()
            .contains("no mirror read"),
        "{locked}"
    );
    lock.packages.insert("sudo".into(), "2.0".into());
    lock.write(&path).unwrap();
    assert_ne!(plan_ok(&["--locked", path_str])["cache_key"], key.as_str());

    // A lock for another release, or without a requested package: refused
    // before anything runs, saying what to do.
    let out = plan(&["--locked", path_str, "--release", "trixie"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("`bookworm`") && text(&out).contains("--lock"),
        "{}",
        text(&out)
    );
    let out = plan(&["--locked", path_str, "--packages", "htop"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("htop"), "{}", text(&out));
    lock.requested.push("htop".into());
    lock.packages.insert("htop".into(), "3.2.2-2".into());
    lock.write(&path).unwrap();
    let out = plan(&["--locked", path_str]);
    assert!(!out.status.success());
    assert!(text(&out).contains("also asked for htop"), "{}", text(&out));
    let out = plan(&["--locked", "/nonexistent/imgforge.lock"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("/nonexistent/imgforge.lock"),
        "{}",
        text(&out)
    );
}

/// A lock records the package set as bootstrapped, before provisioning: a
/// `--script` that installs a package does not put it in the lock, and a
/// `--locked` rebuild with the same script installs it again on the pinned
/// tree instead of tripping over a package the lock cannot pin.
#[test]
fn a_lock_holds_the_bootstrapped_set_and_a_locked_rebuild_runs_the_script_again() {
    let _heavy = heavy();
    let plain = locked_build();
    let dir = scratch();
    let script = dir.path().join("install-hello.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nset -e\napt-get install -y --no-install-recommends hello\n",
    )
    .unwrap();
    let image = dir.path().join("provisioned.raw");
    let lock_path = dir.path().join("provisioned.lock");
    build_ok(
        &[
            "-o",
            image.to_str().unwrap(),
            "--lock",
            lock_path.to_str().unwrap(),
            "--script",
            script.to_str().unwrap(),
        ],
        &[],
    );
    assert!(manifest_packages(&image).contains_key("hello"));
    let lock = Lock::read(&lock_path).unwrap();
    assert!(!lock.packages.contains_key("hello"), "{:?}", lock.packages);
    assert_eq!(
        lock.packages,
        Lock::read(&plain.lock).unwrap().packages,
        "the same bootstrapped set as the build without the script"
    );

    let again = dir.path().join("again.raw");
    build_ok(
        &[
            "-o",
            again.to_str().unwrap(),
            "--locked",
            lock_path.to_str().unwrap(),
            "--script",
            script.to_str().unwrap(),
        ],
        &[],
    );
    let packages = manifest_packages(&again);
    assert!(packages.contains_key("hello"));
    for (name, version) in &lock.packages {
        assert_eq!(
            packages.get(name),
            Some(version),
            "{name}: the locked version"
        );
    }
}
