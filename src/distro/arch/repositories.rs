//! Which pacman repositories an image gets: Arch's own (the data file's
//! `repositories`, core and extra), from `--mirror`, the host's
//! pacman.conf or the data file's default mirror, and the user's
//! `--repository` entries with their keys; never a third-party repository
//! of the host. The shape follows Debian's `archive.rs`: every source
//! considered is a [`SourceEntry`] with where it came from and why it was
//! taken or left out.
//!
//! A host's repository is Arch's by its section name (the data file's
//! `official_repositories`), and only those of the image's `repositories`
//! are carried; a `[chaotic-aur]` or private repository is left out, and
//! `multilib` only comes with `--repository multilib`.
//!
//! `--repository 'NAME Server=URL Key=KEYFILE [SigLevel=LEVEL,...]'`: a
//! section `[NAME]` with its Server(s) and SigLevel (default `Required
//! DatabaseOptional`; a level that lets an unsigned package in is refused)
//! in the bootstrap's and the image's pacman.conf; KEYFILE (an OpenPGP
//! public key, armored or binary) is added to the build's keyring and
//! locally signed, and shipped as the pacman keyring
//! `/usr/share/pacman/keyrings/imgforge-NAME.gpg` (with its `-trusted`
//! list), which the image's first boot populates into the instance's own
//! keyring.

use std::fs;
use std::path::{Path, PathBuf};

use super::ArchError;
use super::pacman_conf::{ConfRepository, read_repositories};
use crate::distro::{SourceEntry, SourceKey, Sources};
use crate::sys::fsio::at;
use crate::sys::tool::Tool;

/// The host's pacman configuration (an Arch host's mirrors).
pub const HOST_PACMAN_CONF: &str = "/etc/pacman.conf";
/// Where a repository's key goes in the image: Arch's keyring folder,
/// which `pacman-key --populate NAME` reads.
pub const IMAGE_KEYRINGS: &str = "/usr/share/pacman/keyrings";
/// pacman's SigLevel for a `--repository` without one.
pub const DEFAULT_SIG_LEVEL: &str = "Required DatabaseOptional";
/// SigLevel words that keep package signatures required.
const ACCEPTED_SIG_LEVELS: &[&str] = &[
    "Required",
    "PackageRequired",
    "TrustedOnly",
    "PackageTrustedOnly",
    "DatabaseRequired",
    "DatabaseOptional",
    "DatabaseNever",
    "DatabaseTrustedOnly",
    "DatabaseTrustAll",
];
/// The marker line before the `--repository` sections in the image's
/// pacman.conf (what follows it is imgforge's, rewritten on every build).
const IMAGE_CONF_MARKER: &str = "# Added by imgforge (--repository):";

/// What decides which repositories an image gets (from the data file).
pub struct Rules<'a> {
    /// The image's own Arch repositories (core, extra).
    pub repositories: &'a [String],
    /// Every repository name that is Arch's own.
    pub official: &'a [String],
}

/// `--mirror URL` or the data file's default: one `Server =` line for
/// every repository of the image.
pub fn mirror_sources(url: &str, from: &str, origin: &str) -> Result<Sources, ArchError> {
    if !url.contains("$repo") {
        return Err(ArchError::MirrorWithoutRepo(url.to_string()));
    }
    let line = format!("Server = {url}");
    Ok(Sources {
        lines: vec![line.clone()],
        origin: origin.into(),
        entries: vec![SourceEntry {
            line,
            from: from.into(),
            used: true,
            note: "the server of every Arch repository of the image".into(),
        }],
        ..Sources::default()
    })
}

