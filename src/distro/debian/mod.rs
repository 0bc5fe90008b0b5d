//! Debian: mmdebstrap from the host's apt mirror (or `--mirror`), dpkg's
//! status file for the package list, the kernel's config in /boot.
//!
//! The parts: [`archive`] (which sources an image gets: Debian's archive
//! from the host or `--mirror`, and `--repository` entries with their
//! keys), [`source_list`] (apt's one-line and deb822 files), [`sources`]
//! (the mirror's Release files), [`locked`] (`--locked` builds: apt pins and the check that the
//! mirror still has every version), [`dpkg`] (the installed package list
//! and the newest packaged file's time).

mod archive;
mod dpkg;
mod locked;
mod source_list;
mod sources;

use std::fs;
use std::path::Path;

use serde::Deserialize;

use super::mirror::CURL;
use super::{
    BootstrapJob, Distro, DistroData, DistroError, Kernel, MirrorDigest, SourceOptions, Sources,
};
use crate::data::DataDir;
use crate::image::manifest::Package;
use crate::sys::fsio::at;
use crate::sys::tool::{HostTool, Tool};

pub use locked::MissingVersion;
use locked::{check_versions, lock_preferences};
use sources::{mirror_digest, parse_source};

/// mmdebstrap's hooks that make `file://` sources and local `.deb`s
/// visible inside the tree at their host paths.
const FILE_MIRROR_HOOKS: &str = "/usr/share/mmdebstrap/hooks/file-mirror-automount";

/// The apt preferences file that pins a `--locked` bootstrap, inside the
/// tree while mmdebstrap runs (removed before the tree is packed).
const LOCK_PREFERENCES: &str = "/etc/apt/preferences.d/imgforge-locked.pref";

#[derive(Debug, thiserror::Error)]
pub enum DebianError {
    #[error(
        "no Debian mirror found in the host's apt sources (/etc/apt/sources.list, \
         /etc/apt/sources.list.d/); pass --mirror URL, e.g. the mirror your hosts use"
    )]
    NoMirror,
    #[error(
        "cannot read the state of the Debian mirror at {url}: {detail}\n\
         imgforge keys its cached tree by the mirror's Release files, so that an update (a security \
         fix) is never missed by a stale cache. Check the network and --mirror; to build without \
         the mirror, pass --locked FILE (a lock file written by an earlier `imgforge build --lock \
         FILE`) whose tree is in the cache"
    )]
    MirrorUnreachable { url: String, detail: String },
    #[error(
        "no cached tree matches the lock file, and the mirror cannot be read to bootstrap its \
         versions: {detail}\nCheck the network and --mirror (a lock file's tree is built once, \
         then reused without the mirror)"
    )]
    LockedNeedsMirror { detail: String },
    #[error("a package source is not an apt line `deb URI SUITE COMPONENT...`: {0}")]
    SourceLine(String),
    #[error("--repository '{spec}': {why}")]
    Repository { spec: String, why: String },
    #[error(
        "the mirror no longer has {} locked version(s):\n{}\n\
         Drop --locked to take the mirror's current versions (add --lock FILE to record them), or \
         point --mirror at an archive snapshot that has them (Debian: \
         https://snapshot.debian.org/archive/debian/YYYYMMDDTHHMMSSZ/ for the lock file's \
         newest_package_date)",
        .missing.len(),
        .missing.iter().map(|m| format!("  {m}")).collect::<Vec<_>>().join("\n")
    )]
    LockedVersionsMissing { missing: Vec<MissingVersion> },
    #[error(
        "the bootstrapped tree has no kernel in /boot (expected exactly one vmlinuz-*, found {found})"
    )]
    Kernel { found: usize },
}

/// `[bootstrap]` in rootfs/distros/debian.toml.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// mmdebstrap's --variant.
    variant: String,
}

pub struct Debian {
    data: DistroData,
    settings: Settings,
}

impl Debian {
    pub fn boxed(data: DistroData, _dir: &DataDir) -> Result<Box<dyn Distro>, DistroError> {
        let settings = super::bootstrap_settings(&data)?;
        Ok(Box::new(Self { data, settings }))
    }
}

