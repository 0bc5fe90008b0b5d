//! Which entries of the new tree are the parent's as they stand: same type,
//! same bytes or link target, the same hard-link groups. Those keep their
//! inodes and blocks; everything else is removed and written anew.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;

use super::entries::{ParentEntry, TreeEntry};
use super::{LayoutFromError, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};
use crate::sys::fsio::at;

/// Whether the new tree's entry at `path` is the parent's as it stands
/// (same type, same content; metadata is set separately). A hard-linked
/// file is unchanged when the parent links the same paths, and only them,
/// to one inode. Device nodes and fifos are always made again (rdump does
/// not dump them to compare; making one again rewrites the same inode).
pub(super) fn unchanged(
    path: &str,
    new: &TreeEntry,
    old: &ParentEntry,
    links: &LinkCheck,
    tree: &Path,
    dump: &Path,
) -> Result<bool, LayoutFromError> {
    if new.mode & S_IFMT != old.mode & S_IFMT {
        return Ok(false);
    }
    let relative = path.trim_start_matches('/');
    let (new_path, old_path) = (tree.join(relative), dump.join(relative));
    Ok(match new.mode & S_IFMT {
        S_IFDIR => true,
        S_IFREG => links.same_group(new, old) && same_bytes(&new_path, &old_path, new.size)?,
        S_IFLNK => {
            let target = |p: &Path| fs::read_link(p).ok();
            target(&new_path).is_some() && target(&new_path) == target(&old_path)
        }
        _ => false,
    })
}

/// Hard links on both sides: the new tree's link groups (paths per
/// inode) and how many paths share each of the parent's inodes.
pub(super) struct LinkCheck<'a> {
    new_groups: HashMap<(u64, u64), Vec<&'a str>>,
    before: &'a BTreeMap<String, ParentEntry>,
    old_uses: HashMap<u64, usize>,
}

impl<'a> LinkCheck<'a> {
    pub(super) fn new(
        before: &'a BTreeMap<String, ParentEntry>,
        after: &'a BTreeMap<String, TreeEntry>,
    ) -> Self {
        let mut old_uses: HashMap<u64, usize> = HashMap::new();
        for entry in before.values().filter(|e| e.mode & S_IFMT != S_IFDIR) {
            *old_uses.entry(entry.inode).or_default() += 1;
        }
        let mut new_groups: HashMap<(u64, u64), Vec<&str>> = HashMap::new();
        for (path, entry) in after.iter().filter(|(_, e)| e.links > 1) {
            if entry.mode & S_IFMT == S_IFREG {
                new_groups.entry(entry.identity).or_default().push(path);
            }
        }
        Self {
            new_groups,
            before,
            old_uses,
        }
    }

    /// Whether the paths linked to `new`'s inode are exactly those linked
    /// to `old`'s in the parent (for an unlinked file: both stand alone).
    fn same_group(&self, new: &TreeEntry, old: &ParentEntry) -> bool {
        let old_count = self.old_uses.get(&old.inode).copied().unwrap_or(0);
        let Some(group) = self.new_groups.get(&new.identity) else {
            return old_count == 1;
        };
        group.len() == old_count
            && group
                .iter()
                .all(|p| self.before.get(*p).is_some_and(|e| e.inode == old.inode))
    }
}

fn same_bytes(a: &Path, b: &Path, size: u64) -> Result<bool, LayoutFromError> {
    match fs::symlink_metadata(b) {
        Ok(meta) if meta.is_file() && meta.len() == size => {}
        _ => return Ok(false),
    }
    let (mut fa, mut fb) = (
        File::open(a).map_err(at("open", a))?,
        File::open(b).map_err(at("open", b))?,
    );
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = read_full(&mut fa, &mut ba).map_err(at("read", a))?;
        let m = read_full(&mut fb, &mut bb).map_err(at("read", b))?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}
