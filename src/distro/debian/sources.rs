//! Debian's package sources: the host's apt sources (deb822 and one-line)
//! moved to the target release, apt source lines, and the mirror's Release
//! files that key the cached tree.

use std::fs;
use std::path::{Path, PathBuf};

use super::super::mirror;
use super::super::{DistroError, MirrorDigest};
use super::{DebianError, tool_detail};

/// One apt source line, `deb URI SUITE COMPONENT...`.
pub(super) struct AptSource<'a> {
    pub(super) uri: &'a str,
    pub(super) suite: &'a str,
    pub(super) components: Vec<&'a str>,
}

impl<'a> AptSource<'a> {
    pub(super) fn parse(line: &'a str) -> Result<Self, DebianError> {
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

/// One source's `dists/SUITE/InRelease` (or `Release`, where the mirror has
/// no InRelease), fetched to `dest`, as the digest its cache key takes:
/// the `Packages` indexes it lists for the source's components on
/// `architecture` (a security update changes them, a re-signature does
/// not). None when the mirror has neither file.
pub(super) fn mirror_digest(
    line: &str,
    dest: &Path,
    architecture: &str,
) -> Result<Option<MirrorDigest>, DistroError> {
    let source = AptSource::parse(line)?;
    let mut fetched = None;
    for name in ["InRelease", "Release"] {
        let url = format!(
            "{}/dists/{}/{name}",
            source.uri.trim_end_matches('/'),
            source.suite
        );
        match mirror::fetch(&url, dest) {
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
    let Some(url) = fetched else {
        return Ok(None);
    };
    let bytes = mirror::read(dest)?;
    let text = String::from_utf8_lossy(&bytes);
    let indexes = packages_indexes(&text, &source.components, architecture);
    Ok(Some(MirrorDigest {
        url,
        sha256: mirror::sha256_hex(&bytes),
        packages_sha256: if indexes.is_empty() {
            mirror::sha256_hex(&bytes)
        } else {
            mirror::sha256_hex(indexes.join("\n").as_bytes())
        },
        date: release_field(&text, "Date").and_then(|d| mirror::rfc2822_to_iso(&d)),
    }))
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
}