impl Distro for Debian {
    fn data(&self) -> &DistroData {
        &self.data
    }

    fn host_tools(&self) -> Vec<HostTool> {
        vec![
            HostTool::new("mmdebstrap", "mmdebstrap"),
            HostTool::new("apt-get", "apt"),
            CURL,
        ]
    }

    /// `--mirror` (with -updates and -security), else the host's own
    /// Debian archive sources moved to the target release.
    fn sources(&self, release: &str, mirror: Option<&str>) -> Result<Sources, DistroError> {
        self.sources_with(
            release,
            &SourceOptions {
                mirror,
                ..SourceOptions::default()
            },
        )
    }

    /// As [`Distro::sources`], with `--security-mirror` and the
    /// `--repository` entries (their keys read from the host).
    fn sources_with(&self, release: &str, options: &SourceOptions) -> Result<Sources, DistroError> {
        let mut sources = match options.mirror {
            Some(mirror) => archive::mirror_sources(release, mirror, options.security_mirror),
            None => {
                let files = archive::read_host_files(Path::new("/etc/apt"));
                archive::host_sources(release, &files, Path::new(archive::APT_LISTS))?
            }
        };
        archive::add_repositories(&mut sources, options.repositories)?;
        Ok(sources)
    }

    fn package_file_suffix(&self) -> Option<&'static str> {
        Some(".deb")
    }

    fn refresh_package_lists(&self) -> Option<Vec<&'static str>> {
        Some(vec!["apt-get", "update", "-q"])
    }

    /// The image's own sources (its keys installed), written over what the
    /// bootstrap left: there, a repository's key is named by its host file.
    fn configure(&self, root: &Path, sources: &Sources) -> Result<(), DistroError> {
        for key in &sources.keys {
            let target = root.join(key.image.trim_start_matches('/'));
            if let Some(dir) = target.parent() {
                fs::create_dir_all(dir).map_err(at("create", dir))?;
            }
            fs::copy(&key.host, &target).map_err(at("copy", &key.host))?;
        }
        let list = root.join("etc/apt/sources.list");
        fs::write(&list, sources.lines.join("\n") + "\n").map_err(at("write", &list))?;
        Ok(())
    }

    fn mirror_state_files(&self, _release: &str, sources: &Sources) -> Vec<String> {
        sources
            .lines
            .iter()
            .filter_map(|line| parse_source(line).ok())
            .map(|s| s.in_release_url("InRelease"))
            .collect()
    }

    /// Each source's `dists/SUITE/InRelease` (or `Release`), keyed by the
    /// digests of the `Packages` indexes it lists for the source's
    /// components: a security update changes them, a re-signature does not.
    fn mirror_state(
        &self,
        _release: &str,
        sources: &Sources,
        work_dir: &Path,
    ) -> Result<Vec<MirrorDigest>, DistroError> {
        let dir = work_dir.join("mirror-state");
        fs::create_dir_all(&dir).map_err(at("create", &dir))?;
        let mut state = Vec::new();
        for (n, line) in sources.lines.iter().enumerate() {
            let dest = dir.join(format!("{n}-Release"));
            if let Some(digest) = mirror_digest(line, &dest, &self.data.architecture)? {
                state.push(digest);
            }
        }
        Ok(state)
    }

    /// dpkg records no package dates: the newest Release `Date:` of the
    /// mirror state, which is what an archive snapshot is addressed by.
    fn newest_package_date(
        &self,
        _root: &Path,
        mirror_state: &[MirrorDigest],
    ) -> Result<Option<String>, DistroError> {
        Ok(mirror_state.iter().filter_map(|m| m.date.clone()).max())
    }

    fn bootstrap(&self, job: &BootstrapJob) -> Result<(), DistroError> {
        job.progress
            .note("mmdebstrap (first build of this package set)");
        let quoted = |p: &Path| format!("'{}'", p.display());
        let includes: Vec<String> = match job.locked {
            // `pkg=version` for what was asked; the pins below hold the
            // dependencies (and the essential set) to their locked versions.
            Some(locked) => job
                .packages
                .iter()
                .map(|p| match locked.get(p) {
                    Some(version) => format!("{p}={version}"),
                    None => p.clone(),
                })
                .collect(),
            None => job.packages.to_vec(),
        };
        let mut tool = Tool::new("mmdebstrap")
            .arg("--mode=root")
            .arg("--format=tar")
            .arg(format!("--variant={}", self.settings.variant))
            .arg(format!("--architectures={}", self.data.architecture))
            .arg(format!("--include={}", includes.join(",")))
            // Keep downloaded packages for the cache, then leave none in the tree.
            .args(["--skip=download/empty", "--skip=essential/unlink"])
            .arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/")
            .arg(format!(
                "--setup-hook=sync-in {} /var/cache/apt/archives/",
                quoted(job.package_cache)
            ));
        let bootstrap_lines = job.sources.bootstrap_lines();
        if !job.package_files.is_empty() || bootstrap_lines.iter().any(|l| l.contains("file:")) {
            // dpkg runs inside the tree and reads local packages (and a
            // file:// source's) at their host paths: mmdebstrap's own hook
            // makes them appear there for the bootstrap, and cleans up.
            tool = tool.arg(format!("--hook-dir={FILE_MIRROR_HOOKS}"));
        }
        for file in job.package_files {
            // A path is one --include of its own (mmdebstrap splits lists).
            tool = tool.arg(format!("--include={}", file.display()));
        }
        if let Some(files) = job.bootstrap_files {
            tool = tool.arg(format!("--setup-hook=sync-in {} /", quoted(files)));
        }
        if let Some(locked) = job.locked {
            check_versions(job, locked, &self.data.architecture)?;
            let preferences = job.work_dir.join("imgforge-locked.pref");
            fs::write(&preferences, lock_preferences(locked)).map_err(at("write", &preferences))?;
            tool = tool
                .arg("--setup-hook=mkdir -p \"$1\"/etc/apt/preferences.d")
                .arg(format!(
                    "--setup-hook=copy-in {} /etc/apt/preferences.d/",
                    quoted(&preferences)
                ))
                .arg(format!("--customize-hook=rm -f \"$1\"{LOCK_PREFERENCES}"));
        }
        tool.arg(format!(
            "--customize-hook=sync-out /var/cache/apt/archives {}",
            quoted(job.package_cache)
        ))
        .arg("--customize-hook=find \"$1\"/var/cache/apt/archives -name '*.deb' -delete")
        .arg(job.release)
        .arg(job.output)
        .args(bootstrap_lines)
        // mmdebstrap's own temporary tree goes into our work directory, so
        // that whatever an interrupted run leaves is cleaned up with it.
        .env("TMPDIR", job.work_dir)
        .env("SOURCE_DATE_EPOCH", job.source_date_epoch.to_string())
        .run()?;
        Ok(())
    }

    /// Read from dpkg's status file (no host dpkg needed).
    fn installed_packages(&self, root: &Path) -> Result<Vec<Package>, DistroError> {
        let status_path = root.join("var/lib/dpkg/status");
        let status = fs::read_to_string(&status_path).map_err(at("read", &status_path))?;
        Ok(dpkg::parse_status(&status))
    }

    fn source_date_epoch(&self, root: &Path) -> Result<Option<u64>, DistroError> {
        dpkg::newest_packaged_file(root)
    }

    /// The one `/boot/vmlinuz-VERSION`, and `/boot/config-VERSION`.
    fn kernel(&self, root: &Path) -> Result<Kernel, DistroError> {
        let boot = root.join("boot");
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
        let [version] = kernels.as_slice() else {
            return Err(DebianError::Kernel {
                found: kernels.len(),
            }
            .into());
        };
        let config_path = boot.join(format!("config-{version}"));
        let config = fs::read_to_string(&config_path).map_err(at("read", &config_path))?;
        Ok(Kernel {
            version: version.clone(),
            config,
        })
    }
}

/// The last lines a failed tool printed, for an error that is not the
/// tool's own.
fn tool_detail(err: &crate::sys::tool::ToolError) -> String {
    match err {
        crate::sys::tool::ToolError::Failed { tail, .. } => tail.trim().to_string(),
        other => other.to_string(),
    }
}