/// `--mirror`, else the host's pacman.conf's Arch mirrors, else the
/// data file's default mirror; what the host has beside them is listed
/// as left out.
pub fn image_sources(
    mirror: Option<&str>,
    host_conf: &Path,
    default_mirror: &str,
    rules: &Rules,
) -> Result<Sources, ArchError> {
    if let Some(url) = mirror {
        return mirror_sources(url, "--mirror", "--mirror");
    }
    let host = if host_conf.is_file() {
        host_sources(host_conf, rules)
    } else {
        Sources::default()
    };
    if !host.lines.is_empty() {
        return Ok(host);
    }
    let mut sources = mirror_sources(
        default_mirror,
        "rootfs/distros/arch.toml (default_mirror)",
        "Arch's geo mirror (default)",
    )?;
    if host_conf.is_file() {
        sources.entries.insert(
            0,
            SourceEntry {
                line: host_conf.display().to_string(),
                from: "the host".into(),
                used: false,
                note: "the host's pacman.conf names no Server for Arch's repositories".into(),
            },
        );
    }
    sources.entries.extend(host.entries);
    Ok(sources)
}

/// The `Server =` lines of the host's Arch repositories (those of the
/// image's `repositories`, in the host's order); every other section and
/// server listed as left out, with why. No line: the host names no Arch
/// mirror (the caller falls back to the default).
pub fn host_sources(conf: &Path, rules: &Rules) -> Sources {
    let mut sources = Sources {
        origin: format!(
            "the host's {}: Arch's own repositories only",
            conf.display()
        ),
        ..Sources::default()
    };
    for repo in read_repositories(conf) {
        consider(&mut sources, &repo, rules);
    }
    sources
}

fn consider(sources: &mut Sources, repo: &ConfRepository, rules: &Rules) {
    let carried = rules.repositories.contains(&repo.name);
    let why_not = if carried {
        None
    } else if rules.official.contains(&repo.name) {
        Some(format!(
            "left out: Arch's own {}, not among the image's repositories ({}); \
             --repository {} adds it",
            repo.name,
            rules.repositories.join(", "),
            repo.name
        ))
    } else {
        Some(format!(
            "left out: [{}] is not Arch's own repository (a third-party or private \
             repository of the host); --repository adds one with its key",
            repo.name
        ))
    };
    if repo.servers.is_empty() {
        sources.entries.push(SourceEntry {
            line: format!("[{}]", repo.name),
            from: repo.from.clone(),
            used: false,
            note: why_not
                .clone()
                .unwrap_or_else(|| "left out: no Server line".into()),
        });
    }
    for (url, from) in &repo.servers {
        let line = format!("Server = {url}");
        let note = match &why_not {
            Some(why) => Some(why.clone()),
            None if !url.contains("$repo") => Some(format!(
                "left out: names one repository's folder, not `$repo` (the image's \
                 servers serve {})",
                rules.repositories.join(", ")
            )),
            None => None,
        };
        let used = note.is_none();
        if used && !sources.lines.contains(&line) {
            sources.lines.push(line.clone());
        }
        sources.entries.push(SourceEntry {
            line: format!("[{}] {line}", repo.name),
            from: from.clone(),
            used,
            note: note.unwrap_or_else(|| format!("Arch's {}", repo.name)),
        });
    }
}

/// One `--repository` as given.
#[derive(Debug, Clone, PartialEq)]
pub struct RepositorySpec {
    pub name: String,
    pub sig_level: String,
    pub servers: Vec<String>,
    /// None: an Arch repository (multilib) served by the build's mirror
    /// and verified with Arch's keyring.
    pub key: Option<PathBuf>,
}

