//! The two trees compared: the parent's root filesystem as debugfs lists it
//! (inodes, modes, owners, extended attribute names; mtimes from its
//! dump) and the new tree as the host's filesystem has it.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::{LayoutFromError, quoted};
use crate::image::parent::Parent;
use crate::sys::fsio::at;
use crate::sys::tool::Tool;

/// An entry of the parent's root filesystem.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ParentEntry {
    pub(super) inode: u64,
    /// st_mode, type bits included.
    pub(super) mode: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
    /// From the dump (rdump keeps it); None for what rdump does not dump.
    pub(super) mtime: Option<i64>,
    /// Extended attribute names (`ea_list`).
    pub(super) xattrs: Vec<String>,
}

/// An entry of the new tree.
#[derive(Debug, Clone)]
pub(super) struct TreeEntry {
    pub(super) mode: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) mtime: i64,
    pub(super) size: u64,
    pub(super) rdev: u64,
    /// (device, inode): the same pair under two paths is a hard link.
    pub(super) identity: (u64, u64),
    pub(super) links: u64,
    pub(super) xattrs: Vec<(String, Vec<u8>)>,
}

/// The parent's entries: `ls -p` of every folder the dump holds (inode,
/// mode, owner; device nodes included, which rdump skips), mtimes from the
/// dump, and `ea_list` of every entry.
pub(super) fn parent_entries(
    parent: &Parent,
    dump: &Path,
) -> Result<BTreeMap<String, ParentEntry>, LayoutFromError> {
    let mut folders = vec!["/".to_string()];
    collect_folders(dump, dump, &mut folders)?;
    let listing = debugfs_read(parent, "ls -p", &folders)?;
    let mut entries = parse_listings(&listing);
    for (path, entry) in entries.iter_mut() {
        let copy = dump.join(path.trim_start_matches('/'));
        entry.mtime = fs::symlink_metadata(&copy).ok().map(|m| m.mtime());
    }
    let paths: Vec<String> = entries.keys().cloned().collect();
    let listing = debugfs_read(parent, "ea_list", &paths)?;
    for (path, names) in parse_ea_names(&listing) {
        if let Some(entry) = entries.get_mut(&path) {
            entry.xattrs = names;
        }
    }
    Ok(entries)
}

fn collect_folders(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), LayoutFromError> {
    let mut children: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(at("read", dir))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(at("read", dir))?;
    children.sort();
    for path in children {
        let meta = fs::symlink_metadata(&path).map_err(at("stat", &path))?;
        if meta.is_dir() {
            out.push(tree_path(root, &path));
            collect_folders(root, &path, out)?;
        }
    }
    Ok(())
}

/// `COMMAND "PATH"` for each path in one read-only debugfs run; returns its
/// output, where each command is echoed as `debugfs: COMMAND "PATH"`.
fn debugfs_read(
    parent: &Parent,
    command: &str,
    paths: &[String],
) -> Result<String, LayoutFromError> {
    let mut script = tempfile::NamedTempFile::new()
        .map_err(at("create a temporary file in", &std::env::temp_dir()))?;
    let mut text = String::new();
    for path in paths {
        text.push_str(&format!("{command} {}\n", quoted(path)?));
    }
    script
        .write_all(text.as_bytes())
        .map_err(at("write", script.path()))?;
    let output = Tool::new("debugfs")
        .arg("-f")
        .arg(script.path())
        .arg(parent.filesystem_spec())
        .env("LC_ALL", "C")
        .run()?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Splits debugfs output into (argument of the echoed command, output lines).
fn per_command<'a>(text: &'a str, command: &str) -> Vec<(String, Vec<&'a str>)> {
    let echo = format!("debugfs: {command} ");
    let mut out: Vec<(String, Vec<&str>)> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(&echo) {
            out.push((rest.trim().trim_matches('"').to_string(), Vec::new()));
        } else if let Some((_, lines)) = out.last_mut() {
            lines.push(line);
        }
    }
    out
}

/// `ls -p` lines are `/INODE/MODE/UID/GID/NAME/SIZE/` (mode in octal).
fn parse_listings(text: &str) -> BTreeMap<String, ParentEntry> {
    let mut entries = BTreeMap::new();
    for (folder, lines) in per_command(text, "ls -p") {
        for line in lines {
            let fields: Vec<&str> = line.split('/').collect();
            if fields.len() < 7 || !fields[0].is_empty() {
                continue;
            }
            let name = fields[5..fields.len() - 2].join("/");
            if name == "." || name == ".." || name.is_empty() {
                continue;
            }
            let (Ok(inode), Ok(mode), Ok(uid), Ok(gid)) = (
                fields[1].parse::<u64>(),
                u32::from_str_radix(fields[2], 8),
                fields[3].parse::<u32>(),
                fields[4].parse::<u32>(),
            ) else {
                continue;
            };
            let path = if folder == "/" {
                format!("/{name}")
            } else {
                format!("{folder}/{name}")
            };
            entries.insert(
                path,
                ParentEntry {
                    inode,
                    mode,
                    uid,
                    gid,
                    mtime: None,
                    xattrs: Vec::new(),
                },
            );
        }
    }
    entries
}

