//! The one Debian small image of a `cargo test` run: `imgforge build
//! --distro debian --size-class small -o debian-small.raw` (default seed
//! `debian-small`), built once and shared by every test binary that needs a
//! plain default Debian small image. It lives in a folder under /var/tmp
//! keyed by the imgforge binary's identity (size and mtime), guarded by a
//! file lock, so the test binaries of one run (which run one after another)
//! and the tests of one binary (two threads) build it once between them.
//! A copy older than [`MAX_AGE`] is rebuilt: the mirror may have moved on.
//!
//! `IMGFORGE_TEST_IMAGE=/path/image.raw` overrides it (with its manifest
//! beside it). Nobody writes to the shared image: a test that modifies an
//! image takes [`copy_of`] first.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use super::{IMGFORGE, text};

/// The file name of the shared image (its seed is `debian-small`).
pub const NAME: &str = "debian-small.raw";

/// A shared image older than this is built again.
pub const MAX_AGE: Duration = Duration::from_secs(3 * 3600);

const PREFIX: &str = "imgforge-test-image-";

/// The shared image: its path, the `build --json` summary (Null when
/// IMGFORGE_TEST_IMAGE gave an image without one) and the manifest.
pub struct SharedImage {
    pub path: PathBuf,
    pub summary: Value,
    pub manifest: Value,
}

impl SharedImage {
    /// The root filesystem's UUID (lowercase), from the manifest.
    pub fn root_uuid(&self) -> String {
        self.manifest["disk"]["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .find_map(|p| {
                (p["filesystem"].as_str() == Some("ext4"))
                    .then(|| p["filesystem_uuid"].as_str().unwrap().to_lowercase())
            })
            .expect("the manifest names an ext4 root")
    }
}

/// The shared Debian small image, built on first use in this run.
pub fn debian_small() -> &'static SharedImage {
    static IMAGE: OnceLock<SharedImage> = OnceLock::new();
    IMAGE.get_or_init(|| {
        if let Some(path) = std::env::var_os("IMGFORGE_TEST_IMAGE") {
            return load(PathBuf::from(path));
        }
        let dir = Path::new("/var/tmp").join(format!("{PREFIX}{}", binary_key()));
        let lock = File::create("/var/tmp/imgforge-test-image.lock").unwrap();
        let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .expect("lock /var/tmp/imgforge-test-image.lock");
        let done = dir.join("done");
        let fresh = std::fs::metadata(&done)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default() < MAX_AGE);
        if !fresh {
            prune_others(&dir);
            build(&dir);
        } else {
            eprintln!("reusing the shared image in {}", dir.display());
        }
        load(dir.join(NAME))
    })
}

/// A copy of the shared image in `dir` (sparse), for a test that writes to it.
pub fn copy_of(dir: &Path, name: &str) -> PathBuf {
    let copy = dir.join(name);
    let status = Command::new("cp")
        .arg("--sparse=always")
        .arg(&debian_small().path)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success(), "cp of the shared image failed");
    copy
}

fn load(path: PathBuf) -> SharedImage {
    let read = |suffix: &str| -> Option<Value> {
        let text = std::fs::read_to_string(format!("{}{suffix}", path.display())).ok()?;
        serde_json::from_str(&text).ok()
    };
    let manifest = read(".json").unwrap_or_else(|| {
        panic!(
            "no manifest {}.json beside the test image (IMGFORGE_TEST_IMAGE must be an \
             image imgforge built)",
            path.display()
        )
    });
    let summary = read(".summary.json").unwrap_or(Value::Null);
    SharedImage {
        path,
        summary,
        manifest,
    }
}

fn build(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let image = dir.join(NAME);
    let started = Instant::now();
    let out = Command::new(IMGFORGE)
        .args(["build", "--distro", "debian", "--size-class", "small"])
        .arg("-o")
        .arg(&image)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build of the shared image failed:\n{}",
        text(&out)
    );
    std::fs::write(format!("{}.summary.json", image.display()), &out.stdout).unwrap();
    std::fs::write(dir.join("done"), "").unwrap();
    eprintln!(
        "built the shared image {} in {:.0} s",
        image.display(),
        started.elapsed().as_secs_f64()
    );
}

/// The binary's identity: a new build of imgforge gets a new image.
fn binary_key() -> String {
    let meta = std::fs::metadata(IMGFORGE).expect("the imgforge binary");
    format!(
        "{:x}-{:x}{:x}",
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec()
    )
}

/// Shared images of other binaries, unused for an hour: gone (each is ~1 GiB).
fn prune_others(keep: &Path) {
    let Ok(entries) = std::fs::read_dir("/var/tmp") else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let ours = entry.file_name().to_string_lossy().starts_with(PREFIX);
        let idle = entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| {
            SystemTime::now()
                .duration_since(t)
                .is_ok_and(|age| age > Duration::from_secs(3600))
        });
        if ours && path != keep && path.is_dir() && idle {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}
