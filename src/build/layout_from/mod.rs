//! `--layout-from PARENT.raw`: the root filesystem laid out on top of the
//! parent image's instead of anew.
//!
//! `mkfs.ext4 -d` places every file afresh, so adding one package moves
//! nearly every 512 KiB block and a delta upload against the parent's
//! snapshot sends nearly all of them (92 % for `--packages htop`). Here the
//! parent's root filesystem is copied and only the difference between its
//! tree and the new tree is applied, with debugfs (libext2fs's allocator):
//! unchanged files keep their inodes and blocks, new ones go to free space.
//!
//! The new image takes the parent's disk size and disk ids (its seed), and
//! depends on the parent's bytes as well as on its own inputs, so the
//! manifest records the digest of the parent's root partition (the parent
//! is read by [`crate::image::parent`]).
//!
//! The steps: copy the parent's root filesystem, dump its tree
//! ([`entries`]), compare it with the new tree ([`compare`]), write the
//! debugfs command file that turns one into the other ([`script`]), run it,
//! and check the result with e2fsck.

mod compare;
mod entries;
mod script;

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::image::parent::Parent;
use crate::image::sparse;
use crate::sys::fsio::{PathError, at};
use crate::sys::tool::{Tool, ToolError};

/// Made by mkfs, not part of any tree: kept as the parent's mkfs made it.
const LOST_AND_FOUND: &str = "/lost+found";
const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;

#[derive(Debug, thiserror::Error)]
pub enum LayoutFromError {
    #[error(
        "--layout-from {path}: its root partition is at bytes {parent_offset}+{parent_bytes}, \
         where this build puts it at {offset}+{bytes} (another imgforge's layout): build without \
         --layout-from"
    )]
    Extent {
        path: PathBuf,
        parent_offset: u64,
        parent_bytes: u64,
        offset: u64,
        bytes: u64,
    },
    #[error(
        "cannot lay out {0} on the parent: debugfs cannot quote a name with `\"` or a line break \
         in it; build without --layout-from"
    )]
    Unquotable(String),
    #[error(
        "debugfs could not apply the new tree onto {parent}'s root filesystem:\n{lines}\n(if it \
         ran out of space, the tree no longer fits the parent's root partition: build without \
         --layout-from)"
    )]
    Apply { parent: PathBuf, lines: String },
    #[error("the root filesystem laid out on {parent}'s fails `e2fsck -fn`:\n{detail}")]
    Check { parent: PathBuf, detail: String },
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    Io(#[from] PathError),
}

/// What laying the tree out on the parent changed.
#[derive(Debug, Default, Clone)]
pub struct Applied {
    /// Entries of the new tree that kept the parent's inode as it was.
    pub kept: usize,
    /// Entries removed from the parent's tree (gone, or replaced).
    pub removed: usize,
    /// Entries written anew (new, or replaced).
    pub written: usize,
}

/// Writes the root filesystem at `offset` in `image`: the parent's, with
/// the difference to `tree` applied. `work` is scratch space (the parent's
/// tree is dumped there to compare contents). Every inode time debugfs
/// sets is `epoch`; assemble's time pass runs after this as after mkfs.
pub fn lay_out_root(
    parent: &Parent,
    tree: &Path,
    image: &Path,
    offset: u64,
    bytes: u64,
    epoch: u32,
    work: &Path,
) -> Result<Applied, LayoutFromError> {
    if parent.root_offset() != offset || parent.root_bytes() != bytes {
        return Err(LayoutFromError::Extent {
            path: parent.image.clone(),
            parent_offset: parent.root_offset(),
            parent_bytes: parent.root_bytes(),
            offset,
            bytes,
        });
    }
    copy_range(&parent.image, image, offset, bytes)?;
    let data_bytes = sparse::data_extents(
        &File::open(&parent.image).map_err(at("open", &parent.image))?,
        offset + bytes,
    )
    .map_err(at("read", &parent.image))?
    .iter()
    .map(|e| {
        e.end
            .min(offset + bytes)
            .saturating_sub(e.start.max(offset))
    })
    .sum();
    // Dropped (deleted) on every way out: the dump is as big as the tree.
    let dump = tempfile::Builder::new()
        .prefix("imgforge-layout-parent-")
        .tempdir_in(dump_folder(work, data_bytes))
        .map_err(at("create a folder in", work))?;
    apply_difference(parent, tree, image, offset, epoch, work, dump.path())
}

