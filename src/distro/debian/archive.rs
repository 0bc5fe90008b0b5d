//! Which package sources an image gets: Debian's own archive (the release,
//! `-updates` and `-security`) and the user's `--repository` entries, never
//! a third-party repository of the host.
//!
//! A host source is Debian's archive by identity, not by its address: the
//! Release file apt already fetched for it (`/var/lib/apt/lists/`) says
//! `Origin: Debian`, or, when apt's lists lack it, it is signed by Debian's
//! archive keyring. Docker's `download.docker.com/linux/debian` and
//! Microsoft's `packages.microsoft.com/debian/12/prod` have "debian" in
//! their address and are neither.

use std::fs;
use std::path::{Path, PathBuf};

use super::DebianError;
use super::source_list::parse_one_line_file;
use super::source_list::{AptEntry, lists_file_name, parse_deb822_file, parse_line};
use crate::distro::{SourceEntry, SourceKey, Sources};

/// Where apt keeps the Release files it fetched.
pub const APT_LISTS: &str = "/var/lib/apt/lists";
/// Where a `--repository`'s key goes in the image (apt's documented place
/// for keys of local repositories).
const IMAGE_KEYRINGS: &str = "/etc/apt/keyrings";
/// `--mirror` without `--security-mirror`: Debian's CDN serves the
/// security archive at this address wherever it serves the archive.
pub const DEFAULT_SECURITY_MIRROR: &str = "http://deb.debian.org/debian-security";

/// The pockets an image's archive sources carry (`""` is the release).
const CARRIED_POCKETS: &[&str] = &["", "updates", "security"];

