//! The block level of `imgforge diff`: each image read in 512 KiB blocks
//! (EBS's block, what a delta upload re-sends), holes skipped, each block
//! counted in the region (partition, or the space outside them) that holds
//! its first byte; and which file system a partition holds.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::{BLOCK, DiffError, RegionDiff, SECTOR, io_at};
use crate::image::inspect::{ImageInfo, PartitionInfo};
use crate::image::sparse;

const EXT4_MAGIC_OFFSET: u64 = 1024 + 0x38;
const EXT4_MAGIC: [u8; 2] = [0x53, 0xEF];

/// A's partitions in disk order, then the rest of the disk.
pub(super) fn regions_of(info: &ImageInfo) -> Vec<RegionDiff> {
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
pub(super) fn compare_blocks(
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

pub(super) fn filesystem_of(file: &File, p: &PartitionInfo) -> Option<&'static str> {
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
