//! The mirror's Release files that key the cached tree (which sources an
//! image gets is [`super::archive`]; how apt's files read,
//! [`super::source_list`]).

use std::path::Path;

use super::super::mirror;
use super::super::{DistroError, MirrorDigest};
use super::source_list::{AptEntry, parse_line};
use super::{DebianError, tool_detail};

/// One source line of the build's, parsed (brackets and all).
pub(super) fn parse_source(line: &str) -> Result<AptEntry, DebianError> {
    match parse_line(line, "the build's sources") {
        Ok(Some(entry)) => Ok(entry),
        _ => Err(DebianError::SourceLine(line.to_string())),
    }
}

/// A Release file's single-line field.
fn release_field(text: &str, name: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

/// The `SHA256:` lines of a Release file for the uncompressed `Packages`
/// index of each component on this architecture (a flat repository, no
/// components: its one `Packages`), in the file's order.
pub fn packages_indexes(release: &str, components: &[&str], architecture: &str) -> Vec<String> {
    let wanted: Vec<String> = if components.is_empty() {
        // A flat repository (`deb URI ./`): one index beside the Release.
        vec!["Packages".to_string()]
    } else {
        components
            .iter()
            .map(|c| format!("{c}/binary-{architecture}/Packages"))
            .collect()
    };
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
    let source = parse_source(line)?;
    let mut fetched = None;
    for name in ["InRelease", "Release"] {
        let url = source.in_release_url(name);
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
    let components: Vec<&str> = source.components.iter().map(String::as_str).collect();
    let indexes = packages_indexes(&text, &components, architecture);
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let flat = "Date: x\nSHA256:\n 66 600 Packages\n 77 700 Packages.gz\n";
        assert_eq!(packages_indexes(flat, &[], "amd64"), ["66 600 Packages"]);
        assert_eq!(
            release_field(RELEASE, "Date").as_deref(),
            Some("Sat, 11 Jul 2026 10:16:37 UTC")
        );
    }
}
