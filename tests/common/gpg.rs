//! A throwaway GnuPG home for the tests that sign things: fixture package
//! repositories, pacman keyrings, apt repository keys.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct GpgHome {
    dir: PathBuf,
}

impl GpgHome {
    /// Makes `dir` (mode 0700, as gpg insists) a fresh GnuPG home.
    pub fn create(dir: &Path) -> GpgHome {
        fs::create_dir_all(dir).unwrap();
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).unwrap();
        GpgHome {
            dir: dir.to_path_buf(),
        }
    }

    /// A GnuPG home made earlier (by [`create`](Self::create)).
    pub fn open(dir: &Path) -> GpgHome {
        GpgHome {
            dir: dir.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Runs gpg in this home (batch, no passphrase) and returns its stdout;
    /// panics naming the arguments and gpg's output when it fails.
    pub fn run(&self, args: &[&str]) -> Vec<u8> {
        let home = self.dir.to_str().unwrap();
        let mut all = vec!["--homedir", home, "--batch"];
        all.extend_from_slice(&["--pinentry-mode", "loopback", "--passphrase", ""]);
        all.extend_from_slice(args);
        let out = Command::new("gpg")
            .args(&all)
            .output()
            .unwrap_or_else(|e| panic!("cannot run gpg: {e}"));
        assert!(
            out.status.success(),
            "gpg {args:?} failed: {}",
            super::text(&out)
        );
        out.stdout
    }

    /// [`run`](Self::run) with gpg's clock set to `time` (`20200101T000000`),
    /// for keys that are old or expired today.
    pub fn run_at(&self, time: &str, args: &[&str]) -> Vec<u8> {
        let mut all = vec!["--faked-system-time", time];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// Generates an ed25519 key for `uid` (`usage`: `sign` or `cert`;
    /// `expires`: `never`, `1y`, ...) and returns its fingerprint.
    pub fn generate_key(&self, uid: &str, usage: &str, expires: &str) -> String {
        self.run(&["--quick-gen-key", uid, "ed25519", usage, expires]);
        self.fingerprint_of(uid)
    }

    /// The primary key's fingerprint of the one key matching `uid`.
    pub fn fingerprint_of(&self, uid: &str) -> String {
        let listing = self.run(&["--with-colons", "--list-keys", uid]);
        String::from_utf8(listing)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .map(|l| l.trim_matches(':').to_string())
            .unwrap_or_else(|| panic!("no key for {uid}"))
    }

    /// Writes a pacman keyring folder as `archlinux-keyring` ships one:
    /// `archlinux.gpg` (the `keys` exported), `archlinux-trusted` (each of
    /// `trusted` with marginal ownertrust, `:4:`, as Arch's master keys) and
    /// an empty `archlinux-revoked`.
    pub fn write_pacman_keyring(&self, dir: &Path, keys: &[&str], trusted: &[&str]) {
        fs::create_dir_all(dir).unwrap();
        let mut export = vec!["--export"];
        export.extend_from_slice(keys);
        fs::write(dir.join("archlinux.gpg"), self.run(&export)).unwrap();
        let trusted: String = trusted.iter().map(|k| format!("{k}:4:\n")).collect();
        fs::write(dir.join("archlinux-trusted"), trusted).unwrap();
        fs::write(dir.join("archlinux-revoked"), "").unwrap();
    }

    /// Stops the agent gpg started for this home, so no process outlives
    /// the test.
    pub fn stop_agent(&self) {
        let _ = Command::new("gpgconf")
            .args(["--homedir", self.dir.to_str().unwrap(), "--kill", "all"])
            .output();
    }
}
