//! The host's pacman, driven with imgforge's own configuration: every path
//! pacman would otherwise take from the host (/etc/pacman.conf, /var/lib,
//! /var/cache, /etc/pacman.d/gnupg, /etc/pacman.d/hooks, /var/log) is given
//! explicitly, so that the host's pacman setup is neither read nor written.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use super::{ArchError, ikconfig};
use crate::sys::tool::{Tool, ToolError, ToolOutput};

/// How long the mirror check waits for a name lookup and a TCP connection.
/// pacman's own bounds (libcurl) then apply: 10 s to connect, and a transfer
/// slower than 1 byte/s for 10 s is dropped.
pub const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);

/// pacman's `SigLevel` for packages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SigLevel {
    /// Every package signed by a trusted key; databases signed or not.
    #[default]
    Required,
    /// Nothing checked. Only for imgforge's own tests of unsigned test
    /// repositories: not reachable from the command line.
    Never,
}

impl SigLevel {
    pub fn as_pacman(self) -> &'static str {
        match self {
            SigLevel::Required => "Required DatabaseOptional",
            SigLevel::Never => "Never",
        }
    }
}

/// imgforge's pacman.conf for one bootstrap: `[options]`, then each
/// repository with every `Server =` line of the sources.
pub fn render_pacman_conf(
    architecture: &str,
    sig_level: SigLevel,
    repositories: &[String],
    server_lines: &[String],
) -> String {
    let mut conf = String::from(
        "# Written by imgforge for one bootstrap; not the image's pacman.conf.\n\
         [options]\n",
    );
    conf.push_str(&format!("Architecture = {architecture}\n"));
    conf.push_str(&format!("SigLevel = {}\n", sig_level.as_pacman()));
    conf.push_str("LocalFileSigLevel = Optional\n");
    conf.push_str("ParallelDownloads = 4\n");
    for repo in repositories {
        conf.push_str(&format!("\n[{repo}]\n"));
        for line in server_lines {
            conf.push_str(line);
            conf.push('\n');
        }
    }
    conf
}

/// The URL of a `Server = URL` line.
pub fn server_url(line: &str) -> &str {
    line.split_once('=')
        .map_or(
            line,
            |(key, url)| {
                if key.trim() == "Server" { url } else { line }
            },
        )
        .trim()
}

/// The URL with `$repo` and `$arch` filled in, as pacman does.
pub fn expand(url: &str, repo: &str, architecture: &str) -> String {
    url.replace("$repo", repo).replace("$arch", architecture)
}

