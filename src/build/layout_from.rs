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
//! manifest records the digest of the parent's root partition.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::image::inspect::{self, InspectError, PartitionInfo};
use crate::image::manifest::LayoutParent;
use crate::image::sparse;
use crate::platform::Architecture;
use crate::sys::fsio::{PathError, at};
use crate::sys::tool::{Tool, ToolError};

const SECTOR: u64 = 512;
/// The partition the tree goes into (assemble's layout names it so).
const ROOT_NAME: &str = "root";
/// Made by mkfs, not part of any tree: kept as the parent's mkfs made it.
const LOST_AND_FOUND: &str = "/lost+found";
const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;

#[derive(Debug, thiserror::Error)]
pub enum LayoutFromError {
    #[error("--layout-from {path}: cannot read it as a disk image")]
    Inspect {
        path: PathBuf,
        #[source]
        source: InspectError,
    },
    #[error(
        "--layout-from {0}: the image carries no build manifest with a seed (it was built with \
         random ids, or not by imgforge): build the parent with `imgforge build --seed NAME`, or \
         build without --layout-from"
    )]
    NoSeed(PathBuf),
    #[error("--layout-from {path}: it is an {found} image and this build is {wanted}")]
    Architecture {
        path: PathBuf,
        found: String,
        wanted: String,
    },
    #[error(
        "--layout-from {path}: its disk ids come from seed `{parent}`, and this build asks for \
         --seed `{given}`; the new image keeps its parent's ids (its root filesystem is the \
         parent's): drop --seed or give `{parent}`"
    )]
    Seed {
        path: PathBuf,
        parent: String,
        given: String,
    },
    #[error(
        "--layout-from {path}: its disk is {parent_bytes} bytes and --size asks for {given_bytes}; \
         the new image keeps its parent's size: drop --size"
    )]
    Size {
        path: PathBuf,
        parent_bytes: u64,
        given_bytes: u64,
    },
    #[error("--layout-from {0}: the image has no partition named `root`")]
    NoRoot(PathBuf),
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

/// The parent image, read and checked before the build starts.
#[derive(Debug, Clone)]
pub struct Parent {
    pub image: PathBuf,
    /// The seed the parent's disk ids came from: the new image's too.
    pub seed: String,
    pub disk_bytes: u64,
    /// What the manifest records of the parent.
    pub record: LayoutParent,
    root: PartitionInfo,
}

impl Parent {
    /// Reads PARENT's partition table and manifest, checks it suits a build
    /// for `arch`, and digests its root partition.
    pub fn read(image: &Path, arch: &Architecture) -> Result<Self, LayoutFromError> {
        let info = inspect::read_image(image).map_err(|source| LayoutFromError::Inspect {
            path: image.to_path_buf(),
            source,
        })?;
        let seed = info
            .manifest
            .as_ref()
            .and_then(|m| m.seed.clone())
            .ok_or_else(|| LayoutFromError::NoSeed(image.to_path_buf()))?;
        if let Some(found) = &info.architecture
            && found.name != arch.name
        {
            return Err(LayoutFromError::Architecture {
                path: image.to_path_buf(),
                found: found.name.clone(),
                wanted: arch.name.clone(),
            });
        }
        let root = info
            .partitions
            .iter()
            .find(|p| p.name == ROOT_NAME)
            .cloned()
            .ok_or_else(|| LayoutFromError::NoRoot(image.to_path_buf()))?;
        let root_sha256 = digest_range(image, root.first_lba * SECTOR, root.size_bytes)?;
        Ok(Self {
            image: image.to_path_buf(),
            seed,
            disk_bytes: info.size_bytes,
            record: LayoutParent {
                image: image
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                root_sha256,
            },
            root,
        })
    }

    /// The seed for the new image: the parent's; `--seed` may only repeat it.
    pub fn seed_for(&self, given: Option<&str>) -> Result<String, LayoutFromError> {
        match given {
            Some(given) if given != self.seed => Err(LayoutFromError::Seed {
                path: self.image.clone(),
                parent: self.seed.clone(),
                given: given.to_string(),
            }),
            _ => Ok(self.seed.clone()),
        }
    }

    /// The disk size for the new image: the parent's; `--size` may only
    /// repeat it.
    pub fn disk_bytes_for(&self, given: Option<u64>) -> Result<u64, LayoutFromError> {
        match given {
            Some(given) if given != self.disk_bytes => Err(LayoutFromError::Size {
                path: self.image.clone(),
                parent_bytes: self.disk_bytes,
                given_bytes: given,
            }),
            _ => Ok(self.disk_bytes),
        }
    }

    fn root_offset(&self) -> u64 {
        self.root.first_lba * SECTOR
    }

