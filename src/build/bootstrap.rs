//! Stage 1, bootstrap: a root filesystem in a directory, from the distro's
//! own bootstrap (see [`crate::distro`]), with the kernel and its initramfs
//! installed.
//!
//! The bootstrapped tree is cached as a tarball keyed by everything that
//! goes into it (distro, release, sources, package set, bootstrap files)
//! and by what decides the package versions: the mirror's state, read at
//! build time (so a security update is never missed by a stale cache), or,
//! with `--locked`, the lock file's versions (no mirror read on a hit).
//! Unpacking and configuring packages dominate a bootstrap, so a cache of
//! downloads alone barely helps. Downloads are cached too (one folder per
//! distro), so that a changed package set downloads only what is new.

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::context::BuildContext;
use crate::distro::{BootstrapJob, DistroError, Kernel, MirrorDigest};
use crate::image::manifest::Package;
use crate::sys::fsio::{PathError, at};
use crate::sys::tool::{Tool, ToolError};

/// Bump when the way a tree is bootstrapped changes, to invalidate caches.
const RECIPE_VERSION: &str = "imgforge-bootstrap-5";

/// Extra text mixed into the mirror-state part of the key. For tests only:
/// they cannot make a real (signed) mirror publish an update, and this
/// changes the key exactly as a new mirror state would.
pub const MIRROR_STATE_SALT_ENV: &str = "IMGFORGE_TEST_MIRROR_STATE_SALT";

/// How many differing packages an error lists.
const SHOWN_DIFFERENCES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    Io(#[from] PathError),
    #[error(transparent)]
    Distro(#[from] DistroError),
    #[error(
        "the bootstrapped packages differ from the lock file {path} ({} package(s)):\n{}\n\
         The mirror no longer resolves the set to the locked versions (the bootstrapped tree was not \
         cached). Point --mirror at an archive of the lock's newest_package_date (Debian: \
         https://snapshot.debian.org/archive/debian/YYYYMMDDTHHMMSSZ/; Arch: \
         https://archive.archlinux.org/repos/YYYY/MM/DD/$repo/os/$arch), or drop --locked to take \
         the mirror's current versions",
        .differences.len(),
        .differences.iter().take(SHOWN_DIFFERENCES)
            .map(|(name, locked, installed)| format!("  {name}: locked {locked}, installed {installed}"))
            .collect::<Vec<_>>().join("\n")
    )]
    NotAsLocked {
        path: PathBuf,
        differences: Vec<(String, String, String)>,
    },
}

/// The bootstrapped tree, unpacked in the work directory.
#[derive(Debug)]
pub struct Rootfs {
    pub dir: PathBuf,
    pub kernel: Kernel,
    pub packages: Vec<Package>,
    pub from_cache: bool,
    /// The cached tree's key (the request's inputs and the package state).
    pub key: String,
    /// The mirror's state the tree was keyed by (a `--locked` build: the
    /// lock file's).
    pub mirror_state: Vec<MirrorDigest>,
    /// See [`crate::distro::Distro::newest_package_date`].
    pub newest_package_date: Option<String>,
}

