//! Stage 1, bootstrap: a root filesystem in a directory, from the distro's
//! own bootstrap (see [`crate::distro`]), with the kernel and its initramfs
//! installed.
//!
//! The bootstrapped tree is cached as a tarball keyed by everything that
//! goes into it (distro, release, sources, package set, bootstrap files):
//! unpacking and configuring packages dominate a bootstrap, so a cache of
//! downloads alone barely helps. Downloads are cached too (one folder per
//! distro), so that a changed package set downloads only what is new.

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::context::BuildContext;
use crate::distro::{BootstrapJob, DistroError, Kernel};
use crate::image::manifest::Package;
use crate::sys::fsio::{PathError, at};
use crate::sys::tool::{Tool, ToolError};

/// Bump when the way a tree is bootstrapped changes, to invalidate caches.
const RECIPE_VERSION: &str = "imgforge-bootstrap-4";

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    Io(#[from] PathError),
    #[error(transparent)]
    Distro(#[from] DistroError),
}

/// The bootstrapped tree, unpacked in the work directory.
#[derive(Debug)]
pub struct Rootfs {
    pub dir: PathBuf,
    pub kernel: Kernel,
    pub packages: Vec<Package>,
    pub from_cache: bool,
}

pub fn run(ctx: &BuildContext) -> Result<Rootfs, BootstrapError> {
    let distro = &ctx.request.distro;
    let key = &ctx.request.cache_key;
    let tarball = ctx.cache.rootfs_dir.join(format!(
        "{}-{}-{key}.tar",
        distro.data().name,
        ctx.request.release
    ));
    let from_cache = tarball.is_file() && !ctx.refresh_cache;
    if from_cache {
        log::info!("bootstrap: reusing cached tree {}", tarball.display());
        ctx.progress.note(&format!("cached tree {}", short(key)));
    } else {
        let package_cache = ctx.cache.packages_dir.join(&distro.data().name);
        fs::create_dir_all(&package_cache).map_err(at("create", &package_cache))?;
        // Unique per process: two builds of the same package set may race.
        let partial = tarball.with_extension(format!("tar.{}.partial", std::process::id()));
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
            source_date_epoch: ctx.bootstrap_epoch(),
            keyring: ctx.keyring.as_deref(),
            progress: &ctx.progress,
        };
        if let Err(err) = distro.bootstrap(&job) {
            let _ = fs::remove_file(&partial);
            return Err(err.into());
        }
        fs::rename(&partial, &tarball).map_err(at("rename", &partial))?;
    }
    let dir = ctx.rootfs_dir();
    fs::create_dir_all(&dir).map_err(at("create", &dir))?;
    Tool::new("tar")
        .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf"])
        .arg(&tarball)
        .arg("-C")
        .arg(&dir)
        .run()?;
    Ok(Rootfs {
        kernel: distro.kernel(&dir)?,
        packages: distro.installed_packages(&dir)?,
        dir,
        from_cache,
    })
}

fn short(key: &str) -> &str {
    &key[..12.min(key.len())]
}

/// The cache key: a digest of everything that decides the tree's content.
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
}