/// `ea_list` prints `  NAME (LENGTH) = VALUE` per attribute.
fn parse_ea_names(text: &str) -> Vec<(String, Vec<String>)> {
    per_command(text, "ea_list")
        .into_iter()
        .map(|(path, lines)| {
            let names = lines
                .iter()
                .filter_map(|l| l.trim_start().split_once(" (").map(|(n, _)| n))
                .filter(|n| !n.is_empty() && !n.contains(' '))
                .map(str::to_string)
                .collect();
            (path, names)
        })
        .filter(|(_, names): &(String, Vec<String>)| !names.is_empty())
        .collect()
}

fn tree_path(root: &Path, path: &Path) -> String {
    format!(
        "/{}",
        path.strip_prefix(root).unwrap_or(path).to_string_lossy()
    )
}

/// The new tree's entries (the root folder itself as `/`).
pub(super) fn tree_entries(root: &Path) -> Result<BTreeMap<String, TreeEntry>, LayoutFromError> {
    let mut entries = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path).map_err(at("stat", &path))?;
        if meta.file_type().is_socket() {
            // mkfs.ext4 -d skips sockets as well: they are made at run time.
            continue;
        }
        if meta.is_dir() {
            for item in fs::read_dir(&path).map_err(at("read", &path))? {
                stack.push(item.map_err(at("read", &path))?.path());
            }
        }
        entries.insert(
            tree_path(root, &path),
            TreeEntry {
                mode: meta.mode(),
                uid: meta.uid(),
                gid: meta.gid(),
                mtime: meta.mtime(),
                size: meta.size(),
                rdev: meta.rdev(),
                identity: (meta.dev(), meta.ino()),
                links: meta.nlink(),
                xattrs: xattrs_of(&path).map_err(at("read the extended attributes of", &path))?,
            },
        );
    }
    Ok(entries)
}

/// A path's extended attributes (not following a symlink).
fn xattrs_of(path: &Path) -> io::Result<Vec<(String, Vec<u8>)>> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: a null buffer of size 0 asks for the needed size.
    let size = unsafe { libc::llistxattr(c_path.as_ptr(), std::ptr::null_mut(), 0) };
    if size < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENOTSUP) => Ok(Vec::new()),
            _ => Err(err),
        };
    }
    if size == 0 {
        return Ok(Vec::new());
    }
    let mut names = vec![0u8; size as usize];
    // SAFETY: the buffer is `names.len()` bytes long.
    let size = unsafe { libc::llistxattr(c_path.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if size < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    for name in names[..size as usize]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
    {
        let c_name = std::ffi::CString::new(name).expect("split at NUL");
        // SAFETY: as above, a size query.
        let len =
            unsafe { libc::lgetxattr(c_path.as_ptr(), c_name.as_ptr(), std::ptr::null_mut(), 0) };
        if len < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut value = vec![0u8; len as usize];
        // SAFETY: the buffer is `value.len()` bytes long.
        let len = unsafe {
            libc::lgetxattr(
                c_path.as_ptr(),
                c_name.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if len < 0 {
            return Err(io::Error::last_os_error());
        }
        value.truncate(len as usize);
        out.push((String::from_utf8_lossy(name).into_owned(), value));
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::layout_from::{S_IFLNK, S_IFMT};

    #[test]
    fn listings_give_paths_modes_and_owners() {
        let text = "debugfs: ls -p \"/\"\n/2/040755/0/0/.//\n/2/040755/0/0/..//\n\
                    /12/100644/0/0/hostname/9/\n/13/020666/0/5/console//\n\
                    debugfs: ls -p \"/etc\"\n/40/040755/0/0/.//\n/41/120777/0/0/mtab/19/\n";
        let entries = parse_listings(text);
        assert_eq!(entries.len(), 3, "{entries:?}");
        assert_eq!(entries["/hostname"].mode, 0o100644);
        assert_eq!(entries["/hostname"].inode, 12);
        assert_eq!(entries["/console"].gid, 5);
        assert_eq!(entries["/etc/mtab"].mode & S_IFMT, S_IFLNK);
    }

    #[test]
    fn ea_lists_give_attribute_names() {
        let text = "debugfs: ea_list \"/usr/bin/ping\"\nExtended attributes:\n  \
                    security.capability (20) = 01 00 00 02\ndebugfs: ea_list \"/etc\"\n";
        assert_eq!(
            parse_ea_names(text),
            vec![(
                "/usr/bin/ping".to_string(),
                vec!["security.capability".to_string()]
            )]
        );
    }
}
