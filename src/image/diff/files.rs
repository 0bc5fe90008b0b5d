//! The file level of `imgforge diff`: what is compared about one file, the
//! comparison of two file trees, and the FAT reader (in-process, through
//! fatfs); ext4 trees come from [`super::debugfs`].

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read};

use sha2::{Digest, Sha256};

use super::{Difference, FileDiff, SECTOR};
use crate::image::esp::PartitionSlice;
use crate::image::inspect::{self, PartitionInfo};

/// What is compared about one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) kind: &'static str,
    pub(super) mode: u32,
    pub(super) owner: String,
    pub(super) size: u64,
    pub(super) mtime: i64,
    pub(super) link_target: Option<String>,
    pub(super) digest: Option<String>,
    pub(super) xattrs: String,
}

pub(super) fn compare_entries(
    a: &BTreeMap<String, Entry>,
    b: &BTreeMap<String, Entry>,
) -> Vec<FileDiff> {
    let paths: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let mut out = Vec::new();
    for path in paths {
        let changes = match (a.get(path), b.get(path)) {
            (Some(_), None) => vec![presence("only in A")],
            (None, Some(_)) => vec![presence("only in B")],
            (Some(x), Some(y)) => entry_changes(x, y),
            (None, None) => unreachable!("the path came from one of the two"),
        };
        if !changes.is_empty() {
            out.push(FileDiff {
                path: path.clone(),
                changes,
            });
        }
    }
    out
}

fn presence(what: &str) -> Difference {
    Difference {
        what: what.into(),
        a: String::new(),
        b: String::new(),
    }
}

fn entry_changes(x: &Entry, y: &Entry) -> Vec<Difference> {
    let mut out = Vec::new();
    let mut check = |what: &str, a: String, b: String| {
        if a != b {
            out.push(Difference {
                what: what.into(),
                a,
                b,
            });
        }
    };
    check("type", x.kind.into(), y.kind.into());
    check("mode", format!("{:04o}", x.mode), format!("{:04o}", y.mode));
    check("owner", x.owner.clone(), y.owner.clone());
    check(
        "link target",
        x.link_target.clone().unwrap_or_default(),
        y.link_target.clone().unwrap_or_default(),
    );
    check("size", x.size.to_string(), y.size.to_string());
    if x.size == y.size {
        check(
            "content",
            x.digest.clone().unwrap_or_default(),
            y.digest.clone().unwrap_or_default(),
        );
    }
    check("mtime", x.mtime.to_string(), y.mtime.to_string());
    check("xattrs", x.xattrs.clone(), y.xattrs.clone());
    out
}

pub(super) fn diff_fat(
    file_a: &File,
    pa: &PartitionInfo,
    file_b: &File,
    pb: &PartitionInfo,
) -> Vec<FileDiff> {
    compare_entries(&fat_entries(file_a, pa), &fat_entries(file_b, pb))
}

/// The files of a FAT partition, read in-process; an unreadable volume
/// gives no entries (and so every file of the other side shows up).
fn fat_entries(file: &File, p: &PartitionInfo) -> BTreeMap<String, Entry> {
    let mut entries = BTreeMap::new();
    let Ok(mut handle) = file.try_clone() else {
        return entries;
    };
    // fatfs 0.3 can panic on a corrupt volume (see inspect::read_fat).
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> io::Result<()> {
        let slice = PartitionSlice::new(&mut handle, p.first_lba * SECTOR, p.size_bytes)?;
        let mut volume = inspect::ReadOnly(slice);
        let fs = fatfs::FileSystem::new(&mut volume, fatfs::FsOptions::new())?;
        walk_fat(&fs.root_dir(), "", &mut entries)
    }));
    entries
}

fn walk_fat<T: fatfs::ReadWriteSeek>(
    dir: &fatfs::Dir<T>,
    prefix: &str,
    entries: &mut BTreeMap<String, Entry>,
) -> io::Result<()> {
    for item in dir.iter() {
        let item = item?;
        let name = item.file_name();
        if name == "." || name == ".." {
            continue;
        }
        let path = format!("{prefix}/{name}");
        let m = item.modified();
        let mtime = format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}",
            m.date.year, m.date.month, m.date.day, m.time.hour, m.time.min, m.time.sec
        );
        let digest = if item.is_file() {
            let mut hasher = Sha256::new();
            let mut bytes = Vec::new();
            item.to_file().read_to_end(&mut bytes)?;
            hasher.update(&bytes);
            Some(hex::encode(hasher.finalize()))
        } else {
            None
        };
        entries.insert(
            path.clone(),
            Entry {
                kind: if item.is_dir() { "directory" } else { "file" },
                mode: 0,
                owner: String::new(),
                size: if item.is_dir() { 0 } else { item.len() },
                mtime: mtime.parse().unwrap_or(0),
                link_target: None,
                digest,
                xattrs: String::new(),
            },
        );
        if item.is_dir() {
            walk_fat(&item.to_dir(), &path, entries)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_compare_field_by_field() {
        let entry = Entry {
            kind: "file",
            mode: 0o644,
            owner: "0:0".into(),
            size: 3,
            mtime: 10,
            link_target: None,
            digest: Some("x".into()),
            xattrs: String::new(),
        };
        let mut changed = entry.clone();
        changed.digest = Some("y".into());
        changed.mode = 0o600;
        let a = BTreeMap::from([("/f".to_string(), entry.clone()), ("/gone".into(), entry)]);
        let b = BTreeMap::from([("/f".to_string(), changed)]);
        let diffs = compare_entries(&a, &b);
        assert_eq!(diffs.len(), 2);
        let what: Vec<&str> = diffs[0].changes.iter().map(|c| c.what.as_str()).collect();
        assert_eq!(what, ["mode", "content"]);
        assert_eq!(diffs[1].path, "/gone");
        assert_eq!(diffs[1].changes[0].what, "only in A");
    }
}
