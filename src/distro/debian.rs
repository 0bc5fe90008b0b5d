//! Debian: mmdebstrap from the host's apt mirror (or `--mirror`), dpkg's
//! status file for the package list, the kernel's config in /boot.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{BootstrapJob, Distro, DistroData, DistroError, Kernel, Sources};
use crate::data::DataDir;
use crate::image::manifest::Package;
use crate::sys::fsio::at;
use crate::sys::tool::{HostTool, Tool};

#[derive(Debug, thiserror::Error)]
pub enum DebianError {
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
        vec![HostTool::new("mmdebstrap", "mmdebstrap")]
    }

    /// `--mirror`, else the host's own Debian sources with their suites
    /// moved to the target release.
    fn sources(&self, release: &str, mirror: Option<&str>) -> Result<Sources, DistroError> {
        if let Some(mirror) = mirror {
            return Ok(Sources {
                lines: vec![format!("deb {mirror} {release} main")],
                origin: "--mirror".into(),
            });
        }
        let lines = HostSources::read().for_release(release);
        if lines.is_empty() {
            return Err(DebianError::NoMirror.into());
        }
        Ok(Sources {
            lines,
            origin: "the host's apt sources, moved to the release".into(),
        })
    }

    fn bootstrap(&self, job: &BootstrapJob) -> Result<(), DistroError> {
        job.progress
            .note("mmdebstrap (first build of this package set)");
        let quoted = |p: &Path| format!("'{}'", p.display());
        let mut tool = Tool::new("mmdebstrap")
            .arg("--mode=root")
            .arg("--format=tar")
            .arg(format!("--variant={}", self.settings.variant))
            .arg(format!("--architectures={}", self.data.architecture))
            .arg(format!("--include={}", job.packages.join(",")))
            // Keep downloaded packages for the cache, then leave none in the tree.
            .args(["--skip=download/empty", "--skip=essential/unlink"])
            .arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/")
            .arg(format!(
                "--setup-hook=sync-in {} /var/cache/apt/archives/",
                quoted(job.package_cache)
            ));
        if let Some(files) = job.bootstrap_files {
            tool = tool.arg(format!("--setup-hook=sync-in {} /", quoted(files)));
        }
        tool.arg(format!(
            "--customize-hook=sync-out /var/cache/apt/archives {}",
            quoted(job.package_cache)
        ))
        .arg("--customize-hook=find \"$1\"/var/cache/apt/archives -name '*.deb' -delete")
        .arg(job.release)
        .arg(job.output)
        .args(&job.sources.lines)
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
        Ok(parse_dpkg_status(&status))
    }

    fn source_date_epoch(&self, root: &Path) -> Result<Option<u64>, DistroError> {
        newest_packaged_file(root)
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

/// The newest modification time among the files dpkg installed under
/// /usr (the `.list` files in /var/lib/dpkg/info/). dpkg gives each file the
/// time recorded in its package, which Debian clamps to the package's
/// changelog date; files outside /usr are left out because maintainer
/// scripts and the build rewrite some of them (/etc, /var, /boot).
fn newest_packaged_file(root: &Path) -> Result<Option<u64>, DistroError> {
    use std::os::unix::fs::MetadataExt;
    let info = root.join("var/lib/dpkg/info");
    let mut newest: Option<u64> = None;
    for entry in fs::read_dir(&info).map_err(at("read", &info))?.flatten() {
        let list = entry.path();
        if list.extension().and_then(|e| e.to_str()) != Some("list") {
            continue;
        }
        let text = fs::read_to_string(&list).map_err(at("read", &list))?;
        for file in text.lines().filter(|l| l.starts_with("/usr/")) {
            let Ok(meta) = fs::symlink_metadata(root.join(&file[1..])) else {
                continue;
            };
            if meta.is_file() {
                let mtime = u64::try_from(meta.mtime()).unwrap_or(0);
                newest = Some(newest.map_or(mtime, |n| n.max(mtime)));
            }
        }
    }
    Ok(newest)
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
    fn epoch_is_the_newest_file_dpkg_installed_under_usr() {
        use nix::sys::stat::{UtimensatFlags, utimensat};
        use nix::sys::time::TimeSpec;
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("var/lib/dpkg/info")).unwrap();
        fs::create_dir_all(r.join("usr/bin")).unwrap();
        fs::create_dir_all(r.join("etc")).unwrap();
        fs::write(
            r.join("var/lib/dpkg/info/a.list"),
            "/.\n/usr\n/usr/bin\n/usr/bin/a\n/etc/a.conf\n/usr/bin/gone\n",
        )
        .unwrap();
        fs::write(r.join("var/lib/dpkg/info/b.list"), "/usr/bin/b\n").unwrap();
        fs::write(r.join("var/lib/dpkg/info/b.md5sums"), "/usr/bin/c\n").unwrap();
        for (file, secs) in [
            ("usr/bin/a", 1_600_000_000),
            ("usr/bin/b", 1_650_000_000),
            ("usr/bin/c", 1_900_000_000),
            ("etc/a.conf", 1_800_000_000),
        ] {
            fs::write(r.join(file), "x").unwrap();
            let t = TimeSpec::new(secs, 0);
            utimensat(
                nix::fcntl::AT_FDCWD,
                &r.join(file),
                &t,
                &t,
                UtimensatFlags::FollowSymlink,
            )
            .unwrap();
        }
        assert_eq!(newest_packaged_file(r).unwrap(), Some(1_650_000_000));
        let empty = tempfile::tempdir().unwrap();
        assert!(
            newest_packaged_file(empty.path()).is_err(),
            "no dpkg database"
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