/// Parses `NAME Server=URL Key=KEYFILE [SigLevel=A,B]`, or a bare
/// official name (`multilib`).
pub fn parse_spec(spec: &str, rules: &Rules) -> Result<RepositorySpec, String> {
    let mut words = spec.split_whitespace();
    let name = words
        .next()
        .ok_or("it is empty: give NAME Server=URL Key=KEYFILE")?;
    let name = name
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let valid = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if name.is_empty() || !valid || name == "options" {
        return Err(format!(
            "`{name}` is not a repository name (letters, digits, `-`, `_`, `.`)"
        ));
    }
    if rules.repositories.contains(&name) {
        return Err(format!(
            "{name} is one of the image's own repositories already"
        ));
    }
    let mut parsed = RepositorySpec {
        name,
        sig_level: DEFAULT_SIG_LEVEL.into(),
        servers: Vec::new(),
        key: None,
    };
    for word in words {
        let (key, value) = word
            .split_once('=')
            .ok_or_else(|| format!("`{word}` is not KEY=VALUE (Server, Key, SigLevel)"))?;
        match key.to_ascii_lowercase().as_str() {
            "server" => parsed.servers.push(value.to_string()),
            // Absolute: the bootstrap and the image's configuration read it later.
            "key" => parsed.key = Some(std::path::absolute(value).unwrap_or(value.into())),
            "siglevel" => parsed.sig_level = sig_level(value)?,
            _ => {
                return Err(format!("unknown setting `{key}` (Server, Key, SigLevel)"));
            }
        }
    }
    let official = rules.official.contains(&parsed.name);
    match (official, parsed.servers.is_empty(), &parsed.key) {
        (true, true, None) => Ok(parsed),
        (true, _, _) => Err(format!(
            "{} is Arch's own: give its name alone (served by the build's mirror, \
             verified with Arch's keyring)",
            parsed.name
        )),
        (false, true, _) => {
            Err("no Server=URL (the folder holding NAME.db; $arch and $repo are expanded)".into())
        }
        (false, false, None) => Err(
            "no Key=KEYFILE: a repository is added with the public key its packages are \
             signed with (a file on this machine, armored or binary)"
                .into(),
        ),
        (false, false, Some(_)) => Ok(parsed),
    }
}

/// A `SigLevel=` value (words joined by commas): package signatures must
/// stay required.
fn sig_level(value: &str) -> Result<String, String> {
    let words: Vec<&str> = value.split(',').filter(|w| !w.is_empty()).collect();
    for word in &words {
        if !ACCEPTED_SIG_LEVELS.contains(word) {
            return Err(format!(
                "SigLevel {word} is refused: imgforge installs only signed packages \
                 (accepted: {})",
                ACCEPTED_SIG_LEVELS.join(", ")
            ));
        }
    }
    if words.is_empty() {
        return Err("SigLevel is empty".into());
    }
    Ok(words.join(" "))
}

/// Adds each `--repository`: a pacman.conf section in
/// `sources.repositories`, its key in `sources.keys`, an entry for the
/// plan. A missing or unreadable key, or a file that is no public key, is
/// an error.
pub fn add_repositories(
    sources: &mut Sources,
    specs: &[String],
    rules: &Rules,
) -> Result<(), ArchError> {
    let mut names = Vec::new();
    for spec in specs {
        let refuse = |why: String| ArchError::Repository {
            spec: spec.clone(),
            why,
        };
        let parsed = parse_spec(spec, rules).map_err(refuse)?;
        if names.contains(&parsed.name) {
            return Err(refuse(format!("{} is given twice", parsed.name)));
        }
        names.push(parsed.name.clone());
        let mut section = format!("[{}]\n", parsed.name);
        let mut note = format!("Arch's {}, from the build's mirror", parsed.name);
        if let Some(key) = &parsed.key {
            let bytes = fs::read(key).map_err(|e| {
                refuse(format!(
                    "cannot read its key file {} ({e}); give the path of the repository's \
                     public key",
                    key.display()
                ))
            })?;
            let fingerprints = key_fingerprints(key).map_err(refuse)?;
            let image = format!("{IMAGE_KEYRINGS}/{}.gpg", keyring_name(&parsed.name));
            section.push_str(&format!("SigLevel = {}\n", parsed.sig_level));
            for server in &parsed.servers {
                section.push_str(&format!("Server = {server}\n"));
            }
            note = format!(
                "key {} ({}): added to the build's keyring and locally signed; in the image \
                 {image}, populated on first boot",
                key.display(),
                fingerprints.join(", ")
            );
            sources.keys.push(SourceKey {
                host: key.clone(),
                image,
                sha256: crate::distro::mirror::sha256_hex(&bytes),
            });
        }
        sources.entries.push(SourceEntry {
            line: section.trim_end().replace('\n', " "),
            from: "--repository".into(),
            used: true,
            note,
        });
        sources.repositories.push(section);
    }
    Ok(())
}