pub fn run(ctx: &BuildContext) -> Result<Rootfs, BootstrapError> {
    let distro = &ctx.request.distro;
    let locked = ctx.request.locked.as_ref();
    let (key, mirror_state) = match locked {
        Some(locked) => (
            tree_key(&ctx.request.cache_key, &locked.lock.key_lines()),
            locked.lock.mirror_state.clone(),
        ),
        None => {
            ctx.progress.note("reading the mirror's state");
            let state =
                distro.mirror_state(&ctx.request.release, &ctx.request.sources, ctx.work_dir())?;
            let salt = std::env::var(MIRROR_STATE_SALT_ENV).ok();
            (
                tree_key(&ctx.request.cache_key, &mirror_key_lines(&state, salt)),
                state,
            )
        }
    };
    let tarball = ctx.cache.rootfs_dir.join(format!(
        "{}-{}-{key}.tar",
        distro.data().name,
        ctx.request.release
    ));
    let from_cache = tarball.is_file() && !ctx.refresh_cache;
    // Unique per process: two builds of the same package set may race.
    let partial = tarball.with_extension(format!("tar.{}.partial", std::process::id()));
    if from_cache {
        log::info!("bootstrap: reusing cached tree {}", tarball.display());
        ctx.progress.note(&format!("cached tree {}", short(&key)));
    } else {
        let package_cache = ctx.cache.packages_dir.join(&distro.data().name);
        fs::create_dir_all(&package_cache).map_err(at("create", &package_cache))?;
        let scratch = ctx.work_dir().join("bootstrap");
        fs::create_dir_all(&scratch).map_err(at("create", &scratch))?;
        let bootstrap_files = ctx.request.bootstrap_files.as_deref();
        let job = BootstrapJob {
            release: &ctx.request.release,
            packages: &ctx.request.packages,
            sources: &ctx.request.sources,
            package_cache: &package_cache,
            bootstrap_files,
            work_dir: &scratch,
            output: &partial,
            source_date_epoch: ctx.bootstrap_epoch(&mirror_state),
            keyring: ctx.keyring.as_deref(),
            locked: locked.map(|l| &l.lock.packages),
            progress: &ctx.progress,
        };
        if let Err(err) = distro.bootstrap(&job) {
            let _ = fs::remove_file(&partial);
            return Err(err.into());
        }
    }
    let unpacked = unpack_and_check(ctx, if from_cache { &tarball } else { &partial });
    if !from_cache {
        match unpacked {
            // Only a tree that is what was asked for goes into the cache.
            Ok(_) => fs::rename(&partial, &tarball).map_err(at("rename", &partial))?,
            Err(_) => {
                let _ = fs::remove_file(&partial);
            }
        }
    }
    let (dir, packages) = unpacked?;
    Ok(Rootfs {
        kernel: distro.kernel(&dir)?,
        newest_package_date: distro.newest_package_date(&dir, &mirror_state)?,
        packages,
        dir,
        from_cache,
        key,
        mirror_state,
    })
}

/// Unpacks a bootstrapped tree into the work directory and reads its
/// packages; with `--locked`, they must be the lock file's, exactly.
fn unpack_and_check(
    ctx: &BuildContext,
    tarball: &Path,
) -> Result<(PathBuf, Vec<Package>), BootstrapError> {
    let dir = ctx.rootfs_dir();
    fs::create_dir_all(&dir).map_err(at("create", &dir))?;
    Tool::new("tar")
        .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf"])
        .arg(tarball)
        .arg("-C")
        .arg(&dir)
        .run()?;
    let packages = ctx.request.distro.installed_packages(&dir)?;
    if let Some(locked) = &ctx.request.locked {
        let differences = locked.lock.differences(&packages);
        if !differences.is_empty() {
            return Err(BootstrapError::NotAsLocked {
                path: locked.path.clone(),
                differences,
            });
        }
    }
    Ok((dir, packages))
}

/// The mirror state's part of the key: each index and the digest of the
/// package lists it names.
pub fn mirror_key_lines(state: &[MirrorDigest], salt: Option<String>) -> Vec<String> {
    state
        .iter()
        .map(|m| format!("mirror {} {}", m.url, m.packages_sha256))
        .chain(salt.map(|s| format!("mirror salt {s}")))
        .collect()
}

/// The cached tree's key: the request's inputs key and what pins the
/// package versions (the mirror's state, or a lock file's versions).
pub fn tree_key(inputs_key: &str, package_state: &[String]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(inputs_key.as_bytes());
    for line in package_state {
        hasher.update([0]);
        hasher.update(line.as_bytes());
    }
    hex::encode(hasher.finalize())
}

fn short(key: &str) -> &str {
    &key[..12.min(key.len())]
}