/// Fails fast, naming the mirror, when it cannot be reached at all: a
/// `file://` folder that does not exist, a host that does not resolve or
/// does not accept a connection within [`MIRROR_TIMEOUT`].
pub fn check_mirror(url: &str, repo: &str, architecture: &str) -> Result<(), ArchError> {
    let expanded = expand(url, repo, architecture);
    let fail = |reason: String| ArchError::MirrorUnreachable {
        mirror: url.to_string(),
        reason,
    };
    if let Some(path) = expanded.strip_prefix("file://") {
        return if Path::new(path).is_dir() {
            Ok(())
        } else {
            Err(fail(format!("{path} is not a folder")))
        };
    }
    let (default_port, rest) = if let Some(rest) = expanded.strip_prefix("https://") {
        (443, rest)
    } else if let Some(rest) = expanded.strip_prefix("http://") {
        (80, rest)
    } else {
        // ftp:// and the like: pacman's own timeouts apply.
        return Ok(());
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let address = if authority.ends_with(']') || !authority.contains(':') {
        format!("{authority}:{default_port}")
    } else {
        authority.to_string()
    };
    // The name lookup cannot be given a timeout: run it on a thread.
    let (send, receive) = mpsc::channel();
    let lookup = address.clone();
    std::thread::spawn(move || {
        let _ = send.send(lookup.to_socket_addrs().map(|a| a.collect::<Vec<_>>()));
    });
    let addresses = match receive.recv_timeout(MIRROR_TIMEOUT) {
        Ok(Ok(addresses)) if !addresses.is_empty() => addresses,
        Ok(Ok(_)) => return Err(fail(format!("{address} has no address"))),
        Ok(Err(err)) => return Err(fail(format!("cannot resolve {address}: {err}"))),
        Err(_) => {
            return Err(fail(format!(
                "no answer resolving {address} within {} s",
                MIRROR_TIMEOUT.as_secs()
            )));
        }
    };
    let mut last = String::new();
    for socket in addresses {
        match TcpStream::connect_timeout(&socket, MIRROR_TIMEOUT) {
            Ok(_) => return Ok(()),
            Err(err) => last = format!("cannot connect to {socket}: {err}"),
        }
    }
    Err(fail(last))
}

/// One pacman setup: configuration, target tree and private state.
pub struct Pacman {
    pub config: PathBuf,
    pub root: PathBuf,
    pub cache: PathBuf,
    pub gpgdir: PathBuf,
    pub logfile: PathBuf,
    /// The mirror URL (`$repo`, `$arch` unexpanded): error messages, and
    /// the keyring package's download.
    pub mirror: String,
    /// pacman's name for the architecture (`$arch`).
    pub architecture: String,
    /// Passed to pacman's hooks: mkinitcpio stamps the initramfs with it.
    pub source_date_epoch: u64,
}

/// pacman's locale: untranslated messages, UTF-8 file names.
pub const PACMAN_LOCALE: &str = "C.UTF-8";

impl Pacman {
    pub fn dbpath(&self) -> PathBuf {
        self.root.join("var/lib/pacman")
    }

    fn tool(&self) -> Tool {
        Tool::new("pacman")
            .arg("--config")
            .arg(&self.config)
            .arg("--root")
            .arg(&self.root)
            .arg("--dbpath")
            .arg(self.dbpath())
            .arg("--cachedir")
            .arg(&self.cache)
            .arg("--gpgdir")
            .arg(&self.gpgdir)
            .arg("--hookdir")
            .arg(self.root.join("etc/pacman.d/hooks"))
            .arg("--logfile")
            .arg(&self.logfile)
            .args(["--noconfirm", "--noprogressbar", "--color", "never"])
            // Messages in English (errors are recognised by their words),
            // in a UTF-8 locale: under plain C, libarchive cannot convert a
            // package's UTF-8 file name, and pacman 6.0 silently stops
            // extracting that package there, still exiting 0.
            .env("LC_ALL", PACMAN_LOCALE)
            // Scriptlets and hooks run chrooted in the tree with pacman's
            // environment: the build's TMPDIR is not there, and
            // mkinitcpio's `mktemp --tmpdir` would fail in its hook.
            .env("TMPDIR", "/tmp")
            .env("SOURCE_DATE_EPOCH", self.source_date_epoch.to_string())
    }

    /// `pacman -Sy`: the repository databases.
    pub fn sync(&self) -> Result<(), ArchError> {
        self.run(self.tool().arg("-Sy")).map(drop)
    }

    /// After [`Pacman::sync`]: each repository database pacman synced from
    /// the mirror must be the one the build's mirror state read (the tree's
    /// cache key), or the mirror was updated in between and the cached tree
    /// would not be what its key says.
    pub fn check_synced(
        &self,
        repositories: &[String],
        state: &[crate::distro::MirrorDigest],
    ) -> Result<(), ArchError> {
        for repo in repositories {
            let url = format!(
                "{}/{repo}.db",
                expand(&self.mirror, repo, &self.architecture).trim_end_matches('/')
            );
            let Some(digest) = state.iter().find(|d| d.url == url) else {
                continue;
            };
            let synced = self.dbpath().join("sync").join(format!("{repo}.db"));
            let bytes = std::fs::read(&synced).map_err(crate::sys::fsio::at("read", &synced))?;
            if crate::distro::mirror::sha256_hex(&bytes) != digest.sha256 {
                return Err(ArchError::MirrorMoved { url });
            }
        }
        Ok(())
    }

    /// `pacman -S --needed PACKAGES` (databases already synced).
    pub fn install(&self, packages: &[String]) -> Result<(), ArchError> {
        self.install_output(packages).map(drop)
    }

    /// [`Pacman::install`], returning what pacman printed (stdout, then
    /// the last lines of stderr): its hooks' failures do not change its
    /// exit status.
    pub fn install_output(&self, packages: &[String]) -> Result<String, ArchError> {
        let out = self.run(self.tool().args(["-S", "--needed"]).args(packages))?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        for line in &out.stderr_tail {
            text.push_str(line);
            text.push('\n');
        }
        Ok(text)
    }

    /// `pacman -U --needed FILES`: local packages, their dependencies from
    /// the synced repositories.
    pub fn install_files(&self, files: &[PathBuf]) -> Result<(), ArchError> {
        if files.is_empty() {
            return Ok(());
        }
        self.run(self.tool().args(["-U", "--needed"]).args(files))
            .map(drop)
    }

    /// The repository and file name of `package` alone (`-dd`: not its
    /// dependencies), from the synced databases; nothing is downloaded.
    pub fn locate(&self, package: &str) -> Result<(String, String), ArchError> {
        let out = self.run(
            self.tool()
                .args(["-Sp", "-dd", "--print-format", "%r %l"])
                .arg(package),
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().map(str::trim).rfind(|l| !l.is_empty());
        let found = line.and_then(|l| {
            let (repo, location) = l.split_once(' ')?;
            let name = location.rsplit('/').next()?;
            Some((repo.to_string(), name.to_string()))
        });
        found.ok_or_else(|| ArchError::Downloaded {
            package: package.to_string(),
            cache: self.cache.clone(),
        })
    }

    /// `pacman -Sw PACKAGE` into the cache (signature checked), and the path
    /// of the downloaded file.
    pub fn download(&self, package: &str) -> Result<PathBuf, ArchError> {
        self.run(self.tool().arg("-Sw").arg(package))?;
        // pacman 6.0 has no %f: the location (%l) is the cached file or the
        // mirror's URL, and ends in the file name either way.
        let out = self.run(
            self.tool()
                .args(["-Sp", "--print-format", "%l"])
                .arg(package),
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        let name = text
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .and_then(|l| l.rsplit('/').next())
            .unwrap_or_default();
        let file = self.cache.join(name);
        if name.is_empty() || !file.is_file() {
            return Err(ArchError::Downloaded {
                package: package.to_string(),
                cache: self.cache.clone(),
            });
        }
        Ok(file)
    }

    fn run(&self, tool: Tool) -> Result<ToolOutput, ArchError> {
        tool.run().map_err(|err| classify(err, &self.mirror))
    }
}

/// The newest `%BUILDDATE%` in a repository database (`$repo.db`: a tar,
/// gzip- or zstd-compressed or plain, of `NAME-VERSION/desc` files); None
/// when it is none of these or names no date.
pub fn database_build_date(bytes: &[u8]) -> Option<u64> {
    let reader: Box<dyn Read + '_> = if bytes.starts_with(ikconfig::GZIP) {
        Box::new(flate2::read::GzDecoder::new(bytes))
    } else if bytes.starts_with(ikconfig::ZSTD) {
        Box::new(
            ruzstd::decoding::StreamingDecoder::new_with_max_window_size(
                bytes,
                crate::compressed::ZSTD_MAX_WINDOW,
            )
            .ok()?,
        )
    } else {
        Box::new(bytes)
    };
    let mut archive = tar::Archive::new(reader);
    let mut newest = None;
    for entry in archive.entries().ok()? {
        let Ok(mut entry) = entry else { break };
        let is_desc = entry
            .path()
            .is_ok_and(|p| p.file_name().is_some_and(|n| n == "desc"));
        let mut text = String::new();
        if is_desc && entry.read_to_string(&mut text).is_ok() {
            newest = newest.max(super::desc_build_date(&text));
        }
    }
    newest
}

/// Turns pacman's failures that have a known cause into errors that say
/// what to do; anything else stays the tool's own error.
pub fn classify(err: ToolError, mirror: &str) -> ArchError {
    let ToolError::Failed { tail, .. } = &err else {
        return err.into();
    };
    let lines: Vec<&str> = tail.lines().collect();
    const TRUST: [&str; 6] = [
        "unknown trust",
        "marginal trust",
        "never trust",
        "(PGP signature)",
        "missing required signature",
        "signature from",
    ];
    if let Some(line) = lines.iter().find(|l| TRUST.iter().any(|t| l.contains(t))) {
        let package = signature_subject(&lines).unwrap_or_else(|| "a package".into());
        let detail: Vec<&str> = lines
            .iter()
            .filter(|l| l.starts_with("error:") || l.contains("corrupted"))
            .copied()
            .collect();
        let detail = if detail.is_empty() {
            line.to_string()
        } else {
            detail.join("\n")
        };
        return ArchError::Signature { package, detail };
    }
    if let Some(line) = lines
        .iter()
        .find(|l| l.contains("failed retrieving file '"))
        && let Some(package) = line
            .split('\'')
            .nth(1)
            .and_then(|file| file.strip_suffix(".sig"))
    {
        return ArchError::MissingSignature {
            package: package.to_string(),
            detail: line.trim_start_matches("error: ").to_string(),
        };
    }
    if let Some(line) = lines.iter().find(|l| l.contains("target not found")) {
        return ArchError::NotFound {
            detail: line.to_string(),
            mirror: mirror.to_string(),
        };
    }
    if lines
        .iter()
        .any(|l| l.contains("failed to synchronize") || l.contains("failed retrieving file"))
    {
        let detail: Vec<&str> = lines
            .iter()
            .filter(|l| l.starts_with("error:"))
            .copied()
            .collect();
        return ArchError::Mirror {
            mirror: mirror.to_string(),
            detail: detail.join("\n"),
        };
    }
    err.into()
}

/// The package (or key) a signature error is about, from pacman's lines:
/// `error: NAME: signature from "KEY" is ...`, `error: NAME: key "KEY" is
/// unknown`, `:: File PATH is corrupted (...)`.
fn signature_subject(lines: &[&str]) -> Option<String> {
    for line in lines {
        if let Some(rest) = line.strip_prefix("error: ")
            && let Some((name, problem)) = rest.split_once(": ")
            && (problem.starts_with("signature from") || problem.starts_with("key "))
        {
            return Some(format!("{name} ({problem})"));
        }
    }
    for line in lines {
        if let Some(rest) = line.split("File ").nth(1)
            && let Some((path, _)) = rest.split_once(" is corrupted")
        {
            let file = Path::new(path)
                .file_name()
                .map_or(path.into(), |f| f.to_string_lossy().into_owned());
            return Some(file);
        }
    }
    None
}

/// Writes `text` to `path` (pacman.conf and the like).
pub fn write_file(path: &Path, text: &str) -> Result<(), ArchError> {
    let mut file = std::fs::File::create(path).map_err(crate::sys::fsio::at("create", path))?;
    file.write_all(text.as_bytes())
        .map_err(crate::sys::fsio::at("write", path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pacman() -> Pacman {
        Pacman {
            config: "/c/pacman.conf".into(),
            root: "/r".into(),
            cache: "/c".into(),
            gpgdir: "/g".into(),
            logfile: "/l".into(),
            mirror: String::new(),
            architecture: "x86_64".into(),
            source_date_epoch: 0,
        }
    }

    /// The build's own TMPDIR (a host path) never reaches the chrooted
    /// hooks: mkinitcpio's mktemp failed there, pacman still exiting 0.
    #[test]
    fn pacman_hooks_get_the_trees_tmp_not_the_builds_tmpdir() {
        let tool = pacman().tool();
        assert_eq!(tool.env_value("TMPDIR"), Some(std::ffi::OsStr::new("/tmp")));
    }

    /// pacman runs in a UTF-8 locale: libarchive (pacman's extractor, and
    /// bsdtar's) refuses a UTF-8 file name of a pax archive under plain C,
    /// which is how pacman 6.0 left most of a package out while exiting 0.
    #[test]
    fn pacman_runs_in_a_utf8_locale_that_extracts_utf8_file_names() {
        let tool = pacman().tool();
        assert_eq!(
            tool.env_value("LC_ALL"),
            Some(std::ffi::OsStr::new(PACMAN_LOCALE))
        );
        if crate::sys::tool::find_in_path("bsdtar").is_none() {
            return;
        }
        // A pax archive (as makepkg's bsdtar writes) with a UTF-8 name.
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("p.tar");
        let mut builder = tar::Builder::new(std::fs::File::create(&archive).unwrap());
        let mut header = tar::Header::new_ustar();
        header.set_size(1);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        let name =
            "etc/ssl/certs/NetLock_Arany_=Class_Gold=_F\u{151}tan\u{fa}s\u{ed}tv\u{e1}ny.pem";
        builder
            .append_pax_extensions([("path", name.as_bytes())])
            .unwrap();
        builder
            .append_data(&mut header, "placeholder", &b"x"[..])
            .unwrap();
        builder.finish().unwrap();
        drop(builder);
        let extract = |locale: &str| {
            let to = dir.path().join(locale);
            std::fs::create_dir_all(&to).unwrap();
            // bsdtar goes on after the error (and exits 1); pacman stops.
            let run = Tool::new("bsdtar")
                .arg("-xf")
                .arg(&archive)
                .arg("-C")
                .arg(&to)
                .env("LC_ALL", locale)
                .run();
            run.is_ok() && to.join(name).is_file()
        };
        assert!(
            extract(PACMAN_LOCALE),
            "not extracted under {PACMAN_LOCALE}"
        );
        assert!(
            !extract("C"),
            "plain C extracts it: the locale would not matter"
        );
    }

    fn servers() -> Vec<String> {
        vec![
            "Server = https://a.example/$repo/os/$arch".into(),
            "Server = https://b.example/arch/$repo/os/$arch".into(),
        ]
    }

    #[test]
    fn pacman_conf_has_options_and_each_repository_with_every_server() {
        let repos = vec!["core".to_string(), "extra".to_string()];
        let conf = render_pacman_conf("x86_64", SigLevel::Required, &repos, &servers());
        let lines: Vec<&str> = conf.lines().collect();
        assert!(lines.contains(&"Architecture = x86_64"), "{conf}");
        assert!(
            lines.contains(&"SigLevel = Required DatabaseOptional"),
            "{conf}"
        );
        // [options] comes first; each repository section has both servers
        // in order, and no other section is present.
        let sections: Vec<&str> = lines
            .iter()
            .filter(|l| l.starts_with('['))
            .copied()
            .collect();
        assert_eq!(sections, ["[options]", "[core]", "[extra]"]);
        for repo in ["[core]", "[extra]"] {
            let at = lines.iter().position(|l| *l == repo).unwrap();
            assert_eq!(lines[at + 1..at + 3], servers()[..], "{repo}: {conf}");
        }
        let never = render_pacman_conf("x86_64", SigLevel::Never, &repos[..1], &servers()[..1]);
        assert!(never.contains("SigLevel = Never\n"), "{never}");
        assert!(!never.contains("[extra]") && !never.contains("b.example"));
    }

    /// A repository database as repo-add writes it: a tar of desc files.
    fn database(build_dates: &[u64]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (i, date) in build_dates.iter().enumerate() {
            let desc = format!("%NAME%\np{i}\n\n%BUILDDATE%\n{date}\n\n%PACKAGER%\nx\n");
            let mut header = tar::Header::new_gnu();
            header.set_size(desc.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, format!("p{i}-1.0-1/desc"), desc.as_bytes())
                .unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn database_date_is_its_newest_build_date_whatever_the_compression() {
        let plain = database(&[1_700_000_000, 1_760_000_123, 1_600_000_000]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        let gz = gz.finish().unwrap();
        let zst = ruzstd::encoding::compress_to_vec(
            plain.as_slice(),
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        for bytes in [&plain, &gz, &zst] {
            assert_eq!(database_build_date(bytes), Some(1_760_000_123));
        }
        assert_eq!(database_build_date(&database(&[])), None);
        assert_eq!(database_build_date(b"<html>not found</html>"), None);
        assert_eq!(database_build_date(&gz[..gz.len() / 2]), None);
    }

    #[test]
    fn server_lines_expand_like_pacman() {
        let url = server_url("Server = https://m.example/$repo/os/$arch");
        assert_eq!(url, "https://m.example/$repo/os/$arch");
        assert_eq!(
            expand(url, "core", "x86_64"),
            "https://m.example/core/os/x86_64"
        );
    }

    #[test]
    fn unreachable_mirrors_fail_fast_and_name_the_mirror() {
        let started = std::time::Instant::now();
        for url in [
            "http://127.0.0.1:9/$repo/os/$arch",
            "file:///nonexistent/imgforge/$repo/os/$arch",
        ] {
            let err = check_mirror(url, "core", "x86_64").unwrap_err().to_string();
            assert!(err.contains(url), "{err}");
        }
        assert!(started.elapsed() < MIRROR_TIMEOUT);
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("core/os/x86_64")).unwrap();
        let ok = format!("file://{}/$repo/os/$arch", dir.path().display());
        check_mirror(&ok, "core", "x86_64").unwrap();
    }

    fn failed(tail: &str) -> ToolError {
        ToolError::Failed {
            tool: "pacman".into(),
            status: "exit status 1".into(),
            command: "pacman -S".into(),
            tail: tail.into(),
        }
    }

    #[test]
    fn pacman_failures_become_errors_that_say_what_to_do() {
        let trust = classify(
            failed(
                "error: archlinux-keyring: signature from \"Someone <s@example>\" is unknown trust\n\
                 error: failed to commit transaction (invalid or corrupted package (PGP signature))",
            ),
            "M",
        )
        .to_string();
        assert!(trust.contains("archlinux-keyring"), "{trust}");
        assert!(trust.contains("unknown trust"), "{trust}");
        assert!(trust.contains("--keyring"), "{trust}");
        let corrupt = classify(
            failed(
                ":: File /c/hooked-1-1-x86_64.pkg.tar.zst is corrupted (invalid or corrupted package (PGP signature)).\n\
                 error: failed to commit transaction (invalid or corrupted package (PGP signature))",
            ),
            "M",
        )
        .to_string();
        assert!(
            corrupt.contains("hooked-1-1-x86_64.pkg.tar.zst"),
            "{corrupt}"
        );
        let mirror = classify(
            failed(
                "error: failed retrieving file 'core.db' from m.example : The requested URL returned error: 404\n\
                 error: failed to synchronize all databases (failed to retrieve some files)",
            ),
            "https://m.example/$repo/os/$arch",
        )
        .to_string();
        assert!(
            mirror.contains("https://m.example/$repo/os/$arch") && mirror.contains("404"),
            "{mirror}"
        );
        let unsigned = classify(
            failed(
                "error: failed retrieving file 'rogue-1-1-x86_64.pkg.tar.zst.sig' from disk : \
                 Couldn't open file /srv/tools/x86_64/rogue-1-1-x86_64.pkg.tar.zst.sig\n\
                 error: failed to commit transaction (download library error)",
            ),
            "M",
        )
        .to_string();
        assert!(
            unsigned.starts_with("rogue-1-1-x86_64.pkg.tar.zst has no signature"),
            "{unsigned}"
        );
        let missing = classify(failed("error: target not found: nosuch"), "M").to_string();
        assert!(missing.contains("nosuch"), "{missing}");
        let other = classify(failed("error: something else"), "M").to_string();
        assert!(other.contains("`pacman` failed"), "{other}");
    }
}
