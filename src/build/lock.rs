//! Lock files: `imgforge build --lock FILE` records the installed package
//! set with exact versions; `--locked FILE` bootstraps exactly that set
//! again (and keys the cached tree by it, so no mirror is read on a hit).
//!
//! The format is TOML, keys in a fixed order and packages sorted by name,
//! so that two lock files of the same set are byte-identical and a diff of
//! two lock files is the list of updates between them:
//!
//! ```toml
//! format = 1
//! distro = "debian"
//! release = "bookworm"
//! architecture = "amd64"
//! kernel = "cloud"
//! sources = ["deb http://deb.debian.org/debian bookworm main"]
//! newest_package_date = "2026-07-11T10:16:37Z"
//! requested = ["initramfs-tools", "systemd-sysv"]
//!
//! [[mirror_state]]
//! url = "http://deb.debian.org/debian/dists/bookworm/InRelease"
//! sha256 = "…"
//! packages_sha256 = "…"
//! date = "2026-07-11T10:16:37Z"
//!
//! [packages]
//! adduser = "3.134"
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::distro::MirrorDigest;
use crate::image::manifest::Package;

/// The lock file format this imgforge writes and reads.
pub const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot read the lock file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not an imgforge lock file: {message}\n(write one with `imgforge build --lock FILE`)"
    )]
    Parse { path: PathBuf, message: String },
    #[error(
        "{path} is lock format {found}; this imgforge reads format {FORMAT}: write it again with \
         `imgforge build --lock FILE`"
    )]
    Format { path: PathBuf, found: u32 },
    #[error(
        "{path} locks {field} `{locked}` but this build asks for `{requested}`: build with the lock \
         file's {field} (e.g. --{flag} {locked}), or write a new lock file with --lock"
    )]
    Mismatch {
        path: PathBuf,
        field: &'static str,
        flag: &'static str,
        locked: String,
        requested: String,
    },
    #[error(
        "{path} does not lock the requested package(s) {}: write a new lock file with --lock \
         (without --locked) for this package set",
        .missing.join(", ")
    )]
    NotLocked { path: PathBuf, missing: Vec<String> },
    #[error(
        "{path} was written for a build that also asked for {}: a locked build installs the whole \
         locked set, so ask for the same packages (the same --kernel, --profile, --first-boot and \
         --packages as the build that wrote it), or write a new lock file with --lock",
        .unasked.join(", ")
    )]
    NotRequested { path: PathBuf, unasked: Vec<String> },
    #[error("cannot write the lock file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A lock file's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub format: u32,
    pub distro: String,
    pub release: String,
    /// The distro's name for the architecture (`amd64`, `x86_64`).
    pub architecture: String,
    /// The `--kernel` choice.
    pub kernel: String,
    /// The package sources the set was installed from.
    pub sources: Vec<String>,
    /// Debian: the newest Release `Date:` of the mirror state (the
    /// snapshot.debian.org timestamp that has every version); Arch: the
    /// newest package build date (the Arch Linux Archive day).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest_package_date: Option<String>,
    /// The packages the build asked for (the rest are dependencies).
    pub requested: Vec<String>,
    /// The mirror's state when the set was installed.
    #[serde(default)]
    pub mirror_state: Vec<MirrorDigest>,
    /// SOURCE_DATE_EPOCH the set's tree was bootstrapped with (the
    /// initramfs's times): a `--locked` bootstrap uses it, so the tree it
    /// makes is the locked build's even when the mirror re-signed its
    /// Release files (a newer date, the same packages) since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_epoch: Option<u64>,
    /// Every installed package: name -> exact version.
    pub packages: BTreeMap<String, String>,
}

/// `--locked FILE`: the file and what it says.
#[derive(Debug, Clone)]
pub struct LockedBuild {
    pub path: PathBuf,
    pub lock: Lock,
}

/// What a build must match to use a lock file.
pub struct Expected<'a> {
    pub distro: &'a str,
    pub release: &'a str,
    pub architecture: &'a str,
    pub requested: &'a [String],
}

