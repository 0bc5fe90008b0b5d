//! The build's work directory, and the promise that it goes away.
//!
//! imgforge itself mounts nothing, but a bootstrap tool killed mid-way can
//! leave /proc, /sys or /dev mounted inside its tree. Removing a directory
//! with a live bind mount of /dev under it would delete host files, so the
//! guard first unmounts everything below the work directory, deepest first,
//! and refuses to delete if a mount survives.
//!
//! Also where the cache lives ([`default_cache_dir`]), shared by `build`
//! (which fills it) and `clean` (which evicts from it).

use std::fs;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum WorkDirError {
    #[error(
        "cannot create a work directory under {parent}: {source} (set TMPDIR to a writable directory with a few GiB free)"
    )]
    Create {
        parent: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The cache of bootstrapped trees (`rootfs/`) and package downloads
/// (`packages/DISTRO/`): $XDG_CACHE_HOME/imgforge, else ~/.cache/imgforge,
/// else /var/cache/imgforge.
pub fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("imgforge")
}

pub struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    /// A fresh directory under $TMPDIR, else /var/tmp (often not a tmpfs,
    /// which matters for a tree of several hundred MiB).
    pub fn create() -> Result<Self, WorkDirError> {
        let parent = std::env::var_os("TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp"));
        let dir = tempfile::Builder::new()
            .prefix("imgforge-build-")
            .tempdir_in(&parent)
            .map_err(|source| WorkDirError::Create { parent, source })?;
        Ok(Self { path: dir.keep() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let mounts = mounts_below(&self.path);
        for mount in &mounts {
            log::warn!("unmounting leftover {}", mount.display());
            if let Err(err) = nix::mount::umount2(mount, nix::mount::MntFlags::MNT_DETACH) {
                log::error!("cannot unmount {}: {err}", mount.display());
            }
        }
        if !mounts_below(&self.path).is_empty() {
            log::error!(
                "leaving {} in place: something is still mounted below it",
                self.path.display()
            );
            return;
        }
        if let Err(err) = fs::remove_dir_all(&self.path) {
            log::error!(
                "cannot remove work directory {}: {err}",
                self.path.display()
            );
        }
    }
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|mount| mount.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(u8::is_ascii_digit)
        {
            let code = u8::from_str_radix(&field[i + 1..i + 4], 8).unwrap_or(b'?');
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/var/tmp/a\040b"), "/var/tmp/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn work_dir_is_removed_on_drop() {
        let dir = WorkDir::create().unwrap();
        let path = dir.path().to_path_buf();
        fs::write(path.join("f"), b"x").unwrap();
        drop(dir);
        assert!(!path.exists());
    }
}
