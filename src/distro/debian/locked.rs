//! `--locked` Debian builds: the apt preferences that pin every locked
//! version, and the check, before anything is bootstrapped, that the
//! mirror still has each of them.

use std::collections::BTreeMap;
use std::fs;

use super::super::{BootstrapJob, DistroError};
use super::{DebianError, tool_detail};
use crate::sys::fsio::at;
use crate::sys::tool::Tool;

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

/// Asks apt (a private configuration under the work directory, the
/// build's sources) which versions the mirror has, and fails naming
/// every locked version it lacks, before anything is bootstrapped.
pub(super) fn check_versions(
    job: &BootstrapJob,
    locked: &BTreeMap<String, String>,
    architecture: &str,
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
    write(
        "sources.list",
        job.sources.bootstrap_lines().join("\n") + "\n",
    )?;
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
            arch = architecture
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