/// The request's part of the cache key: a digest of everything known
/// before the build that decides the tree's content (no network).
pub fn cache_key(
    parts: &[&str],
    sources: &[String],
    packages: &[String],
    bootstrap_files: Option<&Path>,
) -> Result<String, PathError> {
    let mut hasher = Sha256::new();
    let mut packages = packages.to_vec();
    packages.sort();
    for part in std::iter::once(&RECIPE_VERSION).chain(parts) {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    for line in sources.iter().chain(&packages) {
        hasher.update(line.as_bytes());
        hasher.update([0]);
    }
    if let Some(files) = bootstrap_files {
        hash_tree(&mut hasher, files, files)?;
    }
    Ok(hex::encode(hasher.finalize()))
}

fn hash_tree(hasher: &mut Sha256, root: &Path, dir: &Path) -> Result<(), PathError> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(at("read", dir))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        let relative = path.strip_prefix(root).unwrap_or(&path);
        hasher.update(relative.to_string_lossy().as_bytes());
        if path.is_symlink() {
            hasher.update(
                fs::read_link(&path)
                    .map_err(at("read link", &path))?
                    .as_os_str()
                    .as_encoded_bytes(),
            );
        } else if path.is_dir() {
            hash_tree(hasher, root, &path)?;
        } else {
            hasher.update(fs::read(&path).map_err(at("read", &path))?);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::lock::Lock;

    #[test]
    fn cache_key_follows_every_input_but_package_order() {
        let files = tempfile::tempdir().unwrap();
        fs::write(files.path().join("hook"), "a").unwrap();
        let sources = vec!["deb http://m/debian bookworm main".to_string()];
        let packages = vec!["a".to_string(), "b".to_string()];
        let key = |parts: &[&str], s: &[String], p: &[String]| {
            cache_key(parts, s, p, Some(files.path())).unwrap()
        };
        let base = key(&["debian", "bookworm"], &sources, &packages);
        assert_eq!(
            base,
            key(&["debian", "bookworm"], &sources, &["b".into(), "a".into()])
        );
        assert_ne!(base, key(&["debian", "trixie"], &sources, &packages));
        assert_ne!(base, key(&["debian", "bookworm"], &[], &packages));
        assert_ne!(base, key(&["debian", "bookworm"], &sources, &["a".into()]));
        fs::write(files.path().join("hook"), "b").unwrap();
        assert_ne!(base, key(&["debian", "bookworm"], &sources, &packages));
    }

    fn digest(url: &str, packages: &str, whole: &str) -> MirrorDigest {
        MirrorDigest {
            url: url.into(),
            sha256: whole.into(),
            packages_sha256: packages.into(),
            date: None,
        }
    }

    #[test]
    fn tree_key_follows_the_mirror_packages_not_its_signature() {
        let inputs = "0".repeat(64);
        let url = "http://m/debian/dists/bookworm/InRelease";
        let key = |state: &[MirrorDigest], salt: Option<&str>| {
            tree_key(&inputs, &mirror_key_lines(state, salt.map(String::from)))
        };
        let base = key(&[digest(url, "p1", "f1")], None);
        assert_eq!(base.len(), 64);
        assert_ne!(base, inputs);
        // Re-signed (new file digest, same package indexes): same tree.
        assert_eq!(base, key(&[digest(url, "p1", "f2")], None));
        // A new package index (an update): another tree.
        assert_ne!(base, key(&[digest(url, "p2", "f2")], None));
        // Another suite's state counts too.
        assert_ne!(
            base,
            key(
                &[
                    digest(url, "p1", "f1"),
                    digest("http://m/sec/InRelease", "s", "s")
                ],
                None
            )
        );
        assert_ne!(base, key(&[digest(url, "p1", "f1")], Some("1")));
        assert_ne!(tree_key("a", &[]), tree_key("b", &[]));
    }

    #[test]
    fn a_locked_key_follows_the_locked_versions_only() {
        let mut lock: Lock = toml::from_str(
            "format = 1\ndistro = \"debian\"\nrelease = \"bookworm\"\narchitecture = \"amd64\"\n\
             kernel = \"cloud\"\nsources = []\nrequested = [\"a\"]\n[packages]\na = \"1\"\nb = \"2\"\n",
        )
        .unwrap();
        let inputs = "0".repeat(64);
        let base = tree_key(&inputs, &lock.key_lines());
        lock.mirror_state.push(digest("u", "p", "f"));
        lock.newest_package_date = Some("2026-01-01T00:00:00Z".into());
        assert_eq!(base, tree_key(&inputs, &lock.key_lines()));
        lock.packages.insert("b".into(), "3".into());
        assert_ne!(base, tree_key(&inputs, &lock.key_lines()));
    }
}
