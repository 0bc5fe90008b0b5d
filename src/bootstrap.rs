//! Stage 1, bootstrap: a root filesystem in a directory, from the distro's
//! own bootstrap tool, with the kernel and its initramfs installed.
//!
//! The bootstrapped tree is cached as a tarball keyed by everything that
//! goes into it (release, mirror, package set, bootstrap files): unpacking
//! and configuring packages dominate a bootstrap, so a cache of downloads
//! alone barely helps. Downloads are cached too, so that a changed package
//! set downloads only what is new.

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::build::BuildContext;
use crate::distro::Distro;
use crate::fsio::{PathError, at};
use crate::manifest::Package;
use crate::tool::{Tool, ToolError};

/// Bump when the way a tree is bootstrapped changes, to invalidate caches.
const RECIPE_VERSION: &str = "imgforge-bootstrap-3";

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    Io(#[from] PathError),
    #[error(
        "no Debian mirror found in the host's apt sources (/etc/apt/sources.list, \
         /etc/apt/sources.list.d/); pass --mirror URL, e.g. the mirror your hosts use"
    )]
    NoMirror,
    #[error(
        "the bootstrapped tree has no kernel in /boot (expected exactly one vmlinuz-*, found {found})"
    )]
    Kernel { found: usize },
}

/// The bootstrapped tree, unpacked in the work directory.
#[derive(Debug)]
pub struct Rootfs {
    pub dir: PathBuf,
    pub kernel_version: String,
    pub packages: Vec<Package>,
    pub from_cache: bool,
}

pub fn run(ctx: &BuildContext) -> Result<Rootfs, BootstrapError> {
    let sources = apt_sources(ctx)?;
    let key = cache_key(
        &ctx.distro,
        &ctx.release,
        &sources,
        &ctx.packages,
        &ctx.bootstrap_files,
    )?;
    let tarball = ctx
        .cache
        .rootfs_dir
        .join(format!("{}-{}-{key}.tar", ctx.distro.name, ctx.release));
    let from_cache = tarball.is_file() && !ctx.refresh_cache;
    if from_cache {
        log::info!("bootstrap: reusing cached tree {}", tarball.display());
        ctx.progress.note(&format!("cached tree {}", short(&key)));
    } else {
        ctx.progress
            .note("mmdebstrap (first build of this package set)");
        run_mmdebstrap(ctx, &sources, &tarball)?;
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
        kernel_version: kernel_version(&dir)?,
        packages: installed_packages(&dir)?,
        dir,
        from_cache,
    })
}

fn short(key: &str) -> &str {
    &key[..12.min(key.len())]
}

/// One-line apt sources for the target release: `--mirror`, else the
/// host's own Debian sources with their suites moved to the target release.
fn apt_sources(ctx: &BuildContext) -> Result<Vec<String>, BootstrapError> {
    if let Some(mirror) = &ctx.mirror {
        return Ok(vec![format!("deb {mirror} {} main", ctx.release)]);
    }
    let host = HostSources::read();
    let lines = host.for_release(&ctx.release);
    if lines.is_empty() {
        return Err(BootstrapError::NoMirror);
    }
    Ok(lines)
}

fn run_mmdebstrap(
    ctx: &BuildContext,
    sources: &[String],
    tarball: &Path,
) -> Result<(), BootstrapError> {
    let apt_cache = ctx.cache.apt_dir.join(&ctx.release);
    fs::create_dir_all(&apt_cache).map_err(at("create", &apt_cache))?;
    // Unique per process: two builds of the same package set may race.
    let partial = tarball.with_extension(format!("tar.{}.partial", std::process::id()));
    let quoted = |p: &Path| format!("'{}'", p.display());
    let result = Tool::new("mmdebstrap")
        .arg("--mode=root")
        .arg("--format=tar")
        .arg(format!("--variant={}", ctx.distro.variant))
        .arg(format!("--architectures={}", ctx.distro.architecture))
        .arg(format!("--include={}", ctx.packages.join(",")))
        // Keep downloaded packages for the cache, then leave none in the tree.
        .args(["--skip=download/empty", "--skip=essential/unlink"])
        .arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/")
        .arg(format!(
            "--setup-hook=sync-in {} /var/cache/apt/archives/",
            quoted(&apt_cache)
        ))
        .arg(format!(
            "--setup-hook=sync-in {} /",
            quoted(&ctx.bootstrap_files)
        ))
        .arg(format!(
            "--customize-hook=sync-out /var/cache/apt/archives {}",
            quoted(&apt_cache)
        ))
        .arg("--customize-hook=find \"$1\"/var/cache/apt/archives -name '*.deb' -delete")
        .arg(&ctx.release)
        .arg(&partial)
        .args(sources)
        // mmdebstrap's own temporary tree goes into our work directory, so
        // that whatever an interrupted run leaves is cleaned up with it.
        .env("TMPDIR", ctx.work_dir())
        .env("SOURCE_DATE_EPOCH", ctx.source_date_epoch.to_string())
        .run();
    if let Err(err) = result {
        let _ = fs::remove_file(&partial);
        return Err(err.into());
    }
    fs::rename(&partial, tarball).map_err(at("rename", &partial))?;
    Ok(())
}

/// The cache key: a digest of everything that decides the tree's content.
fn cache_key(
    distro: &Distro,
    release: &str,
    sources: &[String],
    packages: &[String],
    bootstrap_files: &Path,
) -> Result<String, BootstrapError> {
    let mut hasher = Sha256::new();
    let mut packages = packages.to_vec();
    packages.sort();
    for part in [
        RECIPE_VERSION,
        &distro.name,
        release,
        &distro.variant,
        &distro.architecture,
    ] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    for line in sources.iter().chain(&packages) {
        hasher.update(line.as_bytes());
        hasher.update([0]);
    }
    hash_tree(&mut hasher, bootstrap_files, bootstrap_files)?;
    Ok(hex::encode(hasher.finalize()))
}