impl Lock {
    pub fn parse(path: &Path, text: &str) -> Result<Self, LockError> {
        let parse_error = |message: String| LockError::Parse {
            path: path.to_path_buf(),
            message,
        };
        // The format first, so that a newer file says so rather than
        // failing on a field this version does not know.
        let table: toml::Table = toml::from_str(text).map_err(|e| parse_error(e.to_string()))?;
        match table.get("format").and_then(toml::Value::as_integer) {
            Some(found) if found == i64::from(FORMAT) => {}
            Some(found) => {
                return Err(LockError::Format {
                    path: path.to_path_buf(),
                    found: u32::try_from(found).unwrap_or(u32::MAX),
                });
            }
            None => return Err(parse_error("no `format = 1`".into())),
        }
        let lock: Self = toml::from_str(text).map_err(|e| parse_error(e.to_string()))?;
        if lock.packages.is_empty() {
            return Err(parse_error("`[packages]` is empty".into()));
        }
        Ok(lock)
    }

    pub fn read(path: &Path) -> Result<Self, LockError> {
        let text = std::fs::read_to_string(path).map_err(|source| LockError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Fails when the lock was written for another distro, release or
    /// architecture, or lacks a requested package.
    pub fn check(&self, path: &Path, expected: &Expected) -> Result<(), LockError> {
        for (field, flag, locked, requested) in [
            ("distro", "distro", &self.distro, expected.distro),
            ("release", "release", &self.release, expected.release),
            (
                "architecture",
                "distro",
                &self.architecture,
                expected.architecture,
            ),
        ] {
            if locked != requested {
                return Err(LockError::Mismatch {
                    path: path.to_path_buf(),
                    field,
                    flag,
                    locked: locked.clone(),
                    requested: requested.to_string(),
                });
            }
        }
        let missing: Vec<String> = expected
            .requested
            .iter()
            .filter(|p| !self.packages.contains_key(*p))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(LockError::NotLocked {
                path: path.to_path_buf(),
                missing,
            });
        }
        let unasked: Vec<String> = self
            .requested
            .iter()
            .filter(|p| !expected.requested.contains(p))
            .cloned()
            .collect();
        if !unasked.is_empty() {
            return Err(LockError::NotRequested {
                path: path.to_path_buf(),
                unasked,
            });
        }
        Ok(())
    }

    /// `name=version` lines, sorted: the cache key's part for a locked build.
    pub fn key_lines(&self) -> Vec<String> {
        self.packages
            .iter()
            .map(|(name, version)| format!("locked {name}={version}"))
            .chain(
                self.bootstrap_epoch
                    .map(|epoch| format!("bootstrap epoch {epoch}")),
            )
            .collect()
    }

    /// Installed packages that differ from the lock: (name, locked,
    /// installed), `-` where one side has none.
    pub fn differences(&self, installed: &[Package]) -> Vec<(String, String, String)> {
        let installed: BTreeMap<&str, &str> = installed
            .iter()
            .map(|p| (p.name.as_str(), p.version.as_str()))
            .collect();
        let mut names: Vec<&str> = self.packages.keys().map(String::as_str).collect();
        names.extend(installed.keys());
        names.sort_unstable();
        names.dedup();
        names
            .into_iter()
            .filter_map(|name| {
                let locked = self.packages.get(name).map_or("-", String::as_str);
                let have = installed.get(name).copied().unwrap_or("-");
                (locked != have).then(|| (name.to_string(), locked.to_string(), have.to_string()))
            })
            .collect()
    }

    pub fn to_toml(&self) -> String {
        let mut text = String::from(
            "# imgforge lock file: the package set of a build, with exact versions.\n\
             # Reproduce it with `imgforge build --locked FILE`.\n",
        );
        text.push_str(&toml::to_string(self).expect("a lock serializes"));
        text
    }

    /// Writes the file whole or not at all (a temporary file beside it,
    /// renamed over it).
    pub fn write(&self, path: &Path) -> Result<(), LockError> {
        let error = |source| LockError::Write {
            path: path.to_path_buf(),
            source,
        };
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let mut temp = tempfile::Builder::new()
            .prefix(".imgforge-lock-")
            .tempfile_in(dir)
            .map_err(error)?;
        temp.write_all(self.to_toml().as_bytes()).map_err(error)?;
        temp.as_file().sync_all().map_err(error)?;
        temp.persist(path).map_err(|e| error(e.error))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock() -> Lock {
        Lock {
            format: FORMAT,
            distro: "debian".into(),
            release: "bookworm".into(),
            architecture: "amd64".into(),
            kernel: "cloud".into(),
            sources: vec!["deb http://m/debian bookworm main".into()],
            newest_package_date: Some("2026-07-11T10:16:37Z".into()),
            requested: vec!["sudo".into()],
            bootstrap_epoch: None,
            mirror_state: vec![MirrorDigest {
                url: "http://m/debian/dists/bookworm/InRelease".into(),
                sha256: "aa".into(),
                packages_sha256: "bb".into(),
                date: Some("2026-07-11T10:16:37Z".into()),
            }],
            packages: BTreeMap::from([
                ("sudo".into(), "1.9.13p3-1+deb12u1".into()),
                ("libc6".into(), "2.36-9+deb12u7".into()),
                ("base-files".into(), "12.4+deb12u6".into()),
            ]),
        }
    }

    #[test]
    fn a_written_lock_reads_back_the_same_and_is_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.lock");
        lock().write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(Lock::read(&path).unwrap(), lock());
        let names: Vec<&str> = text
            .lines()
            .skip_while(|l| *l != "[packages]")
            .skip(1)
            .filter_map(|l| l.split(" = ").next())
            .collect();
        assert_eq!(names, ["base-files", "libc6", "sudo"]);
        assert!(text.contains("sudo = \"1.9.13p3-1+deb12u1\""), "{text}");
        assert!(text.find("format = 1").unwrap() < text.find("[packages]").unwrap());
        // Nothing left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // Deterministic: the same lock writes the same bytes.
        lock().write(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }

    #[test]
    fn malformed_or_newer_lock_files_are_refused_clearly() {
        let path = Path::new("x.lock");
        let err = Lock::parse(path, "packages = 3").unwrap_err().to_string();
        assert!(
            err.contains("not an imgforge lock file") && err.contains("format"),
            "{err}"
        );
        let err = Lock::parse(path, "format = 2\nwhatever = 1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("format 2"), "{err}");
        let mut text = lock().to_toml();
        text = text.replace("[packages]", "[packages]\nbad = 3");
        let err = Lock::parse(path, &text).unwrap_err().to_string();
        assert!(err.contains("x.lock"), "{err}");
    }

    #[test]
    fn a_lock_must_match_the_build() {
        let l = lock();
        let path = Path::new("x.lock");
        let requested = vec!["sudo".to_string()];
        let ok = Expected {
            distro: "debian",
            release: "bookworm",
            architecture: "amd64",
            requested: &requested,
        };
        l.check(path, &ok).unwrap();
        let err = l
            .check(
                path,
                &Expected {
                    release: "trixie",
                    ..ok
                },
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`bookworm`") && err.contains("`trixie`"),
            "{err}"
        );
        let more = vec!["sudo".to_string(), "htop".to_string()];
        let err = l
            .check(
                path,
                &Expected {
                    requested: &more,
                    distro: "debian",
                    release: "bookworm",
                    architecture: "amd64",
                },
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("htop") && !err.contains("sudo,"), "{err}");
        let fewer: Vec<String> = vec![];
        let err = l
            .check(
                path,
                &Expected {
                    requested: &fewer,
                    distro: "debian",
                    release: "bookworm",
                    architecture: "amd64",
                },
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("also asked for sudo"), "{err}");
    }

    #[test]
    fn differences_name_both_versions() {
        let installed = vec![
            Package {
                name: "base-files".into(),
                version: "12.4+deb12u6".into(),
            },
            Package {
                name: "libc6".into(),
                version: "2.36-9+deb12u9".into(),
            },
            Package {
                name: "extra".into(),
                version: "1".into(),
            },
        ];
        assert_eq!(
            lock().differences(&installed),
            [
                ("extra".into(), "-".into(), "1".into()),
                (
                    "libc6".into(),
                    "2.36-9+deb12u7".into(),
                    "2.36-9+deb12u9".into()
                ),
                ("sudo".into(), "1.9.13p3-1+deb12u1".into(), "-".into()),
            ]
        );
    }
}