/// The pacman keyring name a repository's key is shipped as.
pub fn keyring_name(repository: &str) -> String {
    format!("imgforge-{repository}")
}

/// The primary keys' fingerprints of a public key file, read by gpg in a
/// throw-away home (the host's keyrings are not touched).
pub fn key_fingerprints(path: &Path) -> Result<Vec<String>, String> {
    let home = tempfile::tempdir().map_err(|e| format!("cannot make a folder for gpg: {e}"))?;
    let out = Tool::new("gpg")
        .arg("--homedir")
        .arg(home.path())
        .args(["--batch", "--with-colons", "--show-keys"])
        .arg(path)
        .env("LC_ALL", "C")
        .run()
        .map_err(|e| {
            format!(
                "{} is not an OpenPGP public key gpg can read ({e})",
                path.display()
            )
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut fingerprints = Vec::new();
    let mut after_primary = false;
    for line in text.lines() {
        let kind = line.split(':').next().unwrap_or_default();
        if kind == "fpr" && after_primary {
            let fpr = line.split(':').nth(9).unwrap_or_default();
            fingerprints.push(fpr.to_string());
        }
        after_primary = kind == "pub";
    }
    if fingerprints.is_empty() {
        return Err(format!(
            "{} holds no OpenPGP public key; give the repository's public key (gpg --export)",
            path.display()
        ));
    }
    Ok(fingerprints)
}

/// The name of a pacman.conf section (`[NAME]` on its first line).
pub fn section_name(section: &str) -> &str {
    let first = section.lines().next().unwrap_or_default();
    first.trim().trim_start_matches('[').trim_end_matches(']')
}

/// The section's own `Server =` URLs (none: the build's mirror serves it).
pub fn section_servers(section: &str) -> Vec<&str> {
    section
        .lines()
        .filter(|l| l.starts_with("Server"))
        .map(super::pacman::server_url)
        .collect()
}

/// The `--repository` sections as the bootstrap's pacman.conf has them:
/// an Arch repository gets the build's `Server =` lines.
pub fn bootstrap_sections(sources: &Sources) -> String {
    let mut text = String::new();
    for section in &sources.repositories {
        text.push('\n');
        text.push_str(section);
        if section_servers(section).is_empty() {
            for line in &sources.lines {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    text
}

/// The image's pacman.conf with the `--repository` sections appended after
/// [`IMAGE_CONF_MARKER`] (an Arch repository reads the image's
/// mirrorlist), and each key as a pacman keyring (`NAME.gpg`,
/// `NAME-trusted`) with a first-boot drop-in that populates it.
pub fn configure_image(
    root: &Path,
    sources: &Sources,
    keyring_unit: &str,
) -> Result<(), ArchError> {
    if sources.repositories.is_empty() {
        return Ok(());
    }
    let conf = root.join("etc/pacman.conf");
    let text = fs::read_to_string(&conf).unwrap_or_else(|_| "[options]\n".into());
    let mut text = match text.find(IMAGE_CONF_MARKER) {
        Some(at) => text[..at].to_string(),
        None => text,
    };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!("\n{IMAGE_CONF_MARKER}\n"));
    for section in &sources.repositories {
        text.push_str(section);
        if section_servers(section).is_empty() {
            text.push_str("Include = /etc/pacman.d/mirrorlist\n");
        }
        text.push('\n');
    }
    if let Some(dir) = conf.parent() {
        fs::create_dir_all(dir).map_err(at("create", dir))?;
    }
    fs::write(&conf, text).map_err(at("write", &conf))?;
    install_keys(root, sources, keyring_unit)
}

fn install_keys(root: &Path, sources: &Sources, keyring_unit: &str) -> Result<(), ArchError> {
    let mut names = Vec::new();
    for key in &sources.keys {
        let target = root.join(key.image.trim_start_matches('/'));
        let name = target
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(dir) = target.parent() {
            fs::create_dir_all(dir).map_err(at("create", dir))?;
        }
        fs::copy(&key.host, &target).map_err(at("copy", &key.host))?;
        let fingerprints = key_fingerprints(&key.host).map_err(|why| ArchError::Repository {
            spec: key.host.display().to_string(),
            why,
        })?;
        let trusted = target.with_file_name(format!("{name}-trusted"));
        let lines: String = fingerprints.iter().map(|f| format!("{f}:4:\n")).collect();
        fs::write(&trusted, lines).map_err(at("write", &trusted))?;
        names.push(name);
    }
    if names.is_empty() {
        return Ok(());
    }
    let dir = root.join(format!("etc/systemd/system/{keyring_unit}.d"));
    fs::create_dir_all(&dir).map_err(at("create", &dir))?;
    let dropin = dir.join("imgforge-repositories.conf");
    let text = format!(
        "# Written by imgforge: the --repository keys, into the instance's own keyring.\n\
         [Service]\nExecStart=/usr/bin/pacman-key --populate {}\n",
        names.join(" ")
    );
    fs::write(&dropin, text).map_err(at("write", &dropin))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    struct Owned {
        repositories: Vec<String>,
        official: Vec<String>,
    }

    impl Owned {
        fn new() -> Self {
            Self {
                repositories: names(&["core", "extra"]),
                official: names(&["core", "extra", "multilib", "core-testing"]),
            }
        }
        fn rules(&self) -> Rules<'_> {
            Rules {
                repositories: &self.repositories,
                official: &self.official,
            }
        }
    }

    /// The fixture host's pacman.conf, its Include paths moved into `dir`.
    pub fn host_conf(dir: &Path) -> PathBuf {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/arch-host");
        for file in ["mirrorlist", "chaotic-mirrorlist"] {
            fs::copy(fixture.join(file), dir.join(file)).unwrap();
        }
        let text = fs::read_to_string(fixture.join("pacman.conf")).unwrap();
        let conf = dir.join("pacman.conf");
        let moved = text.replace("/etc/pacman.d/", &format!("{}/", dir.display()));
        fs::write(&conf, moved).unwrap();
        conf
    }

    #[test]
    fn only_arch_repositories_of_the_host_are_carried() {
        let dir = tempfile::tempdir().unwrap();
        let conf = host_conf(dir.path());
        let owned = Owned::new();
        let sources = host_sources(&conf, &owned.rules());
        assert_eq!(
            sources.lines,
            [
                "Server = https://geo.mirror.pkgbuild.com/$repo/os/$arch",
                "Server = https://mirror.example.net/archlinux/$repo/os/$arch",
            ]
        );
        let all = format!("{:#?}", sources.entries);
        assert!(
            !sources.lines.iter().any(|l| l.contains("chaotic")),
            "{all}"
        );
        let entry = |needle: &str| {
            sources
                .entries
                .iter()
                .find(|e| e.line.contains(needle))
                .unwrap_or_else(|| panic!("{needle}: {all}"))
        };
        // Each server with the mirrorlist line it came from.
        let core = entry("[core] Server = https://geo.mirror.pkgbuild.com");
        assert!(core.used, "{all}");
        let mirrorlist = dir.path().join("mirrorlist");
        assert_eq!(core.from, format!("{}:8", mirrorlist.display()));
        let chaotic = entry("[chaotic-aur]");
        assert!(!chaotic.used, "{all}");
        assert!(chaotic.note.contains("not Arch's own"), "{all}");
        assert!(chaotic.line.contains("cdn-mirror.chaotic.cx"), "{all}");
        let private = entry("[trading-tools]");
        assert!(
            !private.used && private.note.contains("third-party"),
            "{all}"
        );
        assert_eq!(private.from, format!("{}:31", conf.display()));
        let multilib = entry("[multilib]");
        assert!(!multilib.used, "{all}");
        assert!(multilib.note.contains("--repository multilib"), "{all}");
        // The commented-out core-testing is no repository at all.
        assert!(!all.contains("core-testing]"), "{all}");
    }

    #[test]
    fn a_host_server_without_repo_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("pacman.conf");
        fs::write(
            &conf,
            "[core]\nServer = https://m.example/core/os/$arch\n\
             Server = https://m.example/$repo/os/$arch\n",
        )
        .unwrap();
        let owned = Owned::new();
        let sources = host_sources(&conf, &owned.rules());
        assert_eq!(sources.lines, ["Server = https://m.example/$repo/os/$arch"]);
        assert!(!sources.entries[0].used);
        assert!(sources.entries[0].note.contains("$repo"));
    }

    #[test]
    fn repository_specs_are_checked() {
        let owned = Owned::new();
        let rules = owned.rules();
        let spec = parse_spec(
            "tools Server=file:///srv/tools/$arch Server=https://b.example/$arch \
             Key=/k.asc SigLevel=Required,DatabaseRequired",
            &rules,
        )
        .unwrap();
        assert_eq!(spec.name, "tools");
        assert_eq!(spec.sig_level, "Required DatabaseRequired");
        assert_eq!(spec.servers.len(), 2);
        assert_eq!(spec.key.as_deref(), Some(Path::new("/k.asc")));
        let default = parse_spec("[tools] Server=https://a.example Key=/k", &rules).unwrap();
        assert_eq!(default.sig_level, DEFAULT_SIG_LEVEL);
        let multilib = parse_spec("multilib", &rules).unwrap();
        assert_eq!((multilib.key, multilib.servers.len()), (None, 0));
        for (bad, says) in [
            ("tools Server=https://a.example", "no Key="),
            ("tools Key=/k", "no Server="),
            (
                "tools Server=https://a Key=/k SigLevel=Never",
                "SigLevel Never",
            ),
            (
                "tools Server=https://a Key=/k SigLevel=Optional,TrustAll",
                "Optional",
            ),
            ("tools Server=https://a Key=/k Mirror=x", "unknown setting"),
            ("tools Server", "not KEY=VALUE"),
            ("core Server=https://a Key=/k", "image's own"),
            ("multilib Server=https://a", "Arch's own"),
            ("bad/name Server=https://a Key=/k", "not a repository name"),
            ("", "empty"),
        ] {
            let err = parse_spec(bad, &rules).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    fn gpg_key(dir: &Path) -> (PathBuf, String) {
        let home = dir.join("gnupg");
        fs::create_dir(&home).unwrap();
        let gpg = |args: &[&str]| {
            let out = std::process::Command::new("gpg")
                .arg("--homedir")
                .arg(&home)
                .args(["--batch", "--pinentry-mode", "loopback", "--passphrase", ""])
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            out.stdout
        };
        gpg(&[
            "--quick-gen-key",
            "repo <r@imgforge.invalid>",
            "ed25519",
            "sign",
            "never",
        ]);
        let key = dir.join("repo.asc");
        fs::write(&key, gpg(&["--armor", "--export", "r@imgforge.invalid"])).unwrap();
        let listing = String::from_utf8(gpg(&["--with-colons", "--list-keys"])).unwrap();
        let fpr = listing
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .map(|l| l.trim_matches(':').to_string())
            .unwrap();
        let _ = std::process::Command::new("gpgconf")
            .arg("--homedir")
            .arg(&home)
            .args(["--kill", "all"])
            .output();
        (key, fpr)
    }

    #[test]
    fn a_repository_brings_its_section_key_and_image_keyring() {
        if crate::sys::tool::find_in_path("gpg").is_none() {
            eprintln!("*** SKIPPED: no gpg (DID NOT RUN) ***");
            assert!(std::env::var("CI").is_err(), "gpg is missing under CI");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (key, fpr) = gpg_key(dir.path());
        assert_eq!(key_fingerprints(&key).unwrap(), std::slice::from_ref(&fpr));
        let owned = Owned::new();
        let mut sources =
            mirror_sources("https://m.example/$repo/os/$arch", "--mirror", "--mirror").unwrap();
        let spec = format!("tools Server=file:///srv/tools/$arch Key={}", key.display());
        add_repositories(
            &mut sources,
            &[spec.clone(), "multilib".into()],
            &owned.rules(),
        )
        .unwrap();
        assert_eq!(
            sources.repositories,
            [
                "[tools]\nSigLevel = Required DatabaseOptional\nServer = file:///srv/tools/$arch\n",
                "[multilib]\n"
            ]
        );
        assert_eq!(sources.keys.len(), 1);
        assert_eq!(
            sources.keys[0].image,
            "/usr/share/pacman/keyrings/imgforge-tools.gpg"
        );
        let note = &sources.entries[1].note;
        assert!(
            note.contains(&fpr) && note.contains("locally signed"),
            "{note}"
        );
        // The bootstrap: multilib on the build's server.
        let boot = bootstrap_sections(&sources);
        assert!(
            boot.contains("[multilib]\nServer = https://m.example/$repo/os/$arch\n"),
            "{boot}"
        );
        // The image: appended once, however often configured.
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(
            root.join("etc/pacman.conf"),
            "[options]\n\n[core]\nInclude = x\n",
        )
        .unwrap();
        for _ in 0..2 {
            configure_image(&root, &sources, "init.service").unwrap();
        }
        let conf = fs::read_to_string(root.join("etc/pacman.conf")).unwrap();
        assert!(
            conf.starts_with("[options]\n\n[core]\nInclude = x\n"),
            "{conf}"
        );
        assert_eq!(conf.matches("[tools]").count(), 1, "{conf}");
        assert!(
            conf.contains("[multilib]\nInclude = /etc/pacman.d/mirrorlist\n"),
            "{conf}"
        );
        let keyrings = root.join("usr/share/pacman/keyrings");
        assert_eq!(
            fs::read(keyrings.join("imgforge-tools.gpg")).unwrap(),
            fs::read(&key).unwrap()
        );
        assert_eq!(
            fs::read_to_string(keyrings.join("imgforge-tools-trusted")).unwrap(),
            format!("{fpr}:4:\n")
        );
        let dropin = fs::read_to_string(
            root.join("etc/systemd/system/init.service.d/imgforge-repositories.conf"),
        )
        .unwrap();
        assert!(dropin.contains("ExecStart=/usr/bin/pacman-key --populate imgforge-tools\n"));

        // A key file that is missing, or not a key.
        let missing = format!(
            "tools Server=https://a Key={}/nokey.asc",
            dir.path().display()
        );
        let not_key = dir.path().join("notakey.asc");
        fs::write(&not_key, "hello\n").unwrap();
        for (spec, says) in [
            (missing, "cannot read its key file"),
            (
                format!("tools Server=https://a Key={}", not_key.display()),
                "public key",
            ),
            (format!("{spec} "), ""),
        ] {
            let mut fresh = Sources::default();
            let twice = [spec.clone(), spec.clone()];
            let specs: &[String] = if says.is_empty() { &twice } else { &twice[..1] };
            let err = add_repositories(&mut fresh, specs, &owned.rules())
                .unwrap_err()
                .to_string();
            let says = if says.is_empty() { "given twice" } else { says };
            assert!(err.contains(says) && err.contains("--repository"), "{err}");
        }
    }
}