fn hash_tree(hasher: &mut Sha256, root: &Path, dir: &Path) -> Result<(), BootstrapError> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(at("read", dir))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        let relative = path.strip_prefix(root).unwrap_or(&path);
        hasher.update(relative.to_string_lossy().as_bytes());
        if path.is_dir() {
            hash_tree(hasher, root, &path)?;
        } else {
            hasher.update(fs::read(&path).map_err(at("read", &path))?);
        }
    }
    Ok(())
}

fn kernel_version(rootfs: &Path) -> Result<String, BootstrapError> {
    let boot = rootfs.join("boot");
    let kernels: Vec<String> = fs::read_dir(&boot)
        .map_err(at("read", &boot))?
        .filter_map(Result::ok)
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("vmlinuz-")
                .map(String::from)
        })
        .collect();
    match kernels.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(BootstrapError::Kernel {
            found: kernels.len(),
        }),
    }
}

/// Installed packages and versions, read from dpkg's status file (no host
/// dpkg needed).
fn installed_packages(rootfs: &Path) -> Result<Vec<Package>, BootstrapError> {
    let status_path = rootfs.join("var/lib/dpkg/status");
    let status = fs::read_to_string(&status_path).map_err(at("read", &status_path))?;
    Ok(parse_dpkg_status(&status))
}

pub fn parse_dpkg_status(status: &str) -> Vec<Package> {
    let mut packages: Vec<Package> = status
        .split("\n\n")
        .filter_map(|stanza| {
            let field = |name: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
                    .map(str::trim)
            };
            (field("Status")? == "install ok installed").then(|| Package {
                name: field("Package").unwrap_or_default().to_string(),
                version: field("Version").unwrap_or_default().to_string(),
            })
        })
        .collect();
    packages.sort();
    packages
}

/// The host's apt sources (deb822 and one-line formats).
#[derive(Debug, Default)]
pub struct HostSources {
    /// (uri, suite, components)
    entries: Vec<(String, String, String)>,
}

impl HostSources {
    pub fn read() -> Self {
        let mut sources = Self::default();
        let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
        if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
            let mut more: Vec<PathBuf> = dir.filter_map(Result::ok).map(|e| e.path()).collect();
            more.sort();
            files.extend(more);
        }
        for file in files {
            let Ok(text) = fs::read_to_string(&file) else {
                continue;
            };
            match file.extension().and_then(|e| e.to_str()) {
                Some("sources") => sources.parse_deb822(&text),
                Some("list") => sources.parse_one_line(&text),
                _ => {}
            }
        }
        sources
    }

    pub fn parse_one_line(&mut self, text: &str) {
        for line in text.lines().map(str::trim) {
            let mut words = line.split_whitespace().filter(|w| !w.starts_with('['));
            if words.next() != Some("deb") {
                continue;
            }
            let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
                continue;
            };
            let components: Vec<&str> = words.collect();
            self.entries
                .push((uri.into(), suite.into(), components.join(" ")));
        }
    }

    pub fn parse_deb822(&mut self, text: &str) {
        for stanza in text.split("\n\n") {
            let field = |name: &str| {
                stanza
                    .lines()
                    .filter(|l| !l.trim_start().starts_with('#'))
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                    .map(str::trim)
                    .unwrap_or_default()
            };
            if !field("Types").split_whitespace().any(|t| t == "deb") || field("Enabled") == "no" {
                continue;
            }
            for uri in field("URIs").split_whitespace() {
                for suite in field("Suites").split_whitespace() {
                    self.entries
                        .push((uri.into(), suite.into(), field("Components").into()));
                }
            }
        }
    }

    /// Debian entries moved to `release`: a host suite `bookworm-updates`
    /// becomes `<release>-updates`, and so on.
    pub fn for_release(&self, release: &str) -> Vec<String> {
        let mut lines: Vec<String> = Vec::new();
        for (uri, suite, components) in &self.entries {
            if !uri.contains("debian") {
                continue;
            }
            let pocket = suite.split_once(['-', '/']).map(|(_, p)| p);
            let target = match pocket {
                None => release.to_string(),
                Some(p) if suite.contains('/') => format!("{release}/{p}"),
                Some(p) => format!("{release}-{p}"),
            };
            let components = if components.is_empty() {
                "main"
            } else {
                components
            };
            let line = format!("deb {uri} {target} {components}");
            if !lines.contains(&line) {
                lines.push(line);
            }
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_sources_move_to_the_target_release() {
        let mut sources = HostSources::default();
        sources.parse_deb822(
            "Types: deb\n# comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n\
             Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n\n\
             Types: deb-src\nURIs: http://mirror.example/debian\nSuites: bookworm\nComponents: main\n",
        );
        sources.parse_one_line("deb [arch=amd64] http://other.example/ubuntu jammy main\n");
        assert_eq!(
            sources.for_release("trixie"),
            [
                "deb http://mirror.example/debian trixie main",
                "deb http://mirror.example/debian trixie-updates main",
                "deb http://mirror.example/debian-security trixie-security main",
            ]
        );
    }

    #[test]
    fn dpkg_status_lists_installed_packages_only() {
        let status = "Package: b\nStatus: install ok installed\nVersion: 2.0\n\n\
                      Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n\n\
                      Package: a\nStatus: install ok installed\nVersion: 1:1.0-1\n";
        let packages = parse_dpkg_status(status);
        assert_eq!(packages.len(), 2);
        assert_eq!(packages[0].name, "a");
        assert_eq!(packages[0].version, "1:1.0-1");
    }
}
