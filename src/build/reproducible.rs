//! Same inputs, same image: the seed that every disk id is derived from,
//! the SOURCE_DATE_EPOCH that every timestamp is clamped to, and the
//! clamp itself (the tree's times, before the filesystem is made of it).
//! A service the context and the stages call; it imports no stage.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;

use crate::distro::{Distro, DistroError};
use crate::sys::fsio::{PathError, at};

#[derive(Debug, thiserror::Error)]
pub enum ReproducibleError {
    #[error(transparent)]
    Io(#[from] PathError),
    #[error(transparent)]
    Distro(#[from] DistroError),
    #[error(
        "cannot tell the newest package's date from the tree ({distro}'s package database has \
         none): pass --epoch SECONDS (or set SOURCE_DATE_EPOCH)"
    )]
    NoEpoch { distro: String },
    #[error("setting the times of {path}")]
    Times {
        path: std::path::PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// The seed when `--seed` is not given: the output's file name without its
/// folder and without a `.raw` extension (`out/trading-large.raw` gives
/// `trading-large`). Building into a temporary path under the same file
/// name, or moving the image afterwards, keeps the ids.
pub fn default_seed(output: &Path) -> String {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".to_string());
    match name.strip_suffix(".raw") {
        Some(stem) if !stem.is_empty() => stem.to_string(),
        _ => name,
    }
}

/// `--epoch`/SOURCE_DATE_EPOCH when given (`given`), else the newest
/// package in `tree` as the distro tells it.
pub fn source_date_epoch(
    given: Option<u64>,
    distro: &dyn Distro,
    tree: &Path,
) -> Result<u64, ReproducibleError> {
    if let Some(epoch) = given {
        return Ok(epoch);
    }
    distro
        .source_date_epoch(tree)?
        .ok_or_else(|| ReproducibleError::NoEpoch {
            distro: distro.data().name.clone(),
        })
}

/// Clamps the "last password change" field (days since 1970) of every
/// entry of a shadow file to the epoch's day: the bootstrap writes the
/// day it ran for the system users, so a tree bootstrapped on another day
/// would differ. A missing file is fine; empty and `0` fields (no aging,
/// must change) are kept.
pub fn clamp_shadow_dates(path: &Path, epoch: u64) -> Result<(), ReproducibleError> {
    let Ok(text) = fs::read_to_string(path) else {
        return Ok(());
    };
    let clamped = clamp_shadow_text(&text, epoch / 86_400);
    if clamped != text {
        fs::write(path, clamped).map_err(at("write", path))?;
    }
    Ok(())
}

fn clamp_shadow_text(text: &str, day: u64) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let (body, end) = match line.strip_suffix('\n') {
            Some(body) => (body, "\n"),
            None => (line, ""),
        };
        let mut fields: Vec<String> = body.split(':').map(String::from).collect();
        if let Some(changed) = fields.get_mut(2)
            && let Ok(value) = changed.parse::<u64>()
            && value > day
        {
            *changed = day.to_string();
        }
        out.push_str(&fields.join(":"));
        out.push_str(end);
    }
    out
}

/// What the clamp changed.
#[derive(Debug, Default, Clone, Copy)]
pub struct Clamped {
    pub entries: u64,
    pub newer_than_epoch: u64,
}

/// Sets every entry's atime to the epoch and clamps its mtime to it
/// (symlinks themselves, not their targets; one syscall per entry, no
/// process). mke2fs copies both; the ctime it also copies cannot be set
/// from here, so assemble rewrites it in the filesystem afterwards.
pub fn clamp_tree_times(root: &Path, epoch: u64) -> Result<Clamped, ReproducibleError> {
    let mut clamped = Clamped::default();
    let mut pending = vec![root.to_path_buf()];
    let epoch_spec = TimeSpec::new(epoch as i64, 0);
    while let Some(path) = pending.pop() {
        let meta = fs::symlink_metadata(&path).map_err(at("stat", &path))?;
        if meta.is_dir() {
            for entry in fs::read_dir(&path).map_err(at("read", &path))? {
                pending.push(entry.map_err(at("read", &path))?.path());
            }
        }
        clamped.entries += 1;
        let mtime = if meta.mtime() > epoch as i64 {
            clamped.newer_than_epoch += 1;
            epoch_spec
        } else {
            TimeSpec::new(meta.mtime(), meta.mtime_nsec())
        };
        utimensat(
            nix::fcntl::AT_FDCWD,
            &path,
            &epoch_spec,
            &mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|source| ReproducibleError::Times {
            path: path.clone(),
            source,
        })?;
    }
    Ok(clamped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;

    #[test]
    fn seed_is_the_file_name_without_folder_or_raw() {
        assert_eq!(
            default_seed(&PathBuf::from("out/trading-large.raw")),
            "trading-large"
        );
        assert_eq!(
            default_seed(&PathBuf::from("/tmp/x/trading-large.raw")),
            "trading-large"
        );
        assert_eq!(default_seed(&PathBuf::from("disk.img")), "disk.img");
        assert_eq!(default_seed(&PathBuf::from(".raw")), ".raw");
    }

    #[test]
    fn shadow_days_are_clamped_to_the_epoch() {
        let text = "root:*:20783:0:99999:7:::\nadmin:!:20000:0:99999:7:::\nx:*::0:99999:7:::\nmust:*:0::::::\n";
        assert_eq!(
            clamp_shadow_text(text, 20773),
            "root:*:20773:0:99999:7:::\nadmin:!:20000:0:99999:7:::\nx:*::0:99999:7:::\nmust:*:0::::::\n"
        );
    }

    #[test]
    fn clamp_lowers_new_times_keeps_old_ones_and_spares_link_targets() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old");
        let new = dir.path().join("sub/new");
        fs::create_dir_all(dir.path().join("sub")).unwrap();
        fs::write(&old, "o").unwrap();
        fs::write(&new, "n").unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        symlink(outside.path(), dir.path().join("link")).unwrap();
        let at_time = |path: &Path, secs: i64| {
            let t = TimeSpec::new(secs, 0);
            utimensat(
                nix::fcntl::AT_FDCWD,
                path,
                &t,
                &t,
                UtimensatFlags::FollowSymlink,
            )
            .unwrap();
        };
        at_time(&old, 1_000_000_000);
        at_time(&new, 2_000_000_000);
        let outside_before = fs::metadata(outside.path()).unwrap().mtime();

        let epoch = 1_500_000_000;
        let clamped = clamp_tree_times(dir.path(), epoch).unwrap();
        assert_eq!(clamped.entries, 5, "root, old, sub, sub/new, link");
        let meta = |p: &Path| fs::symlink_metadata(p).unwrap();
        assert_eq!(meta(&old).mtime(), 1_000_000_000);
        assert_eq!(meta(&old).atime(), epoch as i64);
        assert_eq!(meta(&new).mtime(), epoch as i64);
        assert!(meta(&dir.path().join("link")).mtime() <= epoch as i64);
        assert_eq!(
            fs::metadata(outside.path()).unwrap().mtime(),
            outside_before
        );
    }
}
