//! The keyring pacman verifies packages with: a private GnuPG home in the
//! work directory, never the host's /etc/pacman.d/gnupg and never shipped in
//! the image (its first boot makes its own).
//!
//! Debian's pacman-key 6.0.2 reads keyrings only from /usr/share/keyrings
//! (no --populate-from), so a keyring from elsewhere is populated in a
//! private mount namespace with that folder bind-mounted over
//! /usr/share/keyrings: the host's folder is never touched, and only
//! `archlinux` is ever named (a bare --populate would import every keyring
//! there, Debian's own too).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::ArchError;
use crate::sys::fsio::at;
use crate::sys::tool::Tool;

/// The keyring files pacman-key's `--populate archlinux` reads.
pub const KEYRING_FILES: [&str; 3] = ["archlinux.gpg", "archlinux-trusted", "archlinux-revoked"];

/// Where an Arch keyring package keeps them.
pub const PACKAGE_KEYRING_DIR: &str = "usr/share/pacman/keyrings";

/// A private pacman keyring; its gpg-agent is stopped when this is dropped.
pub struct Keyring {
    gpgdir: PathBuf,
    config: PathBuf,
}

impl Keyring {
    /// `pacman-key --init` into `gpgdir` (a fresh folder).
    pub fn init(gpgdir: &Path, config: &Path) -> Result<Self, ArchError> {
        fs::create_dir_all(gpgdir).map_err(at("create", gpgdir))?;
        fs::set_permissions(gpgdir, fs::Permissions::from_mode(0o700))
            .map_err(at("set permissions of", gpgdir))?;
        let keyring = Self {
            gpgdir: gpgdir.to_path_buf(),
            config: config.to_path_buf(),
        };
        keyring.pacman_key().arg("--init").run()?;
        Ok(keyring)
    }

    fn pacman_key(&self) -> Tool {
        Tool::new("pacman-key")
            .arg("--config")
            .arg(&self.config)
            .arg("--gpgdir")
            .arg(&self.gpgdir)
            .env("LC_ALL", "C")
    }

    /// `--populate archlinux` from the host's archlinux-keyring
    /// (/usr/share/keyrings/archlinux*).
    pub fn populate_from_host(&self) -> Result<(), ArchError> {
        check_keyring_dir(
            Path::new("/usr/share/keyrings"),
            "the host's archlinux-keyring",
        )?;
        self.pacman_key().args(["--populate", "archlinux"]).run()?;
        Ok(())
    }

    /// `--populate archlinux` from `dir` (archlinux.gpg, archlinux-trusted,
    /// archlinux-revoked), bind-mounted over /usr/share/keyrings in a
    /// private mount namespace.
    pub fn populate_from(&self, dir: &Path, what: &str) -> Result<(), ArchError> {
        check_keyring_dir(dir, what)?;
        let dir = fs::canonicalize(dir).map_err(at("resolve", dir))?;
        Tool::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(
                "mount --bind \"$1\" /usr/share/keyrings && \
                 exec pacman-key --config \"$2\" --gpgdir \"$3\" --populate archlinux",
            )
            .arg("imgforge-populate")
            .arg(&dir)
            .arg(&self.config)
            .arg(&self.gpgdir)
            .env("LC_ALL", "C")
            .run()?;
        Ok(())
    }
}

impl Keyring {
    /// A `--repository`'s key: `pacman-key --add FILE`, then
    /// `--lsign-key` for each of its primary keys, so that pacman trusts
    /// what it signs (as `pacman-key --populate` does for a keyring's
    /// trusted keys).
    pub fn add_repository_key(
        &self,
        file: &Path,
        fingerprints: &[String],
    ) -> Result<(), ArchError> {
        self.pacman_key().arg("--add").arg(file).run()?;
        for fingerprint in fingerprints {
            self.pacman_key()
                .arg("--lsign-key")
                .arg(fingerprint)
                .run()?;
        }
        Ok(())
    }
}

impl Drop for Keyring {
    /// gpg (run by pacman-key and pacman) starts a gpg-agent for the home
    /// folder: stop it, and anything else still using the folder.
    fn drop(&mut self) {
        let _ = Tool::new("gpgconf")
            .arg("--homedir")
            .arg(&self.gpgdir)
            .args(["--kill", "all"])
            .run();
        kill_processes_using(&self.gpgdir);
    }
}

/// A keyring folder must hold archlinux.gpg; pacman-key reads the trusted
/// and revoked lists when present.
pub fn check_keyring_dir(dir: &Path, what: &str) -> Result<(), ArchError> {
    if dir.join(KEYRING_FILES[0]).is_file() {
        Ok(())
    } else {
        Err(ArchError::KeyringFiles {
            dir: dir.to_path_buf(),
            what: what.to_string(),
        })
    }
}

/// SIGKILL to every process whose command line names `path` (a gpg-agent
/// or dirmngr started with `--homedir PATH`).
pub fn kill_processes_using(path: &Path) {
    let needle = path.as_os_str().as_encoded_bytes();
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    let me = std::process::id();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline
            .split(|b| *b == 0)
            .any(|arg| arg.starts_with(needle))
        {
            log::info!("stopping leftover process {pid} using {}", path.display());
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
