//! The debugfs command file that turns the parent's tree into the new one:
//! removals deepest first, then creations parents first, then owners,
//! modes, mtimes, extended attributes and link counts.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;

use super::compare::{LinkCheck, unchanged};
use super::entries::{ParentEntry, TreeEntry};
use super::{Applied, LOST_AND_FOUND, LayoutFromError, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, quoted};
use crate::sys::fsio::at;

/// Whether each path of the new tree keeps the parent's entry as it is.
type Kept<'a> = BTreeMap<&'a str, bool>;

/// The script and what it changes, step by step.
pub(super) fn plan_script(
    before: &BTreeMap<String, ParentEntry>,
    after: &BTreeMap<String, TreeEntry>,
    tree: &Path,
    dump: &Path,
    xattr_dir: &Path,
) -> Result<(String, Applied), LayoutFromError> {
    let kept = kept_entries(before, after, tree, dump)?;
    let mut script = String::new();
    let mut applied = Applied::default();
    remove_changed(&mut script, &mut applied, before, &kept)?;
    let link_counts = create_new(&mut script, &mut applied, after, &kept, tree)?;
    set_metadata(&mut script, before, after, &kept, xattr_dir)?;
    for (path, links) in link_counts {
        script.push_str(&format!("sif {} links_count {links}\n", quoted(path)?));
    }
    Ok((script, applied))
}

/// Compares every entry of the new tree with the parent's.
fn kept_entries<'a>(
    before: &BTreeMap<String, ParentEntry>,
    after: &'a BTreeMap<String, TreeEntry>,
    tree: &Path,
    dump: &Path,
) -> Result<Kept<'a>, LayoutFromError> {
    let links = LinkCheck::new(before, after);
    let mut kept = BTreeMap::new();
    for (path, new) in after {
        // The root folder is the filesystem's own; `ls -p` lists only what
        // is in folders.
        let same = match before.get(path) {
            _ if path == "/" => true,
            Some(old) => unchanged(path, new, old, &links, tree, dump)?,
            None => false,
        };
        kept.insert(path.as_str(), same);
    }
    Ok(kept)
}

/// Removes the parent's entries that are gone or changed, deepest first.
fn remove_changed(
    script: &mut String,
    applied: &mut Applied,
    before: &BTreeMap<String, ParentEntry>,
    kept: &Kept,
) -> Result<(), LayoutFromError> {
    let mut removals: Vec<&String> = before
        .keys()
        .filter(|p| !kept.get(p.as_str()).copied().unwrap_or(false))
        .filter(|p| p.as_str() != LOST_AND_FOUND)
        .collect();
    removals.sort_by(|a, b| depth(b).cmp(&depth(a)).then(a.cmp(b)));
    for path in removals {
        let verb = if before[path].mode & S_IFMT == S_IFDIR {
            "rmdir"
        } else {
            "rm"
        };
        script.push_str(&format!("{verb} {}\n", quoted(path)?));
        applied.removed += 1;
    }
    Ok(())
}

/// Creates what is not kept, parents first (the map's order); returns the
/// first path of each hard-link group with its link count, set last.
fn create_new<'a>(
    script: &mut String,
    applied: &mut Applied,
    after: &'a BTreeMap<String, TreeEntry>,
    kept: &Kept,
    tree: &Path,
) -> Result<Vec<(&'a str, u64)>, LayoutFromError> {
    let mut first_link: HashMap<(u64, u64), &str> = HashMap::new();
    let mut link_counts: Vec<(&str, u64)> = Vec::new();
    for (path, new) in after {
        if kept[path.as_str()] {
            applied.kept += 1;
            continue;
        }
        applied.written += 1;
        let q = quoted(path)?;
        let source = tree.join(path.trim_start_matches('/'));
        match new.mode & S_IFMT {
            S_IFDIR => script.push_str(&format!("mkdir {q}\n")),
            S_IFREG => match first_link.get(&new.identity) {
                Some(first) => script.push_str(&format!("ln {} {q}\n", quoted(first)?)),
                None => {
                    script.push_str(&format!(
                        "write {} {q}\n",
                        quoted(&source.to_string_lossy())?
                    ));
                    if new.links > 1 {
                        first_link.insert(new.identity, path);
                        link_counts.push((path, new.links));
                    }
                }
            },
            S_IFLNK => {
                let target = fs::read_link(&source).map_err(at("read the link", &source))?;
                script.push_str(&format!(
                    "symlink {q} {}\n",
                    quoted(&target.to_string_lossy())?
                ));
            }
            _ => script.push_str(&make_node(path, new)?),
        }
    }
    Ok(link_counts)
}

/// A device node or fifo: mknod takes a name in the current folder, not a
/// path.
fn make_node(path: &str, new: &TreeEntry) -> Result<String, LayoutFromError> {
    let (folder, name) = path.rsplit_once('/').expect("paths start with /");
    let folder = if folder.is_empty() { "/" } else { folder };
    let device = || {
        format!(
            "{} {}",
            libc::major(new.rdev as libc::dev_t),
            libc::minor(new.rdev as libc::dev_t)
        )
    };
    let kind = match new.mode & S_IFMT {
        0o020_000 => format!("c {}", device()),
        0o060_000 => format!("b {}", device()),
        _ => "p".to_string(),
    };
    Ok(format!(
        "cd {}\nmknod {} {kind}\ncd /\n",
        quoted(folder)?,
        quoted(name)?
    ))
}

/// Owners, modes and mtimes where they differ from a kept entry's (always
/// for a new one), and extended attributes (the kept entry's removed, the
/// new tree's set from files under `xattr_dir`).
fn set_metadata(
    script: &mut String,
    before: &BTreeMap<String, ParentEntry>,
    after: &BTreeMap<String, TreeEntry>,
    kept: &Kept,
    xattr_dir: &Path,
) -> Result<(), LayoutFromError> {
    let mut xattr_files = 0usize;
    for (path, new) in after {
        let q = quoted(path)?;
        let old = before.get(path).filter(|_| kept[path.as_str()]);
        let differs = |field: &dyn Fn(&ParentEntry) -> bool| old.is_none_or(|o| !field(o));
        if differs(&|o| o.mode == new.mode) {
            script.push_str(&format!("sif {q} mode 0{:o}\n", new.mode));
        }
        if differs(&|o| o.uid == new.uid) {
            script.push_str(&format!("sif {q} uid {}\n", new.uid));
        }
        if differs(&|o| o.gid == new.gid) {
            script.push_str(&format!("sif {q} gid {}\n", new.gid));
        }
        // A folder's mtime is set whatever the parent's was: debugfs may
        // touch it while adding or removing entries.
        if new.mode & S_IFMT == S_IFDIR || differs(&|o| o.mtime == Some(new.mtime)) {
            script.push_str(&format!("sif {q} mtime @{}\n", new.mtime));
        }
        if let Some(old) = old {
            for name in &old.xattrs {
                script.push_str(&format!("ea_rm {q} {name}\n"));
            }
        }
        for (name, value) in &new.xattrs {
            let file = xattr_dir.join(format!("{xattr_files}"));
            xattr_files += 1;
            fs::write(&file, value).map_err(at("write", &file))?;
            script.push_str(&format!(
                "ea_set -f {} {q} {name}\n",
                quoted(&file.to_string_lossy())?
            ));
        }
    }
    Ok(())
}

fn depth(path: &str) -> usize {
    path.matches('/').count()
}
