//! `imgforge diff A B`: what differs between two raw images, for anyone
//! chasing an input that makes builds differ. Three levels: the partition
//! tables; the 512 KiB blocks (EBS's block size: what a delta upload would
//! send) per partition; and, in a partition whose blocks differ, the files
//! (ext4 through `debugfs rdump` into a temporary folder, no mount; FAT
//! read in-process).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::esp::PartitionSlice;
use super::inspect::{self, ImageInfo, InspectError, PartitionInfo};
use super::sparse;
use crate::sys::tool::{Tool, ToolError};

/// EBS's block: what `imgforge upload` sends and what a delta re-sends.
pub const BLOCK: u64 = 524_288;
const SECTOR: u64 = 512;
const EXT4_MAGIC_OFFSET: u64 = 1024 + 0x38;
const EXT4_MAGIC: [u8; 2] = [0x53, 0xEF];

#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error(transparent)]
    Inspect(#[from] InspectError),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "debugfs could not read the ext4 file system of partition {partition} in {image}: {detail}"
    )]
    Ext4 {
        image: PathBuf,
        partition: u32,
        detail: String,
    },
}

fn io_at(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DiffError {
    let path = path.to_path_buf();
    move |source| DiffError::Io {
        action,
        path,
        source,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ImageDiff {
    pub a: PathBuf,
    pub b: PathBuf,
    /// Nothing differs: same size, same bytes.
    pub identical: bool,
    /// Disk-level differences: size, disk GUID, partition entries.
    pub table: Vec<Difference>,
    /// 512 KiB blocks that are not all zero in A or in B.
    pub data_blocks: u64,
    /// 512 KiB blocks whose bytes differ.
    pub differing_blocks: u64,
    /// One per partition of A, then what lies outside them (MBR boot code,
    /// GPT), in disk order.
    pub regions: Vec<RegionDiff>,
}

/// One field that differs, with both values.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Difference {
    pub what: String,
    pub a: String,
    pub b: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RegionDiff {
    /// The partition's name, or `outside partitions`.
    pub name: String,
    /// The partition number in A (None for the space outside partitions).
    pub number: Option<u32>,
    /// `ext4`, `vfat`, or None when neither is recognised.
    pub filesystem: Option<String>,
    pub blocks: u64,
    pub data_blocks: u64,
    pub differing_blocks: u64,
    /// Indices (offset / 512 KiB, from the start of the disk) of the
    /// differing blocks.
    pub differing_block_indices: Vec<u64>,
    /// Files that differ; None when not compared (the blocks are the same,
    /// or the file system is unknown to diff).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<FileDiff>>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FileDiff {
    /// Path inside the file system, from its root (`/etc/fstab`).
    pub path: String,
    /// What differs: `only in A`, `only in B`, `type`, `content`, `size`,
    /// `mode`, `owner`, `mtime`, `link target`, `xattrs`.
    pub changes: Vec<Difference>,
}

/// Compares two images (see the module comment).
pub fn diff(a: &Path, b: &Path) -> Result<ImageDiff, DiffError> {
    let info_a = inspect::read_image(a)?;
    let info_b = inspect::read_image(b)?;
    let table = table_differences(&info_a, &info_b);
    let file_a = File::open(a).map_err(io_at("open", a))?;
    let file_b = File::open(b).map_err(io_at("open", b))?;
    let mut regions = regions_of(&info_a);
    let (data_blocks, differing_blocks) =
        compare_blocks(&file_a, &info_a, &file_b, &info_b, &mut regions)?;
    for region in &mut regions {
        let Some(number) = region.number else {
            continue;
        };
        let (Some(pa), Some(pb)) = (partition(&info_a, number), partition(&info_b, number)) else {
            continue;
        };
        region.filesystem = match (filesystem_of(&file_a, pa), filesystem_of(&file_b, pb)) {
            (Some(x), Some(y)) if x == y => Some(x.to_string()),
            _ => None,
        };
        if region.differing_blocks == 0 {
            continue;
        }
        region.files = match region.filesystem.as_deref() {
            Some("ext4") => Some(diff_ext4(a, pa, b, pb)?),
            Some("vfat") => Some(diff_fat(&file_a, pa, &file_b, pb)),
            _ => None,
        };
    }
    Ok(ImageDiff {
        a: a.to_path_buf(),
        b: b.to_path_buf(),
        identical: table.is_empty() && differing_blocks == 0,
        table,
        data_blocks,
        differing_blocks,
        regions,
    })
}

fn partition(info: &ImageInfo, number: u32) -> Option<&PartitionInfo> {
    info.partitions.iter().find(|p| p.number == number)
}

fn table_differences(a: &ImageInfo, b: &ImageInfo) -> Vec<Difference> {
    let mut out = Vec::new();
    let mut check = |what: String, x: String, y: String| {
        if x != y {
            out.push(Difference { what, a: x, b: y });
        }
    };
    check(
        "size in bytes".into(),
        a.size_bytes.to_string(),
        b.size_bytes.to_string(),
    );
    check("disk GUID".into(), a.disk_guid.clone(), b.disk_guid.clone());
    let numbers: BTreeSet<u32> = a
        .partitions
        .iter()
        .chain(&b.partitions)
        .map(|p| p.number)
        .collect();
    for number in numbers {
        let label = |field: &str| format!("partition {number} {field}");
        match (partition(a, number), partition(b, number)) {
            (Some(x), Some(y)) => {
                check(label("name"), x.name.clone(), y.name.clone());
                check(label("type"), x.type_guid.clone(), y.type_guid.clone());
                check(
                    label("GUID"),
                    x.partition_guid.clone(),
                    y.partition_guid.clone(),
                );
                check(
                    label("LBA range"),
                    format!("{}-{}", x.first_lba, x.last_lba),
                    format!("{}-{}", y.first_lba, y.last_lba),
                );
            }
            (x, y) => check(
                label("entry"),
                x.map_or("absent".into(), |p| p.name.clone()),
                y.map_or("absent".into(), |p| p.name.clone()),
            ),
        }
    }
    out
}

/// A's partitions in disk order, then the rest of the disk.
fn regions_of(info: &ImageInfo) -> Vec<RegionDiff> {
    let mut partitions = info.partitions.clone();
    partitions.sort_by_key(|p| p.first_lba);
    let region = |name: String, number: Option<u32>| RegionDiff {
        name,
        number,
        filesystem: None,
        blocks: 0,
        data_blocks: 0,
        differing_blocks: 0,
        differing_block_indices: Vec::new(),
        files: None,
    };
    let mut regions: Vec<RegionDiff> = partitions
        .iter()
        .map(|p| region(p.name.clone(), Some(p.number)))
        .collect();
    regions.push(region("outside partitions".into(), None));
    regions
}

/// Which region a block belongs to: the partition holding its first byte.
fn region_index(info: &ImageInfo, regions: &[RegionDiff], block: u64) -> usize {
    let sector = block * BLOCK / SECTOR;
    info.partitions
        .iter()
        .find(|p| (p.first_lba..=p.last_lba).contains(&sector))
        .and_then(|p| regions.iter().position(|r| r.number == Some(p.number)))
        .unwrap_or(regions.len() - 1)
}

/// Compares the two files block by block (holes in both are skipped
/// without reading); returns (data blocks, differing blocks).
fn compare_blocks(
    file_a: &File,
    info_a: &ImageInfo,
    file_b: &File,
    info_b: &ImageInfo,
    regions: &mut [RegionDiff],
) -> Result<(u64, u64), DiffError> {
    let extents_a = sparse::data_extents(file_a, info_a.size_bytes)
        .map_err(io_at("find the data in", &info_a.path))?;
    let extents_b = sparse::data_extents(file_b, info_b.size_bytes)
        .map_err(io_at("find the data in", &info_b.path))?;
    let blocks = info_a.size_bytes.max(info_b.size_bytes).div_ceil(BLOCK);
    let mut buf_a = vec![0u8; BLOCK as usize];
    let mut buf_b = vec![0u8; BLOCK as usize];
    let (mut data, mut differing) = (0, 0);
    for block in 0..blocks {
        let range = block * BLOCK..(block + 1) * BLOCK;
        let region = region_index(info_a, regions, block);
        regions[region].blocks += 1;
        let has_a = overlaps(&extents_a, &range);
        let has_b = overlaps(&extents_b, &range);
        if !has_a && !has_b {
            continue;
        }
        read_block(file_a, info_a, has_a, range.start, &mut buf_a)?;
        read_block(file_b, info_b, has_b, range.start, &mut buf_b)?;
        let zero_a = buf_a.iter().all(|b| *b == 0);
        let zero_b = buf_b.iter().all(|b| *b == 0);
        if zero_a && zero_b {
            continue;
        }
        data += 1;
        regions[region].data_blocks += 1;
        if buf_a != buf_b {
            differing += 1;
            regions[region].differing_blocks += 1;
            regions[region].differing_block_indices.push(block);
        }
    }
    Ok((data, differing))
}

fn overlaps(extents: &[std::ops::Range<u64>], range: &std::ops::Range<u64>) -> bool {
    extents
        .iter()
        .any(|e| e.start < range.end && range.start < e.end)
}

/// One block; zeros past the end of the file or in a hole.
fn read_block(
    file: &File,
    info: &ImageInfo,
    has_data: bool,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), DiffError> {
    buf.fill(0);
    if !has_data || offset >= info.size_bytes {
        return Ok(());
    }
    let len = (info.size_bytes - offset).min(BLOCK) as usize;
    file.read_exact_at(&mut buf[..len], offset)
        .map_err(io_at("read", &info.path))
}

fn filesystem_of(file: &File, p: &PartitionInfo) -> Option<&'static str> {
    let start = p.first_lba * SECTOR;
    let mut magic = [0u8; 2];
    if file
        .read_exact_at(&mut magic, start + EXT4_MAGIC_OFFSET)
        .is_ok()
        && magic == EXT4_MAGIC
    {
        return Some("ext4");
    }
    let mut boot = [0u8; 512];
    file.read_exact_at(&mut boot, start).ok()?;
    let fat = &boot[0x52..0x57] == b"FAT32" || &boot[0x36..0x39] == b"FAT";
    (fat && boot[510..] == [0x55, 0xAA]).then_some("vfat")
}

/// What is compared about one file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    owner: String,
    size: u64,
    mtime: i64,
    link_target: Option<String>,
    digest: Option<String>,
    xattrs: String,
}

fn compare_entries(a: &BTreeMap<String, Entry>, b: &BTreeMap<String, Entry>) -> Vec<FileDiff> {
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

/// The files of an ext4 partition: `debugfs rdump` of the whole tree into
/// a temporary folder (owners, modes and mtimes kept; device nodes and
/// sockets are not dumped; symlinks' own times are lost), then `ea_list` for each path in one debugfs run.
fn ext4_entries(image: &Path, p: &PartitionInfo) -> Result<BTreeMap<String, Entry>, DiffError> {
    let spec = format!("{}?offset={}", image.display(), p.first_lba * SECTOR);
    let dump = tempfile::Builder::new()
        .prefix("imgforge-diff-")
        .tempdir()
        .map_err(io_at("create a temporary folder in", &std::env::temp_dir()))?;
    Tool::new("debugfs")
        .arg("-R")
        .arg(format!("rdump / \"{}\"", dump.path().display()))
        .arg(&spec)
        .run()?;
    let mut entries = BTreeMap::new();
    walk_dump(dump.path(), dump.path(), &mut entries)?;
    if entries.is_empty() {
        return Err(DiffError::Ext4 {
            image: image.to_path_buf(),
            partition: p.number,
            detail: "rdump wrote nothing".into(),
        });
    }
    let xattrs = ext4_xattrs(&spec, entries.keys())?;
    for (path, text) in xattrs {
        if let Some(entry) = entries.get_mut(&path) {
            entry.xattrs = text;
        }
    }
    Ok(entries)
}

fn walk_dump(
    root: &Path,
    dir: &Path,
    entries: &mut BTreeMap<String, Entry>,
) -> Result<(), DiffError> {
    for item in fs::read_dir(dir).map_err(io_at("read", dir))? {
        let path = item.map_err(io_at("read", dir))?.path();
        let meta = fs::symlink_metadata(&path).map_err(io_at("stat", &path))?;
        let relative = format!(
            "/{}",
            path.strip_prefix(root).unwrap_or(&path).to_string_lossy()
        );
        let kind = if meta.is_dir() {
            "directory"
        } else if meta.file_type().is_symlink() {
            "symlink"
        } else {
            "file"
        };
        let link_target = meta
            .file_type()
            .is_symlink()
            .then(|| fs::read_link(&path).map(|t| t.to_string_lossy().into_owned()))
            .transpose()
            .map_err(io_at("read link", &path))?;
        let digest = if meta.is_file() {
            Some(file_digest(&path)?)
        } else {
            None
        };
        entries.insert(
            relative,
            Entry {
                kind,
                mode: meta.mode() & 0o7777,
                owner: format!("{}:{}", meta.uid(), meta.gid()),
                // A directory's size depends on how its entries were added.
                size: if meta.is_dir() { 0 } else { meta.size() },
                // rdump creates symlinks with the time of the dump and cannot
                // set their times: a symlink's mtime is not compared.
                mtime: if meta.file_type().is_symlink() {
                    0
                } else {
                    meta.mtime()
                },
                link_target,
                digest,
                xattrs: String::new(),
            },
        );
        if meta.is_dir() {
            walk_dump(root, &path, entries)?;
        }
    }
    Ok(())
}

fn file_digest(path: &Path) -> Result<String, DiffError> {
    let mut file = File::open(path).map_err(io_at("open", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(io_at("read", path))?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

/// `ea_list PATH` for every path, in one debugfs run; paths debugfs cannot
/// quote (a `"` or a line break) are left out.
fn ext4_xattrs<'a>(
    spec: &str,
    paths: impl Iterator<Item = &'a String>,
) -> Result<BTreeMap<String, String>, DiffError> {
    let mut script = tempfile::NamedTempFile::new()
        .map_err(io_at("create a temporary file in", &std::env::temp_dir()))?;
    let mut commands = String::new();
    for path in paths.filter(|p| !p.contains(['"', '\n'])) {
        commands.push_str(&format!("ea_list \"{path}\"\n"));
    }
    std::io::Write::write_all(&mut script, commands.as_bytes())
        .map_err(io_at("write", script.path()))?;
    let output = Tool::new("debugfs")
        .arg("-f")
        .arg(script.path())
        .arg(spec)
        .run()?;
    Ok(parse_ea_lists(&String::from_utf8_lossy(&output.stdout)))
}

/// debugfs echoes each command as `debugfs: ea_list "PATH"` before its
/// output; a path with no attributes prints nothing after it.
fn parse_ea_lists(text: &str) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("debugfs: ea_list ") {
            current = Some(rest.trim().trim_matches('"').to_string());
            continue;
        }
        if let Some(path) = &current {
            let text = out.entry(path.clone()).or_default();
            text.push_str(line.trim());
            text.push('\n');
        }
    }
    out
}

fn diff_ext4(
    a: &Path,
    pa: &PartitionInfo,
    b: &Path,
    pb: &PartitionInfo,
) -> Result<Vec<FileDiff>, DiffError> {
    Ok(compare_entries(
        &ext4_entries(a, pa)?,
        &ext4_entries(b, pb)?,
    ))
}

fn diff_fat(file_a: &File, pa: &PartitionInfo, file_b: &File, pb: &PartitionInfo) -> Vec<FileDiff> {
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

/// Runs of consecutive indices as `a-b`, for the text report.
pub fn ranges(indices: &[u64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = indices.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end = iter.next().expect("peeked");
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

impl ImageDiff {
    /// The report for people: what differs, level by level.
    pub fn render(&self, max_files: usize) -> String {
        let mut out = String::new();
        if self.identical {
            out.push_str(&format!(
                "identical: {} and {} have the same bytes ({} data blocks of 512 KiB)\n",
                self.a.display(),
                self.b.display(),
                self.data_blocks
            ));
            return out;
        }
        out.push_str(&format!(
            "{} of {} data blocks of 512 KiB differ ({:.1} %)\n",
            self.differing_blocks,
            self.data_blocks,
            percent(self.differing_blocks, self.data_blocks)
        ));
        if !self.table.is_empty() {
            out.push_str("\npartition table:\n");
            for d in &self.table {
                out.push_str(&format!("  {}: {} -> {}\n", d.what, d.a, d.b));
            }
        }
        for region in &self.regions {
            out.push_str(&format!(
                "\n{}{}{}: {} of {} data blocks differ",
                region.name,
                region
                    .number
                    .map(|n| format!(" (partition {n})"))
                    .unwrap_or_default(),
                region
                    .filesystem
                    .as_deref()
                    .map(|f| format!(", {f}"))
                    .unwrap_or_default(),
                region.differing_blocks,
                region.data_blocks
            ));
            if region.differing_blocks > 0 {
                out.push_str(&format!(
                    " (blocks {})",
                    ranges(&region.differing_block_indices)
                ));
            }
            out.push('\n');
            let Some(files) = &region.files else {
                continue;
            };
            if files.is_empty() {
                out.push_str("  no file differs (only metadata: inodes, allocation, journal)\n");
            }
            for file in files.iter().take(max_files) {
                let what: Vec<String> = file
                    .changes
                    .iter()
                    .map(|c| {
                        if c.a.is_empty() && c.b.is_empty() {
                            c.what.clone()
                        } else if c.what == "content" {
                            "content".to_string()
                        } else {
                            format!("{} {} -> {}", c.what, c.a, c.b)
                        }
                    })
                    .collect();
                out.push_str(&format!("  {}: {}\n", file.path, what.join("; ")));
            }
            if files.len() > max_files {
                out.push_str(&format!(
                    "  ... and {} more (--max-files, or --json for all)\n",
                    files.len() - max_files
                ));
            }
        }
        out
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_runs_are_compressed() {
        assert_eq!(ranges(&[1, 2, 3, 7, 9, 10]), "1-3,7,9-10");
        assert_eq!(ranges(&[]), "");
    }

    #[test]
    fn ea_list_output_is_split_per_path() {
        let text = "debugfs: ea_list \"/a\"\ndebugfs: ea_list \"/usr/bin/ping\"\n\
                    Extended attributes:\n  security.capability (20)\n\
                    debugfs: ea_list \"/b\"\n";
        let parsed = parse_ea_lists(text);
        assert!(!parsed.contains_key("/a"));
        assert!(parsed["/usr/bin/ping"].contains("security.capability"));
    }

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
