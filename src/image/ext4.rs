//! ext4 inode times made reproducible after `mkfs.ext4 -d`.
//!
//! e2fsprogs 1.47.0 (Debian 12) copies each source file's atime and ctime
//! into its inode; a ctime cannot be set from user space, so it is the
//! moment the build wrote the file. (1.47.1 clamps them to
//! SOURCE_DATE_EPOCH; 1.47.0 does not.) This pass rewrites, for every
//! inode in use, atime, ctime and crtime to the epoch, clamps mtime to it,
//! zeroes the sub-second parts of what it set, and recomputes the inode's
//! metadata_csum checksum (crc32c), in place in the image file.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    #[error("reading or writing the ext4 filesystem")]
    Io(#[from] io::Error),
    #[error("not an ext4 filesystem at byte {0} (no superblock magic)")]
    NotExt4(u64),
    #[error("unsupported ext4 layout: {0}")]
    Unsupported(String),
}

const SUPERBLOCK_OFFSET: u64 = 1024;
const MAGIC: u16 = 0xEF53;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
const BG_INODE_UNINIT: u16 = 0x1;

// Inode field offsets (struct ext4_inode).
const I_ATIME: usize = 0x08;
const I_CTIME: usize = 0x0C;
const I_MTIME: usize = 0x10;
const I_GENERATION: usize = 0x64;
const I_CHECKSUM_LO: usize = 0x7C;
const I_EXTRA_ISIZE: usize = 0x80;
const I_CHECKSUM_HI: usize = 0x82;
const I_CTIME_EXTRA: usize = 0x84;
const I_MTIME_EXTRA: usize = 0x88;
const I_ATIME_EXTRA: usize = 0x8C;
const I_CRTIME: usize = 0x90;
const I_CRTIME_EXTRA: usize = 0x94;
/// The good old inode size: fields past it exist when i_extra_isize says so.
const GOOD_OLD_INODE_SIZE: usize = 128;

/// What the pass changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TimesFixed {
    pub inodes_seen: u64,
    pub inodes_rewritten: u64,
}

struct Superblock {
    inodes_per_group: u32,
    groups: u64,
    block_size: u64,
    inode_size: usize,
    first_data_block: u64,
    desc_size: usize,
    metadata_csum: bool,
    csum_seed: u32,
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

fn put_u32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}

impl Superblock {
    fn read(file: &File, fs_offset: u64) -> Result<Self, Ext4Error> {
        let mut sb = [0u8; 1024];
        file.read_exact_at(&mut sb, fs_offset + SUPERBLOCK_OFFSET)?;
        if u16_at(&sb, 0x38) != MAGIC {
            return Err(Ext4Error::NotExt4(fs_offset));
        }
        let blocks = u64::from(u32_at(&sb, 0x04));
        let incompat = u32_at(&sb, 0x60);
        let blocks = if incompat & INCOMPAT_64BIT != 0 {
            blocks | (u64::from(u32_at(&sb, 0x150)) << 32)
        } else {
            blocks
        };
        let first_data_block = u64::from(u32_at(&sb, 0x14));
        let blocks_per_group = u64::from(u32_at(&sb, 0x20));
        let inodes_per_group = u32_at(&sb, 0x28);
        let inode_size = usize::from(u16_at(&sb, 0x58));
        let log_block = u32_at(&sb, 0x18);
        if blocks_per_group == 0 || inodes_per_group == 0 || log_block > 6 || inode_size < 128 {
            return Err(Ext4Error::Unsupported("implausible superblock".into()));
        }
        let desc_size = if incompat & INCOMPAT_64BIT != 0 {
            usize::from(u16_at(&sb, 0xFE)).max(32)
        } else {
            32
        };
        let uuid = &sb[0x68..0x78];
        let csum_seed = if incompat & INCOMPAT_CSUM_SEED != 0 {
            u32_at(&sb, 0x270)
        } else {
            crc32c_raw(!0, uuid)
        };
        Ok(Self {
            inodes_per_group,
            groups: (blocks - first_data_block).div_ceil(blocks_per_group),
            block_size: 1024 << log_block,
            inode_size,
            first_data_block,
            desc_size,
            metadata_csum: u32_at(&sb, 0x64) & RO_COMPAT_METADATA_CSUM != 0,
            csum_seed,
        })
    }
}

