//! Debian: mmdebstrap from the host's apt mirror (or `--mirror`), dpkg's
//! status file for the package list, the kernel's config in /boot.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::mirror::{self, CURL};
use super::{BootstrapJob, Distro, DistroData, DistroError, Kernel, MirrorDigest, Sources};
use crate::data::DataDir;
use crate::image::manifest::Package;
use crate::sys::fsio::at;
use crate::sys::tool::{HostTool, Tool};

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

/// A locked package version the mirror does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingVersion {
    pub package: String,
    pub locked: String,
    /// The versions the mirror has (empty: it has no such package).
    pub mirror: Vec<String>,
}

impl std::fmt::Display for MissingVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.mirror.is_empty() {
            write!(
                f,
                "{} {} (the mirror has no package {})",
                self.package, self.locked, self.package
            )
        } else {
            write!(
                f,
                "{} {} (the mirror has {})",
                self.package,
                self.locked,
                self.mirror.join(", ")
            )
        }
    }
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

    fn mirror_state_files(&self, _release: &str, sources: &Sources) -> Vec<String> {
        sources
            .lines
            .iter()
            .filter_map(|line| AptSource::parse(line).ok())
            .map(|s| {
                format!(
                    "{}/dists/{}/InRelease",
                    s.uri.trim_end_matches('/'),
                    s.suite
                )
            })
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
            let source = AptSource::parse(line)?;
            let dest = dir.join(format!("{n}-Release"));
            let mut fetched = None;
            for name in ["InRelease", "Release"] {
                let url = format!(
                    "{}/dists/{}/{name}",
                    source.uri.trim_end_matches('/'),
                    source.suite
                );
                match mirror::fetch(&url, &dest) {
                    Ok(()) => {
                        fetched = Some(url);
                        break;
                    }
                    Err(err) if name == "InRelease" && mirror::is_not_found(&err) => continue,
                    Err(err) => {
                        return Err(DebianError::MirrorUnreachable {
                            url,
                            detail: tool_detail(&err),
                        }
                        .into());
                    }
                }
            }
            let Some(url) = fetched else { continue };
            let bytes = mirror::read(&dest)?;
            let text = String::from_utf8_lossy(&bytes);
            let indexes = packages_indexes(&text, &source.components, &self.data.architecture);
            state.push(MirrorDigest {
                url,
                sha256: mirror::sha256_hex(&bytes),
                packages_sha256: if indexes.is_empty() {
                    mirror::sha256_hex(&bytes)
                } else {
                    mirror::sha256_hex(indexes.join("\n").as_bytes())
                },
                date: release_field(&text, "Date").and_then(|d| mirror::rfc2822_to_iso(&d)),
            });
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
        if let Some(files) = job.bootstrap_files {
            tool = tool.arg(format!("--setup-hook=sync-in {} /", quoted(files)));
        }
        if let Some(locked) = job.locked {
            self.check_locked_versions(job, locked)?;
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

impl Debian {
    /// Asks apt (a private configuration under the work directory, the
    /// build's sources) which versions the mirror has, and fails naming
    /// every locked version it lacks, before anything is bootstrapped.
    fn check_locked_versions(
        &self,
        job: &BootstrapJob,
        locked: &BTreeMap<String, String>,
    ) -> Result<(), DistroError> {
        job.progress
            .note("checking the locked versions against the mirror");
        let dir = job.work_dir.join("apt-query");
        for sub in [
            "lists/partial",
            "cache/archives/partial",
            "parts",
            "preferences.d",
        ] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).map_err(at("create", &path))?;
        }
        let write = |name: &str, text: String| {
            let path = dir.join(name);
            fs::write(&path, text).map_err(at("write", &path))
        };
        write("status", String::new())?;
        write("sources.list", job.sources.lines.join("\n") + "\n")?;
        let d = dir.display();
        write(
            "apt.conf",
            format!(
                "Dir::State \"{d}\";\nDir::State::Lists \"{d}/lists\";\n\
                 Dir::State::status \"{d}/status\";\nDir::Cache \"{d}/cache\";\n\
                 Dir::Etc::SourceList \"{d}/sources.list\";\nDir::Etc::SourceParts \"{d}/parts\";\n\
                 Dir::Etc::PreferencesParts \"{d}/preferences.d\";\n\
                 APT::Architecture \"{arch}\";\nAPT::Architectures {{ \"{arch}\"; }};\n\
                 APT::Sandbox::User \"root\";\nDebug::NoLocking \"true\";\n\
                 Acquire::Languages \"none\";\n\
                 Acquire::IndexTargets::deb::DEP-11::DefaultEnabled \"false\";\n\
                 Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled \"false\";\n\
                 Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled \"false\";\n\
                 Acquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled \"false\";\n\
                 Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled \"false\";\n",
                arch = self.data.architecture
            ),
        )?;
        let config = dir.join("apt.conf");
        Tool::new("apt-get")
            .args(["-q", "--error-on=any", "update"])
            .env("APT_CONFIG", &config)
            .run()
            .map_err(|err| DebianError::LockedNeedsMirror {
                detail: tool_detail(&err),
            })?;
        let out = Tool::new("apt-cache")
            .arg("madison")
            .args(locked.keys())
            .env("APT_CONFIG", &config)
            .run()?;
        let available = parse_madison(&String::from_utf8_lossy(&out.stdout));
        let missing = missing_versions(locked, &available);
        if missing.is_empty() {
            Ok(())
        } else {
            Err(DebianError::LockedVersionsMissing { missing }.into())
        }
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

/// One apt source line, `deb URI SUITE COMPONENT...`.
struct AptSource<'a> {
    uri: &'a str,
    suite: &'a str,
    components: Vec<&'a str>,
}

impl<'a> AptSource<'a> {
    fn parse(line: &'a str) -> Result<Self, DebianError> {
        let mut words = line.split_whitespace().filter(|w| !w.starts_with('['));
        match (words.next(), words.next(), words.next()) {
            (Some("deb"), Some(uri), Some(suite)) => Ok(Self {
                uri,
                suite,
                components: words.collect(),
            }),
            _ => Err(DebianError::SourceLine(line.to_string())),
        }
    }
}

/// A Release file's single-line field.
fn release_field(text: &str, name: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

/// The `SHA256:` lines of a Release file for the uncompressed `Packages`
/// index of each component on this architecture, in the file's order.
pub fn packages_indexes(release: &str, components: &[&str], architecture: &str) -> Vec<String> {
    let wanted: Vec<String> = components
        .iter()
        .map(|c| format!("{c}/binary-{architecture}/Packages"))
        .collect();
    release
        .lines()
        .skip_while(|l| *l != "SHA256:")
        .skip(1)
        .take_while(|l| l.starts_with(' '))
        .filter(|l| {
            l.split_whitespace()
                .nth(2)
                .is_some_and(|path| wanted.iter().any(|w| w == path))
        })
        .map(|l| l.trim().to_string())
        .collect()
}

/// apt preferences that make each locked version the only candidate (a
/// priority above 1000 also allows going back to it).
pub fn lock_preferences(locked: &BTreeMap<String, String>) -> String {
    let mut text = String::from("# Written by imgforge build --locked; removed from the image.\n");
    for (package, version) in locked {
        text.push_str(&format!(
            "\nPackage: {package}\nPin: version {version}\nPin-Priority: 1001\n"
        ));
    }
    text
}

/// `apt-cache madison` output as package -> versions.
pub fn parse_madison(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut versions: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let mut fields = line.split('|').map(str::trim);
        if let (Some(package), Some(version), Some(_)) =
            (fields.next(), fields.next(), fields.next())
        {
            let known = versions.entry(package.to_string()).or_default();
            if !known.iter().any(|v| v == version) {
                known.push(version.to_string());
            }
        }
    }
    versions
}

/// Locked versions that are not among the mirror's.
pub fn missing_versions(
    locked: &BTreeMap<String, String>,
    available: &BTreeMap<String, Vec<String>>,
) -> Vec<MissingVersion> {
    locked
        .iter()
        .filter_map(|(package, version)| {
            let mirror = available.get(package).cloned().unwrap_or_default();
            (!mirror.contains(version)).then(|| MissingVersion {
                package: package.clone(),
                locked: version.clone(),
                mirror,
            })
        })
        .collect()
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

    const RELEASE: &str = "Origin: Debian\nSuite: stable\nDate: Sat, 11 Jul 2026 10:16:37 UTC\n\
        MD5Sum:\n f230d61720e789abf5df55d6026230c6 50060337 main/binary-amd64/Packages\n\
        SHA256:\n 11 100 contrib/binary-amd64/Packages\n 22 200 main/binary-amd64/Packages\n\
         33 300 main/binary-amd64/Packages.xz\n 44 400 main/binary-arm64/Packages\n\
         55 500 main/binary-amd64/Packages.diff/Index\n";

    #[test]
    fn release_files_give_the_packages_indexes_and_the_date() {
        assert_eq!(
            packages_indexes(RELEASE, &["main"], "amd64"),
            ["22 200 main/binary-amd64/Packages"]
        );
        assert_eq!(
            packages_indexes(RELEASE, &["main", "contrib"], "amd64").len(),
            2
        );
        assert!(packages_indexes(RELEASE, &["main"], "riscv64").is_empty());
        assert_eq!(
            release_field(RELEASE, "Date").as_deref(),
            Some("Sat, 11 Jul 2026 10:16:37 UTC")
        );
    }

    #[test]
    fn madison_output_and_missing_locked_versions() {
        let available = parse_madison(
            "      bash | 5.2.15-2+b8 | http://deb.debian.org/debian bookworm/main amd64 Packages\n\
                   bash | 5.2.15-2+b7 | http://deb.debian.org/debian bookworm-updates/main amd64 Packages\n\
                   sudo | 1.9.13p3-1+deb12u2 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages\n",
        );
        assert_eq!(available["bash"], ["5.2.15-2+b8", "5.2.15-2+b7"]);
        let locked = BTreeMap::from([
            ("bash".to_string(), "5.2.15-2+b7".to_string()),
            ("sudo".to_string(), "1.9.13p3-1+deb12u1".to_string()),
            ("gone".to_string(), "1.0".to_string()),
        ]);
        let missing = missing_versions(&locked, &available);
        assert_eq!(missing.len(), 2);
        let message = DebianError::LockedVersionsMissing { missing }.to_string();
        assert!(
            message.contains("sudo 1.9.13p3-1+deb12u1 (the mirror has 1.9.13p3-1+deb12u2)"),
            "{message}"
        );
        assert!(
            message.contains("gone 1.0 (the mirror has no package gone)"),
            "{message}"
        );
        assert!(
            message.contains("Drop --locked") && message.contains("--mirror"),
            "{message}"
        );
    }

    #[test]
    fn lock_preferences_pin_every_locked_version() {
        let locked = BTreeMap::from([
            ("a".to_string(), "1:1.0-1".to_string()),
            ("b".to_string(), "2".to_string()),
        ]);
        let text = lock_preferences(&locked);
        assert!(text.contains("Package: a\nPin: version 1:1.0-1\nPin-Priority: 1001\n"));
        assert!(text.contains("Package: b\nPin: version 2\n"));
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