/// Where the parent's tree is dumped: memory (/dev/shm) when it and the
/// machine have room for twice the parent's data with a GiB to spare,
/// since writing the dump to disk is most of `--layout-from`'s cost (12 s
/// against 0.5 s here for the 2 GiB Debian image); else `work`.
fn dump_folder(work: &Path, data_bytes: u64) -> PathBuf {
    let shm = Path::new("/dev/shm");
    let wanted = 2 * data_bytes + (1 << 30);
    let shm_free = nix::sys::statvfs::statvfs(shm)
        .map(|s| s.blocks_available() * s.fragment_size())
        .unwrap_or(0);
    let memory_free = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024);
    if shm_free >= wanted && memory_free >= wanted {
        shm.to_path_buf()
    } else {
        work.to_path_buf()
    }
}

fn apply_difference(
    parent: &Parent,
    tree: &Path,
    image: &Path,
    offset: u64,
    epoch: u32,
    work: &Path,
    dump: &Path,
) -> Result<Applied, LayoutFromError> {
    Tool::new("debugfs")
        .arg("-R")
        .arg(format!("rdump / \"{}\"", dump.display()))
        .arg(parent.filesystem_spec())
        .run()?;
    let before = entries::parent_entries(parent, dump)?;
    let after = entries::tree_entries(tree)?;
    let xattr_dir = work.join("layout-xattrs");
    fs::create_dir_all(&xattr_dir).map_err(at("create", &xattr_dir))?;
    let (script, applied) = script::plan_script(&before, &after, tree, dump, &xattr_dir)?;
    let script_path = work.join("layout-from.debugfs");
    fs::write(&script_path, &script).map_err(at("write", &script_path))?;
    let spec = format!("{}?offset={offset}", image.display());
    let output = Tool::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&script_path)
        .arg(&spec)
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .env("LC_ALL", "C")
        .run()?;
    // debugfs exits 0 when a command of the file fails; its only stderr
    // line on success is its banner.
    let errors: Vec<&String> = output
        .stderr_tail
        .iter()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        .collect();
    if !errors.is_empty() {
        return Err(LayoutFromError::Apply {
            parent: parent.image.clone(),
            lines: errors
                .iter()
                .map(|l| l.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
        });
    }
    Tool::new("e2fsck")
        .args(["-f", "-n"])
        .arg(&spec)
        .env("LC_ALL", "C")
        .run()
        .map_err(|e| LayoutFromError::Check {
            parent: parent.image.clone(),
            detail: e.to_string(),
        })?;
    Ok(applied)
}

/// Copies `bytes` bytes at `offset` of the parent into the same place of
/// `image`, data extents only (the image is sparse and zero there).
fn copy_range(from: &Path, image: &Path, offset: u64, bytes: u64) -> Result<(), LayoutFromError> {
    let source = File::open(from).map_err(at("open", from))?;
    let target = fs::OpenOptions::new()
        .write(true)
        .open(image)
        .map_err(at("open", image))?;
    let end = offset + bytes;
    let extents = sparse::data_extents(&source, end).map_err(at("read", from))?;
    let mut buf = vec![0u8; 1 << 20];
    for extent in extents {
        let (mut at_byte, stop) = (extent.start.max(offset), extent.end.min(end));
        while at_byte < stop {
            let n = ((stop - at_byte) as usize).min(buf.len());
            source
                .read_exact_at(&mut buf[..n], at_byte)
                .map_err(at("read", from))?;
            target
                .write_all_at(&buf[..n], at_byte)
                .map_err(at("write", image))?;
            at_byte += n as u64;
        }
    }
    Ok(())
}

/// A path in debugfs's quotes.
fn quoted(path: &str) -> Result<String, LayoutFromError> {
    if path.contains(['"', '\n']) {
        return Err(LayoutFromError::Unquotable(path.to_string()));
    }
    Ok(format!("\"{path}\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_debugfs_cannot_quote_are_refused() {
        assert!(quoted("/a b").is_ok());
        assert!(matches!(
            quoted("/a\"b"),
            Err(LayoutFromError::Unquotable(_))
        ));
    }
}