    fn spec(&self) -> String {
        format!("{}?offset={}", self.image.display(), self.root_offset())
    }
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
    if parent.root_offset() != offset || parent.root.size_bytes != bytes {
        return Err(LayoutFromError::Extent {
            path: parent.image.clone(),
            parent_offset: parent.root_offset(),
            parent_bytes: parent.root.size_bytes,
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
        .arg(parent.spec())
        .run()?;
    let before = parent_entries(parent, dump)?;
    let after = tree_entries(tree)?;
    let xattr_dir = work.join("layout-xattrs");
    fs::create_dir_all(&xattr_dir).map_err(at("create", &xattr_dir))?;
    let (script, applied) = plan_script(&before, &after, tree, dump, &xattr_dir)?;
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

/// An entry of the parent's root filesystem.
#[derive(Debug, Clone, PartialEq)]
struct ParentEntry {
    inode: u64,
    /// st_mode, type bits included.
    mode: u32,
    uid: u32,
    gid: u32,
    /// From the dump (rdump keeps it); None for what rdump does not dump.
    mtime: Option<i64>,
    /// Extended attribute names (`ea_list`).
    xattrs: Vec<String>,
}

/// An entry of the new tree.
#[derive(Debug, Clone)]
struct TreeEntry {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    size: u64,
    rdev: u64,
    /// (device, inode): the same pair under two paths is a hard link.
    identity: (u64, u64),
    links: u64,
    xattrs: Vec<(String, Vec<u8>)>,
}

/// The parent's entries: `ls -p` of every folder the dump holds (inode,
/// mode, owner; device nodes included, which rdump skips), mtimes from the
/// dump, and `ea_list` of every entry.
fn parent_entries(
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
        .arg(parent.spec())
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
fn tree_entries(root: &Path) -> Result<BTreeMap<String, TreeEntry>, LayoutFromError> {
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

/// A path in debugfs's quotes.
fn quoted(path: &str) -> Result<String, LayoutFromError> {
    if path.contains(['"', '\n']) {
        return Err(LayoutFromError::Unquotable(path.to_string()));
    }
    Ok(format!("\"{path}\""))
}

fn depth(path: &str) -> usize {
    path.matches('/').count()
}

/// Whether the new tree's entry at `path` is the parent's as it stands
/// (same type, same content; metadata is set separately). A hard-linked
/// file is unchanged when the parent links the same paths, and only them,
/// to one inode. Device nodes and fifos are always made again (rdump does
/// not dump them to compare; making one again rewrites the same inode).
fn unchanged(
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
struct LinkCheck<'a> {
    new_groups: HashMap<(u64, u64), Vec<&'a str>>,
    before: &'a BTreeMap<String, ParentEntry>,
    old_uses: HashMap<u64, usize>,
}

impl<'a> LinkCheck<'a> {
    fn new(
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

/// The debugfs command file that turns the parent's tree into the new one:
/// removals deepest first, then creations parents first, then owners,
/// modes, mtimes, link counts and extended attributes.
fn plan_script(
    before: &BTreeMap<String, ParentEntry>,
    after: &BTreeMap<String, TreeEntry>,
    tree: &Path,
    dump: &Path,
    xattr_dir: &Path,
) -> Result<(String, Applied), LayoutFromError> {
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

    let mut script = String::new();
    let mut applied = Applied::default();
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

    let mut xattr_files = 0usize;
    let mut first_link: HashMap<(u64, u64), &str> = HashMap::new();
    let mut link_counts: Vec<(&str, u64)> = Vec::new();
    for (path, new) in after {
        if kept[path.as_str()] {
            applied.kept += 1;
            continue;
        }
        applied.written += 1;
        let q = quoted(path)?;
        match new.mode & S_IFMT {
            S_IFDIR => script.push_str(&format!("mkdir {q}\n")),
            S_IFREG => match first_link.get(&new.identity) {
                Some(first) => script.push_str(&format!("ln {} {q}\n", quoted(first)?)),
                None => {
                    let source = tree.join(path.trim_start_matches('/'));
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
                let source = tree.join(path.trim_start_matches('/'));
                let target = fs::read_link(&source).map_err(at("read the link", &source))?;
                script.push_str(&format!(
                    "symlink {q} {}\n",
                    quoted(&target.to_string_lossy())?
                ));
            }
            _ => {
                // mknod takes a name in the current folder, not a path.
                let (folder, name) = path.rsplit_once('/').expect("paths start with /");
                let folder = if folder.is_empty() { "/" } else { folder };
                let kind = match new.mode & S_IFMT {
                    0o020_000 => format!(
                        "c {} {}",
                        libc::major(new.rdev as libc::dev_t),
                        libc::minor(new.rdev as libc::dev_t)
                    ),
                    0o060_000 => format!(
                        "b {} {}",
                        libc::major(new.rdev as libc::dev_t),
                        libc::minor(new.rdev as libc::dev_t)
                    ),
                    _ => "p".to_string(),
                };
                script.push_str(&format!(
                    "cd {}\nmknod {} {kind}\ncd /\n",
                    quoted(folder)?,
                    quoted(name)?
                ));
            }
        }
    }

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
    for (path, links) in link_counts {
        script.push_str(&format!("sif {} links_count {links}\n", quoted(path)?));
    }
    Ok((script, applied))
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

/// sha256 of `bytes` bytes at `offset` of `path` (holes read as zeros).
fn digest_range(path: &Path, offset: u64, bytes: u64) -> Result<String, LayoutFromError> {
    let file = File::open(path).map_err(at("open", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < bytes {
        let n = ((bytes - done) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], offset + done)
            .map_err(at("read", path))?;
        hasher.update(&buf[..n]);
        done += n as u64;
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn names_debugfs_cannot_quote_are_refused() {
        assert!(quoted("/a b").is_ok());
        assert!(matches!(
            quoted("/a\"b"),
            Err(LayoutFromError::Unquotable(_))
        ));
    }
}