/// Rewrites every in-use inode's times in the ext4 filesystem that starts
/// at byte `fs_offset` of `file` (see the module comment).
pub fn normalize_inode_times(
    file: &File,
    fs_offset: u64,
    epoch: u32,
) -> Result<TimesFixed, Ext4Error> {
    let sb = Superblock::read(file, fs_offset)?;
    let gdt_offset = fs_offset + (sb.first_data_block + 1) * sb.block_size;
    let mut gdt = vec![0u8; sb.groups as usize * sb.desc_size];
    file.read_exact_at(&mut gdt, gdt_offset)?;
    let mut fixed = TimesFixed::default();
    let table_bytes = sb.inodes_per_group as usize * sb.inode_size;
    let mut table = vec![0u8; table_bytes];
    let mut bitmap = vec![0u8; sb.block_size as usize];
    for group in 0..sb.groups as usize {
        let desc = &gdt[group * sb.desc_size..(group + 1) * sb.desc_size];
        let high = |o: usize| {
            if sb.desc_size >= 64 {
                u64::from(u32_at(desc, o)) << 32
            } else {
                0
            }
        };
        if u16_at(desc, 0x12) & BG_INODE_UNINIT != 0 {
            continue;
        }
        let bitmap_block = u64::from(u32_at(desc, 0x04)) | high(0x24);
        let table_block = u64::from(u32_at(desc, 0x08)) | high(0x28);
        file.read_exact_at(&mut bitmap, fs_offset + bitmap_block * sb.block_size)?;
        let table_at = fs_offset + table_block * sb.block_size;
        file.read_exact_at(&mut table, table_at)?;
        let mut changed = false;
        for index in 0..sb.inodes_per_group as usize {
            if bitmap[index / 8] & (1 << (index % 8)) == 0 {
                continue;
            }
            fixed.inodes_seen += 1;
            let number = group as u32 * sb.inodes_per_group + index as u32 + 1;
            let inode = &mut table[index * sb.inode_size..(index + 1) * sb.inode_size];
            if set_times(inode, epoch, number, &sb) {
                fixed.inodes_rewritten += 1;
                changed = true;
            }
        }
        if changed {
            file.write_all_at(&table, table_at)?;
        }
    }
    Ok(fixed)
}

/// Sets one inode's times; true when its bytes changed.
fn set_times(inode: &mut [u8], epoch: u32, number: u32, sb: &Superblock) -> bool {
    let before = inode.to_vec();
    let extra = if inode.len() > GOOD_OLD_INODE_SIZE {
        usize::from(u16_at(inode, I_EXTRA_ISIZE))
    } else {
        0
    };
    // A field past the good old size exists when i_extra_isize covers it.
    let has = |offset: usize, len: usize| offset + len <= GOOD_OLD_INODE_SIZE + extra;
    let mtime_clamped = u32_at(inode, I_MTIME) > epoch;
    put_u32(inode, I_ATIME, epoch);
    put_u32(inode, I_CTIME, epoch);
    if mtime_clamped {
        put_u32(inode, I_MTIME, epoch);
    }
    if has(I_CTIME_EXTRA, 4) {
        put_u32(inode, I_CTIME_EXTRA, 0);
    }
    if has(I_MTIME_EXTRA, 4) && mtime_clamped {
        put_u32(inode, I_MTIME_EXTRA, 0);
    }
    if has(I_ATIME_EXTRA, 4) {
        put_u32(inode, I_ATIME_EXTRA, 0);
    }
    if has(I_CRTIME, 4) {
        put_u32(inode, I_CRTIME, epoch);
    }
    if has(I_CRTIME_EXTRA, 4) {
        put_u32(inode, I_CRTIME_EXTRA, 0);
    }
    if inode[..] == before[..] {
        return false;
    }
    if sb.metadata_csum {
        let has_hi = has(I_CHECKSUM_HI, 2);
        inode[I_CHECKSUM_LO..I_CHECKSUM_LO + 2].fill(0);
        if has_hi {
            inode[I_CHECKSUM_HI..I_CHECKSUM_HI + 2].fill(0);
        }
        let generation = u32_at(inode, I_GENERATION);
        let mut crc = crc32c_raw(sb.csum_seed, &number.to_le_bytes());
        crc = crc32c_raw(crc, &generation.to_le_bytes());
        crc = crc32c_raw(crc, inode);
        inode[I_CHECKSUM_LO..I_CHECKSUM_LO + 2].copy_from_slice(&(crc as u16).to_le_bytes());
        if has_hi {
            inode[I_CHECKSUM_HI..I_CHECKSUM_HI + 2]
                .copy_from_slice(&((crc >> 16) as u16).to_le_bytes());
        }
    }
    true
}

