//! `imgforge diff A B`: what differs between two raw images, for anyone
//! chasing an input that makes builds differ. Three levels: the partition
//! tables; the 512 KiB blocks (EBS's block size: what a delta upload would
//! send) per partition; and, in a partition whose blocks differ, the files
//! (ext4 through `debugfs rdump` into a temporary folder, no mount; FAT
//! read in-process).
//!
//! The levels live in their own files: [`blocks`] (the block comparison and
//! file system detection), [`files`] (what is compared about a file, and
//! FAT), [`debugfs`] (ext4 trees) and [`render`] (the text report).

mod blocks;
mod debugfs;
mod files;
mod render;

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::inspect::{self, ImageInfo, InspectError, PartitionInfo};
use super::layout::SECTOR;
use crate::sys::tool::ToolError;

pub use render::ranges;

/// EBS's block: what `imgforge upload` sends and what a delta re-sends.
pub const BLOCK: u64 = 524_288;

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
    let mut regions = blocks::regions_of(&info_a);
    let (data_blocks, differing_blocks) =
        blocks::compare_blocks(&file_a, &info_a, &file_b, &info_b, &mut regions)?;
    for region in &mut regions {
        let Some(number) = region.number else {
            continue;
        };
        let (Some(pa), Some(pb)) = (partition(&info_a, number), partition(&info_b, number)) else {
            continue;
        };
        region.filesystem = match (
            blocks::filesystem_of(&file_a, pa),
            blocks::filesystem_of(&file_b, pb),
        ) {
            (Some(x), Some(y)) if x == y => Some(x.to_string()),
            _ => None,
        };
        if region.differing_blocks == 0 {
            continue;
        }
        region.files = match region.filesystem.as_deref() {
            Some("ext4") => Some(debugfs::diff_ext4(a, pa, b, pb)?),
            Some("vfat") => Some(files::diff_fat(&file_a, pa, &file_b, pb)),
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