/// The host's apt source files, in apt's order: sources.list, then
/// sources.list.d's `.list` and `.sources` files sorted by name.
pub fn read_host_files(etc_apt: &Path) -> Vec<(PathBuf, String)> {
    let mut files = vec![etc_apt.join("sources.list")];
    if let Ok(dir) = fs::read_dir(etc_apt.join("sources.list.d")) {
        let mut more: Vec<PathBuf> = dir.filter_map(Result::ok).map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    files
        .into_iter()
        .filter(|f| {
            matches!(
                f.extension().and_then(|e| e.to_str()),
                Some("list" | "sources")
            )
        })
        .filter_map(|f| fs::read_to_string(&f).ok().map(|text| (f, text)))
        .collect()
}

/// The host's Debian archive sources moved to `release`; every other host
/// source listed as left out, with why.
pub fn host_sources(
    release: &str,
    files: &[(PathBuf, String)],
    lists_dir: &Path,
) -> Result<Sources, DebianError> {
    let mut sources = Sources {
        origin: "the host's apt sources: Debian's archive only, moved to the release".into(),
        ..Sources::default()
    };
    for (file, text) in files {
        let entries = if file.extension().is_some_and(|e| e == "sources") {
            parse_deb822_file(text, file)
        } else {
            let (entries, refused) = parse_one_line_file(text, file);
            for why in refused {
                log::warn!("apt source ignored (apt would refuse it too): {why}");
            }
            entries
        };
        for entry in entries {
            let considered = consider(&entry, release, lists_dir);
            if let Ok(line) = &considered
                && !sources.lines.contains(line)
            {
                sources.lines.push(line.clone());
            }
            sources.entries.push(SourceEntry {
                line: considered.as_ref().unwrap_or(&entry.line()).clone(),
                from: entry.from.clone(),
                used: considered.is_ok(),
                note: match considered {
                    Ok(_) => format!(
                        "Debian's archive ({}), moved to {release}",
                        evidence(&entry, lists_dir).unwrap_or_default()
                    ),
                    Err(why) => format!("left out: {why}"),
                },
            });
        }
    }
    if sources.lines.is_empty() {
        return Err(DebianError::NoMirror);
    }
    Ok(sources)
}

/// The image's line for a host entry, or why it is not carried.
fn consider(entry: &AptEntry, release: &str, lists_dir: &Path) -> Result<String, String> {
    evidence(entry, lists_dir)?;
    let (pocket, separator) = match entry.suite.split_once(['-', '/']) {
        Some((_, pocket)) => (pocket, if entry.suite.contains('/') { "/" } else { "-" }),
        None => ("", ""),
    };
    if !CARRIED_POCKETS.contains(&pocket) {
        return Err(format!(
            "suite {}: only the release, -updates and -security are carried",
            entry.suite
        ));
    }
    let target = format!("{release}{separator}{pocket}");
    let mut image = AptEntry {
        suite: target,
        // The host's architecture and other options are the host's.
        options: (entry.signed_by())
            .map(|k| vec![("signed-by".to_string(), k.to_string())])
            .unwrap_or_default(),
        ..entry.clone()
    };
    if image.components.is_empty() {
        image.components = vec!["main".into()];
    }
    Ok(image.line())
}

/// Why `entry` is Debian's archive, or why it cannot be taken for it.
fn evidence(entry: &AptEntry, lists_dir: &Path) -> Result<String, String> {
    for name in ["InRelease", "Release"] {
        let path = lists_dir.join(lists_file_name(&entry.in_release_url(name)));
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        let origin = text
            .lines()
            .find_map(|l| l.strip_prefix("Origin:"))
            .map(str::trim);
        return match origin {
            Some("Debian") => Ok("apt's Release file: Origin Debian".into()),
            other => Err(format!(
                "not Debian's archive (apt's Release file {}: Origin {})",
                path.display(),
                other.unwrap_or("missing")
            )),
        };
    }
    match entry.signed_by() {
        Some(keys) if keys.split([',', ' ']).all(is_debian_archive_keyring) => {
            Ok("signed by Debian's archive keyring".into())
        }
        Some(keys) => Err(format!(
            "not Debian's archive (signed by {keys}, not Debian's archive keyring)"
        )),
        None => Err(format!(
            "cannot tell it is Debian's archive: apt's lists ({}) hold no Release file for it and \
             it names no Debian archive keyring (run apt-get update, or pass --mirror)",
            lists_dir.display()
        )),
    }
}

fn is_debian_archive_keyring(path: &str) -> bool {
    Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("debian-archive-"))
}

/// `--mirror URL`: the release and `-updates` from it, `-security` from
/// `security` (default [`DEFAULT_SECURITY_MIRROR`]).
pub fn mirror_sources(release: &str, mirror: &str, security: Option<&str>) -> Sources {
    let mirror = mirror.trim_end_matches('/');
    let (security, security_from) = match security {
        Some(url) => (url.trim_end_matches('/'), "--security-mirror"),
        None => (
            DEFAULT_SECURITY_MIRROR,
            "--mirror (Debian's security archive by default; --security-mirror to change)",
        ),
    };
    let lines = [
        (format!("deb {mirror} {release} main"), "--mirror"),
        (format!("deb {mirror} {release}-updates main"), "--mirror"),
        (
            format!("deb {security} {release}-security main"),
            security_from,
        ),
    ];
    Sources {
        lines: lines.iter().map(|(l, _)| l.clone()).collect(),
        origin: "--mirror: the release, -updates and -security".into(),
        entries: lines
            .iter()
            .map(|(line, from)| SourceEntry {
                line: line.clone(),
                from: from.to_string(),
                used: true,
                note: String::new(),
            })
            .collect(),
        ..Sources::default()
    }
}

