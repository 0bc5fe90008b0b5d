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
//! distro), so that a changed package set downloads only what is new. The
//! key itself is [`super::cache_key`].

use std::fs;
use std::path::{Path, PathBuf};

use super::cache_key::{self, MIRROR_STATE_SALT_ENV, mirror_key_lines, tree_key};
use super::context::BuildContext;
use crate::distro::{BootstrapJob, DistroError, Kernel, MirrorDigest};
use crate::image::manifest::Package;
use crate::sys::fsio::{PathError, at};
use crate::sys::tool::{Tool, ToolError};

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
    /// The packages as bootstrapped, before any provisioning step: what a
    /// lock file records (a `--locked` bootstrap reproduces this set;
    /// `packages` is what the image holds).
    pub bootstrapped_packages: Vec<Package>,
    /// What the provisioning steps did (filled by [`super::provision`]).
    pub provisioned: Vec<crate::image::manifest::ProvisionRecord>,
    /// SOURCE_DATE_EPOCH the tree was bootstrapped with; `None` for a tree
    /// cached before imgforge recorded it.
    pub bootstrap_epoch: Option<u64>,
}

/// A file at the top of a cached tree's tarball holding the epoch it was
/// bootstrapped with; taken out of the tree when it is unpacked.
const EPOCH_MARKER: &str = ".imgforge-bootstrap-epoch";

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
    let tarball = ctx.cache.rootfs_dir.join(cache_key::tree_file_name(
        &distro.data().name,
        &ctx.request.release,
        &key,
    ));
    let from_cache = tarball.is_file() && !ctx.refresh_cache;
    let partial = cache_key::partial_path(&tarball);
    if from_cache {
        log::info!("bootstrap: reusing cached tree {}", tarball.display());
        ctx.progress.note(&format!("cached tree {}", short(&key)));
    } else {
        let package_cache = ctx.cache.packages_dir.join(&distro.data().name);
        fs::create_dir_all(&package_cache).map_err(at("create", &package_cache))?;
        let scratch = ctx.work_dir().join("bootstrap");
        fs::create_dir_all(&scratch).map_err(at("create", &scratch))?;
        let bootstrap_files = ctx.request.bootstrap_files.as_deref();
        let package_files: Vec<PathBuf> = (ctx.request.package_files.iter())
            .map(|(p, _)| p.clone())
            .collect();
        let epoch = fresh_epoch(ctx, &mirror_state);
        let job = BootstrapJob {
            release: &ctx.request.release,
            packages: &ctx.request.packages,
            sources: &ctx.request.sources,
            package_cache: &package_cache,
            bootstrap_files,
            work_dir: &scratch,
            output: &partial,
            source_date_epoch: epoch,
            keyring: ctx.keyring.as_deref(),
            package_files: &package_files,
            locked: locked.map(|l| &l.lock.packages),
            progress: &ctx.progress,
            // --locked keys the tree by the lock's versions, not the mirror.
            mirror_state: if locked.is_some() { &[] } else { &mirror_state },
        };
        if let Err(err) = distro
            .bootstrap(&job)
            .map_err(BootstrapError::from)
            .and_then(|()| append_epoch_marker(&partial, epoch, &scratch))
        {
            let _ = fs::remove_file(&partial);
            return Err(err);
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
    let bootstrap_epoch = take_epoch_marker(&dir)?;
    Ok(Rootfs {
        kernel: distro.kernel(&dir)?,
        newest_package_date: distro.newest_package_date(&dir, &mirror_state)?,
        bootstrapped_packages: packages.clone(),
        packages,
        dir,
        from_cache,
        key,
        mirror_state,
        provisioned: Vec::new(),
        bootstrap_epoch,
    })
}

/// SOURCE_DATE_EPOCH for a fresh bootstrap: `--epoch`; else, with
/// `--locked`, the epoch the locked tree was bootstrapped with; else the
/// newest date of the mirror state (see [`BuildContext::bootstrap_epoch`]).
fn fresh_epoch(ctx: &BuildContext, mirror_state: &[MirrorDigest]) -> u64 {
    let locked = ctx.request.locked.as_ref();
    match locked.and_then(|l| l.lock.bootstrap_epoch) {
        Some(epoch) if ctx.epoch_override.is_none() => epoch,
        _ => ctx.bootstrap_epoch(mirror_state),
    }
}

/// Records the epoch in the tarball (appended; the tree is a plain tar).
fn append_epoch_marker(tarball: &Path, epoch: u64, scratch: &Path) -> Result<(), BootstrapError> {
    let marker_dir = scratch.join("epoch-marker");
    fs::create_dir_all(&marker_dir).map_err(at("create", &marker_dir))?;
    let marker = marker_dir.join(EPOCH_MARKER);
    fs::write(&marker, format!("{epoch}\n")).map_err(at("write", &marker))?;
    Tool::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-rf"])
        .arg(tarball)
        .arg("-C")
        .arg(&marker_dir)
        .arg(EPOCH_MARKER)
        .run()?;
    Ok(())
}

/// The epoch an unpacked tree was bootstrapped with, its marker removed.
fn take_epoch_marker(dir: &Path) -> Result<Option<u64>, BootstrapError> {
    let marker = dir.join(EPOCH_MARKER);
    if !marker.is_file() {
        log::info!("bootstrap: the cached tree does not record its bootstrap epoch");
        return Ok(None);
    }
    let text = fs::read_to_string(&marker).map_err(at("read", &marker))?;
    fs::remove_file(&marker).map_err(at("remove", &marker))?;
    Ok(text.trim().parse().ok())
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
    // A failed initramfs hook does not fail the package manager.
    crate::distro::initrd::check_installed(&dir, ctx.request.distro.data())
        .map_err(DistroError::from)?;
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

fn short(key: &str) -> &str {
    &key[..12.min(key.len())]
}