/// CRC-32C (Castagnoli) as e2fsprogs' `ext2fs_crc32c_le`: no final
/// inversion, the caller gives the starting value.
fn crc32c_raw(mut crc: u32, bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82F6_3B78
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    for &b in bytes {
        crc = TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // CRC-32C("123456789") = 0xE3069283 with the usual inversions.
        assert_eq!(!crc32c_raw(!0, b"123456789"), 0xE306_9283);
    }

    /// A real mkfs.ext4 -d at an offset, then the pass: e2fsck finds the
    /// checksums good, and debugfs reads the new times.
    #[test]
    fn times_are_rewritten_and_e2fsck_agrees() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("etc")).unwrap();
        std::fs::write(src.join("etc/hostname"), "h\n").unwrap();
        let image = dir.path().join("disk.raw");
        let offset = 1u64 << 20;
        File::create(&image)
            .unwrap()
            .set_len(offset + (32 << 20))
            .unwrap();
        let status = Command::new("mkfs.ext4")
            .args(["-F", "-q", "-E"])
            .arg(format!("offset={offset}"))
            .arg("-d")
            .arg(&src)
            .arg(&image)
            .arg("32768k")
            .status()
            .expect("mkfs.ext4 runs (e2fsprogs)");
        assert!(status.success());
        let file = File::options().read(true).write(true).open(&image).unwrap();
        let epoch = 1_600_000_000;
        let fixed = normalize_inode_times(&file, offset, epoch).unwrap();
        assert!(fixed.inodes_seen >= 13, "{fixed:?}");
        assert!(fixed.inodes_rewritten >= 3, "{fixed:?}");
        // Again: nothing left to change.
        let again = normalize_inode_times(&file, offset, epoch).unwrap();
        assert_eq!(again.inodes_rewritten, 0);

        // Copy the filesystem out for e2fsck and debugfs (no offset option).
        let fs_only = dir.path().join("fs.raw");
        let mut bytes = std::fs::read(&image).unwrap();
        bytes.drain(..offset as usize);
        std::fs::write(&fs_only, bytes).unwrap();
        let fsck = Command::new("e2fsck")
            .arg("-fn")
            .arg(&fs_only)
            .output()
            .unwrap();
        assert!(
            fsck.status.success(),
            "{}",
            String::from_utf8_lossy(&fsck.stdout)
        );
        let stat = Command::new("debugfs")
            .args(["-R", "stat /etc/hostname"])
            .arg(&fs_only)
            .output()
            .unwrap();
        let stat = String::from_utf8_lossy(&stat.stdout);
        // 1600000000 is 2020-09-13 12:26:40 UTC.
        for field in ["ctime", "atime", "mtime", "crtime"] {
            let line = stat
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{field}:")))
                .unwrap_or_else(|| panic!("no {field} in {stat}"));
            assert!(line.contains("0x5f5e1000:00000000"), "{line}");
        }
    }
}