/// Adds each `--repository` line, its key read from the host file it names
/// and given a place in the image's keyrings. An unsigned repository, a
/// missing key file or a line apt would refuse is an error.
pub fn add_repositories(sources: &mut Sources, specs: &[String]) -> Result<(), DebianError> {
    for (n, spec) in specs.iter().enumerate() {
        let refuse = |why: String| DebianError::Repository {
            spec: spec.clone(),
            why,
        };
        let mut entry = parse_line(spec, "--repository")
            .map_err(refuse)?
            .ok_or_else(|| refuse("it is empty (or a comment or deb-src)".into()))?;
        if entry.option("trusted").is_some_and(|v| v == "yes") {
            return Err(refuse(
                "trusted=yes turns signature checks off; sign the repository's Release and give its key as signed-by=KEYFILE".into(),
            ));
        }
        let key = entry.signed_by().map(String::from).ok_or_else(|| {
            refuse("it is unsigned: name the repository's key as [signed-by=KEYFILE] (a file on this machine, armored .asc or binary .gpg)".into())
        })?;
        if key.contains(',') {
            return Err(refuse("signed-by names one key file here".into()));
        }
        let host = PathBuf::from(&key);
        let bytes = fs::read(&host).map_err(|e| {
            refuse(format!(
                "cannot read its key file {key} ({e}); give the path of the repository's public key"
            ))
        })?;
        let armored = bytes.starts_with(b"-----BEGIN PGP");
        let image = format!(
            "{IMAGE_KEYRINGS}/imgforge-repository-{}.{}",
            n + 1,
            if armored { "asc" } else { "gpg" }
        );
        for (k, v) in &mut entry.options {
            if k.eq_ignore_ascii_case("signed-by") {
                *v = image.clone();
            }
        }
        let line = entry.line();
        sources.lines.push(line.clone());
        sources.entries.push(SourceEntry {
            line,
            from: "--repository".into(),
            used: true,
            note: format!("key {key}, installed as {image}"),
        });
        sources.keys.push(SourceKey {
            host,
            image,
            sha256: crate::distro::mirror::sha256_hex(&bytes),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host: Debian's archive in deb822 and as a one-line entry
    /// with several bracket options, plus Docker's and Microsoft's
    /// repositories, whose addresses contain "debian".
    fn host_files() -> Vec<(PathBuf, String)> {
        vec![
            (
                "/etc/apt/sources.list.d/debian.sources".into(),
                "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates bookworm-backports\n\
                 Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
                    .into(),
            ),
            (
                "/etc/apt/sources.list.d/security.list".into(),
                "deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
                 http://deb.debian.org/debian-security bookworm-security main\n"
                    .into(),
            ),
            (
                "/etc/apt/sources.list.d/docker.list".into(),
                "deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.asc] \
                 https://download.docker.com/linux/debian bookworm stable\n"
                    .into(),
            ),
            (
                "/etc/apt/sources.list.d/microsoft-prod.list".into(),
                "deb [arch=amd64,arm64,armhf] https://packages.microsoft.com/debian/12/prod bookworm main\n"
                    .into(),
            ),
        ]
    }

    #[test]
    fn only_debians_archive_is_carried_with_its_key() {
        let lists = tempfile::tempdir().unwrap();
        // apt's own Release file for Microsoft's repository names its origin.
        fs::write(
            lists
                .path()
                .join("packages.microsoft.com_debian_12_prod_dists_bookworm_InRelease"),
            "Origin: microsoft-debian-bookworm-prod bookworm\nLabel: x\n",
        )
        .unwrap();
        let sources = host_sources("trixie", &host_files(), lists.path()).unwrap();
        let key = "[signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]";
        assert_eq!(
            sources.lines,
            [
                format!("deb {key} http://deb.debian.org/debian trixie main"),
                format!("deb {key} http://deb.debian.org/debian trixie-updates main"),
                format!("deb {key} http://deb.debian.org/debian-security trixie-security main"),
            ]
        );
        let left_out: Vec<&SourceEntry> = sources.entries.iter().filter(|e| !e.used).collect();
        assert_eq!(left_out.len(), 3, "{:?}", sources.entries);
        assert!(left_out[0].note.contains("bookworm-backports"));
        assert!(left_out[1].line.contains("download.docker.com"));
        assert!(
            left_out[1].note.contains("docker.asc"),
            "{}",
            left_out[1].note
        );
        assert_eq!(left_out[1].from, "/etc/apt/sources.list.d/docker.list:1");
        assert!(
            left_out[2].note.contains("microsoft-debian"),
            "{}",
            left_out[2].note
        );
        // Without apt's lists, an unsigned third party cannot pass for Debian.
        let empty = tempfile::tempdir().unwrap();
        let sources = host_sources("bookworm", &host_files(), empty.path()).unwrap();
        assert_eq!(sources.lines.len(), 3);
        assert!(
            !sources
                .lines
                .iter()
                .any(|l| l.contains("microsoft") || l.contains("docker"))
        );
    }

    #[test]
    fn a_release_file_of_origin_debian_is_the_archive_whatever_its_address() {
        let lists = tempfile::tempdir().unwrap();
        fs::write(
            lists
                .path()
                .join("mirror.internal_d_dists_bookworm_InRelease"),
            "Origin: Debian\nLabel: Debian\n",
        )
        .unwrap();
        let files = vec![(
            PathBuf::from("/etc/apt/sources.list"),
            "deb http://mirror.internal/d bookworm main contrib\n".to_string(),
        )];
        let sources = host_sources("bookworm", &files, lists.path()).unwrap();
        assert_eq!(
            sources.lines,
            ["deb http://mirror.internal/d bookworm main contrib"]
        );
        assert!(sources.entries[0].note.contains("Origin Debian"));
        let none = host_sources("bookworm", &files, Path::new("/nonexistent"));
        assert!(matches!(none, Err(DebianError::NoMirror)));
    }

    #[test]
    fn a_mirror_gives_updates_and_security() {
        let s = mirror_sources("bookworm", "http://m.example/debian/", None);
        assert_eq!(
            s.lines,
            [
                "deb http://m.example/debian bookworm main",
                "deb http://m.example/debian bookworm-updates main",
                "deb http://deb.debian.org/debian-security bookworm-security main",
            ]
        );
        let s = mirror_sources(
            "trixie",
            "http://m/debian",
            Some("http://m/debian-security"),
        );
        assert_eq!(
            s.lines[2],
            "deb http://m/debian-security trixie-security main"
        );
        assert_eq!(s.entries[2].from, "--security-mirror");
    }

    #[test]
    fn repositories_need_a_readable_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("ci.asc");
        fs::write(&key, "-----BEGIN PGP PUBLIC KEY BLOCK-----\n").unwrap();
        let mut sources = mirror_sources("bookworm", "http://m/debian", None);
        let spec = format!(
            "deb [arch=amd64 signed-by={}] file:///srv/ci stable main",
            key.display()
        );
        add_repositories(&mut sources, &[spec]).unwrap();
        assert_eq!(
            sources.lines[3],
            "deb [arch=amd64 signed-by=/etc/apt/keyrings/imgforge-repository-1.asc] file:///srv/ci stable main"
        );
        assert_eq!(sources.keys[0].host, key);
        assert_eq!(
            sources.bootstrap_lines()[3],
            format!(
                "deb [arch=amd64 signed-by={}] file:///srv/ci stable main",
                key.display()
            )
        );
        for (spec, wanted) in [
            ("deb file:///srv/ci stable main", "unsigned"),
            (
                "deb [signed-by=/nonexistent/k.gpg] file:///srv/ci stable main",
                "/nonexistent/k.gpg",
            ),
            (
                "deb [trusted=yes] file:///srv/ci stable main",
                "trusted=yes",
            ),
            ("deb [signed-by=/k file:///srv/ci stable main", "`]`"),
        ] {
            let err = add_repositories(&mut sources, &[spec.to_string()])
                .unwrap_err()
                .to_string();
            assert!(err.contains(wanted), "{spec}: {err}");
        }
    }
}
