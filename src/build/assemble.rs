//! Stage 5, assemble: the disk image file. A sparse file, a GPT (BIOS boot
//! where the architecture has a BIOS, EFI system, root of the
//! architecture's type), a FAT ESP written in-process, an ext4 root made from
//! the directory by `mkfs.ext4 -d` at the partition's offset, and the BIOS
//! boot code. No loop device and no mount.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;
use uuid::Uuid;

use super::bootloader::{self, BootFiles};
use super::bootstrap::Rootfs;
use super::context::BuildContext;
use super::layout_from::{self, LayoutFromError};
use crate::image::{esp, ext4, ids};
use crate::platform::Architecture;
use crate::sys::fsio::{PathError, at};
use crate::sys::tool::{Tool, ToolError};

pub const SECTOR: u64 = 512;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Partitions start on 1 MiB boundaries.
const ALIGN: u64 = MIB;
/// The backup GPT: 32 sectors of entries and its header.
const GPT_BACKUP_SECTORS: u64 = 33;

pub const TYPE_BIOS_BOOT: &str = "21686148-6449-6E6F-744E-656564454649";
pub const TYPE_ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// Discoverable Partitions Specification: root partition, x86-64 (each
/// architecture's is in boot/architectures.toml).
pub const TYPE_ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";

/// The partitions in disk order (the slots [`BIOS_BOOT`], [`ESP`], [`ROOT`]);
/// the root takes the rest of the disk. [`partitions`] gives an
/// architecture's.
#[derive(Debug, Clone, Copy)]
pub struct PartitionSpec {
    pub name: &'static str,
    pub type_guid: &'static str,
    /// None: the rest of the disk.
    pub size: Option<u64>,
    pub filesystem: Option<&'static str>,
}

pub const PARTITIONS: [PartitionSpec; 3] = [
    PartitionSpec {
        name: "bios-boot",
        type_guid: TYPE_BIOS_BOOT,
        size: Some(MIB),
        filesystem: None,
    },
    PartitionSpec {
        name: "esp",
        type_guid: TYPE_ESP,
        size: Some(100 * MIB),
        filesystem: Some("vfat"),
    },
    PartitionSpec {
        name: "root",
        type_guid: TYPE_ROOT_X86_64,
        size: None,
        filesystem: Some("ext4"),
    },
];
pub const BIOS_BOOT: usize = 0;
pub const ESP: usize = 1;
pub const ROOT: usize = 2;

/// The partitions of an image for `arch`, with their slots: no BIOS boot
/// partition where there is no BIOS, the root partition of the
/// architecture's type.
pub fn partitions(arch: &'static Architecture) -> Vec<(usize, PartitionSpec)> {
    PARTITIONS
        .iter()
        .copied()
        .enumerate()
        .filter(|(slot, _)| *slot != BIOS_BOOT || arch.bios)
        .map(|(slot, spec)| match slot {
            ROOT => (
                slot,
                PartitionSpec {
                    type_guid: &arch.root_type,
                    ..spec
                },
            ),
            _ => (slot, spec),
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    Io(#[from] PathError),
    #[error("cannot understand size `{0}`: use a number with a unit, e.g. 4G, 8GiB, 2048M")]
    BadSize(String),
    #[error(
        "--size {given} is too small: the root filesystem needs {needed_mib} MiB, so the image needs at least {min}; \
         pass --size {min} or more"
    )]
    TooSmall {
        given: String,
        needed_mib: u64,
        min: String,
    },
    #[error("writing the partition table: {0}")]
    Gpt(String),
    #[error(transparent)]
    Esp(#[from] esp::EspError),
    #[error(transparent)]
    Bootloader(#[from] bootloader::BootloaderError),
    #[error("making the root filesystem's inode times reproducible")]
    Ext4(#[from] ext4::Ext4Error),
    #[error("SOURCE_DATE_EPOCH {0} is past 2106: ext4 and FAT cannot store it")]
    EpochTooLate(u64),
    #[error(
        "the tree needs a {needed} disk and --layout-from {parent}'s is {given}: build without \
         --layout-from (a new, bigger layout)"
    )]
    ParentTooSmall {
        parent: PathBuf,
        given: String,
        needed: String,
    },
    #[error("laying the root filesystem out on the parent's")]
    LayoutFrom(#[from] LayoutFromError),
}

/// The identities written into the disk, chosen before the rootfs is
/// configured because fstab and grub.cfg name them.
#[derive(Debug, Clone)]
pub struct DiskIds {
    pub disk_guid: Uuid,
    pub partition_guids: [Uuid; 3],
    pub root_fs_uuid: Uuid,
    /// ext4's directory hash seed (`-E hash_seed=`).
    pub root_hash_seed: Uuid,
    pub esp_volume_id: u32,
}

impl DiskIds {
    /// Every id derived from `seed` (see [`crate::image::ids`] for the
    /// derivation, which is fixed across imgforge versions).
    pub fn from_seed(seed: &str) -> Self {
        let partition = |i: usize| {
            ids::derive_uuid(
                seed,
                &format!("{}{}", ids::PURPOSE_PARTITION_PREFIX, PARTITIONS[i].name),
            )
        };
        Self {
            disk_guid: ids::derive_uuid(seed, ids::PURPOSE_DISK),
            partition_guids: [partition(0), partition(1), partition(2)],
            root_fs_uuid: ids::derive_uuid(seed, ids::PURPOSE_ROOT_FS),
            root_hash_seed: ids::derive_uuid(seed, ids::PURPOSE_ROOT_HASH_SEED),
            esp_volume_id: ids::derive_u32(seed, ids::PURPOSE_ESP_VOLUME_ID),
        }
    }

    /// The ESP's volume serial the way blkid and fstab spell it: `ABCD-1234`.
    pub fn esp_volume_label(&self) -> String {
        let id = self.esp_volume_id;
        format!("{:04X}-{:04X}", id >> 16, id & 0xffff)
    }
}

#[derive(Debug, Clone, Copy)]
pub enum ImageSize {
    Auto,
    Fixed(u64),
}

/// `4G`, `4GiB`, `512M`, `1T`, or plain bytes; units are powers of two.
pub fn parse_size(text: &str) -> Result<u64, AssembleError> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| AssembleError::BadSize(text.into()))?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(AssembleError::BadSize(text.into())),
    };
    number
        .checked_mul(1 << shift)
        .filter(|n| *n > 0)
        .ok_or_else(|| AssembleError::BadSize(text.into()))
}

/// One partition on the disk.
#[derive(Debug, Clone)]
pub struct PlacedPartition {
    /// Its slot in [`PARTITIONS`] ([`BIOS_BOOT`], [`ESP`], [`ROOT`]).
    pub slot: usize,
    pub spec: PartitionSpec,
    pub first_lba: u64,
    pub last_lba: u64,
}

/// Where every partition goes.
#[derive(Debug, Clone)]
pub struct DiskLayout {
    pub disk_bytes: u64,
    /// The partitions in disk order; GPT numbers them from 1.
    pub partitions: Vec<PlacedPartition>,
    pub ids: DiskIds,
}

impl DiskLayout {
    /// The partition in `slot`, if the disk has one.
    pub fn get(&self, slot: usize) -> Option<&PlacedPartition> {
        self.partitions.iter().find(|p| p.slot == slot)
    }

    fn placed(&self, slot: usize) -> &PlacedPartition {
        self.get(slot)
            .expect("every layout has an ESP and a root; BIOS boot is checked by callers")
    }

    pub fn offset(&self, slot: usize) -> u64 {
        self.placed(slot).first_lba * SECTOR
    }

    pub fn bytes(&self, slot: usize) -> u64 {
        let p = self.placed(slot);
        (p.last_lba - p.first_lba + 1) * SECTOR
    }
}

/// Lays `arch`'s partitions out on a disk of `disk_bytes`.
pub fn layout(disk_bytes: u64, ids: DiskIds, arch: &'static Architecture) -> DiskLayout {
    let mut placed = Vec::new();
    let mut next = ALIGN;
    let last_usable = disk_bytes / SECTOR - GPT_BACKUP_SECTORS - 1;
    for (slot, spec) in partitions(arch) {
        let first = next / SECTOR;
        let last = match spec.size {
            Some(size) => first + size / SECTOR - 1,
            // Keep the root's size a multiple of 1 MiB (ext4 blocks).
            None => first + ((last_usable + 1 - first) * SECTOR / ALIGN * ALIGN) / SECTOR - 1,
        };
        placed.push(PlacedPartition {
            slot,
            spec,
            first_lba: first,
            last_lba: last,
        });
        next = (last + 1) * SECTOR;
    }
    DiskLayout {
        disk_bytes,
        partitions: placed,
        ids,
    }
}

/// Bytes the root filesystem needs: file data in 4 KiB blocks, inodes and
/// a margin for ext4's metadata and journal.
pub fn root_bytes_needed(dir: &Path) -> u64 {
    let (blocks, inodes) = usage(dir);
    let data = blocks * 4096 + inodes * 256;
    data + data / 10 + 96 * MIB
}

fn usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut blocks = 0;
    let mut inodes = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(entries) = fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let Ok(meta) = entry.metadata() else { continue };
            inodes += 1;
            blocks += meta.size().div_ceil(4096);
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    (blocks, inodes)
}

/// Fixes the disk size (checking `--size`) and the partition extents.
pub fn plan(ctx: &BuildContext, rootfs: &Rootfs) -> Result<DiskLayout, AssembleError> {
    let needed = root_bytes_needed(&rootfs.dir);
    let arch = ctx.request.architecture;
    let fixed: u64 = ALIGN
        + partitions(arch)
            .iter()
            .filter_map(|(_, p)| p.size)
            .sum::<u64>()
        + ALIGN;
    let minimum = fixed + needed;
    if let Some(parent) = &ctx.parent {
        if parent.disk_bytes < minimum {
            return Err(AssembleError::ParentTooSmall {
                parent: parent.image.clone(),
                given: human(parent.disk_bytes),
                needed: human(minimum.div_ceil(MIB) * MIB),
            });
        }
        return Ok(layout(parent.disk_bytes, ctx.ids.clone(), arch));
    }
    let disk_bytes = match ctx.request.image_size {
        ImageSize::Fixed(bytes) if bytes < minimum => {
            return Err(AssembleError::TooSmall {
                given: human(bytes),
                needed_mib: needed / MIB,
                min: human(minimum.div_ceil(MIB) * MIB),
            });
        }
        ImageSize::Fixed(bytes) => bytes / ALIGN * ALIGN,
        // Headroom for the first boot and updates; whole GiB as EBS wants.
        ImageSize::Auto => (minimum + minimum / 2).div_ceil(GIB).max(2) * GIB,
    };
    Ok(layout(disk_bytes, ctx.ids.clone(), arch))
}

fn human(bytes: u64) -> String {
    if bytes.is_multiple_of(GIB) {
        format!("{}G", bytes / GIB)
    } else {
        format!("{}M", bytes.div_ceil(MIB))
    }
}

/// The image under construction: a temporary file beside the output,
/// deleted unless the build reaches its end.
pub struct ImageFile {
    pub temp: NamedTempFile,
}

/// Writes the image; every timestamp in it is at most `source_date_epoch`.
pub fn run(
    ctx: &BuildContext,
    layout: &DiskLayout,
    boot: &BootFiles,
    source_date_epoch: u64,
) -> Result<ImageFile, AssembleError> {
    let epoch = u32::try_from(source_date_epoch)
        .map_err(|_| AssembleError::EpochTooLate(source_date_epoch))?;
    let dir = ctx.request.output_dir();
    let temp = tempfile::Builder::new()
        .prefix(".imgforge-")
        .suffix(".raw.partial")
        .tempfile_in(&dir)
        .map_err(at("create a temporary image in", &dir))?;
    temp.as_file()
        .set_len(layout.disk_bytes)
        .map_err(at("size", temp.path()))?;

    match &ctx.parent {
        None => {
            ctx.progress.note("ext4 root (mkfs.ext4 -d)");
            make_root_filesystem(ctx, temp.path(), layout, epoch)?;
        }
        Some(parent) => {
            ctx.progress.note("ext4 root (laid out on the parent's)");
            let applied = layout_from::lay_out_root(
                parent,
                &ctx.rootfs_dir(),
                temp.path(),
                layout.offset(ROOT),
                layout.bytes(ROOT),
                epoch,
                ctx.work_dir(),
            )?;
            log::info!(
                "layout from {}: {} entries kept, {} removed, {} written",
                parent.image.display(),
                applied.kept,
                applied.removed,
                applied.written
            );
        }
    }
    let mut file = temp.reopen().map_err(at("open", temp.path()))?;
    let fixed = ext4::normalize_inode_times(&file, layout.offset(ROOT), epoch)?;
    log::info!(
        "ext4: times of {} of {} inodes set to SOURCE_DATE_EPOCH {epoch}",
        fixed.inodes_rewritten,
        fixed.inodes_seen
    );
    ctx.progress.note("partition table");
    write_gpt(&mut file, layout)?;
    ctx.progress.note("EFI system partition");
    esp::write(
        &mut file,
        layout.offset(ESP),
        layout.bytes(ESP),
        layout.ids.esp_volume_id,
        source_date_epoch,
        &ctx.esp_dir(),
    )?;
    ctx.progress.note("BIOS boot code");
    bootloader::embed_bios(&mut file, layout, boot)?;
    file.sync_all().map_err(at("sync", temp.path()))?;
    Ok(ImageFile { temp })
}

/// The root filesystem's format (a data file): the build host's own
/// /etc/mke2fs.conf would make the image depend on the host.
const MKE2FS_CONF: &str = "boot/mke2fs.conf";

/// `mkfs.ext4 -d` straight into the root partition's byte range, with ids
/// from the seed and e2fsprogs' own times at the epoch (1.47.0 honours
/// `E2FSPROGS_FAKE_TIME`; 1.47.1 and later also `SOURCE_DATE_EPOCH`).
fn make_root_filesystem(
    ctx: &BuildContext,
    image: &Path,
    layout: &DiskLayout,
    epoch: u32,
) -> Result<(), AssembleError> {
    let uuid = layout.ids.root_fs_uuid.to_string();
    let conf = ctx.request.data_path(MKE2FS_CONF);
    Tool::new("mkfs.ext4")
        .args(["-F", "-q", "-L", "root", "-U", &uuid])
        .args(["-t", "ext4", "-b", "4096", "-I", "256"])
        .arg("-E")
        .arg(format!(
            "offset={},hash_seed={},root_owner=0:0,lazy_itable_init=1,nodiscard",
            layout.offset(ROOT),
            layout.ids.root_hash_seed
        ))
        .arg("-d")
        .arg(ctx.rootfs_dir())
        .arg(image)
        .arg(format!("{}k", layout.bytes(ROOT) / 1024))
        .env("MKE2FS_CONFIG", &conf)
        .env("LC_ALL", "C")
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .run()?;
    Ok(())
}

pub fn write_gpt(file: &mut File, layout: &DiskLayout) -> Result<(), AssembleError> {
    let gpt_err = |e: &dyn std::fmt::Display| AssembleError::Gpt(e.to_string());
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .create_from_device(&mut *file, Some(layout.ids.disk_guid))
        .map_err(|e| gpt_err(&e))?;
    let mut partitions = BTreeMap::new();
    for (i, placed) in layout.partitions.iter().enumerate() {
        let part_type = gpt::partition_types::Type {
            guid: placed.spec.type_guid.parse().expect("valid type GUID"),
            os: gpt::partition_types::OperatingSystem::None,
        };
        partitions.insert(
            i as u32 + 1,
            gpt::partition::Partition {
                part_type_guid: part_type,
                part_guid: layout.ids.partition_guids[placed.slot],
                first_lba: placed.first_lba,
                last_lba: placed.last_lba,
                flags: 0,
                name: placed.spec.name.to_string(),
            },
        );
    }
    disk.update_partitions(partitions)
        .map_err(|e| gpt_err(&e))?;
    disk.write().map_err(|e| gpt_err(&e))?;
    // The protective MBR; the BIOS boot code is merged into it later.
    let sectors = layout.disk_bytes / SECTOR;
    let mbr = gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(sectors - 1).unwrap_or(u32::MAX));
    mbr.overwrite_lba0(file).map_err(|e| gpt_err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom};

    fn ids() -> DiskIds {
        DiskIds::from_seed("test")
    }

    fn x86() -> &'static Architecture {
        crate::platform::lookup("x86_64").unwrap()
    }

    fn extents(layout: &DiskLayout) -> Vec<(u64, u64)> {
        layout
            .partitions
            .iter()
            .map(|p| (p.first_lba, p.last_lba))
            .collect()
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("4G").unwrap(), 4 * GIB);
        assert_eq!(parse_size("8GiB").unwrap(), 8 * GIB);
        assert_eq!(parse_size("2048M").unwrap(), 2 * GIB);
        assert_eq!(parse_size("1048576").unwrap(), MIB);
        assert!(parse_size("4Q").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("0G").is_err());
    }

    #[test]
    fn layout_is_aligned_and_ordered() {
        let layout = layout(2 * GIB, ids(), x86());
        let [
            (bios_first, bios_last),
            (esp_first, esp_last),
            (root_first, root_last),
        ] = extents(&layout)[..]
        else {
            panic!("three partitions")
        };
        assert_eq!(bios_first, 2048, "BIOS boot partition at 1 MiB");
        assert_eq!(bios_last - bios_first + 1, MIB / SECTOR);
        assert_eq!(esp_first, bios_last + 1);
        assert_eq!(layout.bytes(ESP), 100 * MIB);
        assert_eq!(root_first, esp_last + 1);
        for (first, _) in extents(&layout) {
            assert_eq!(first * SECTOR % ALIGN, 0);
        }
        // The root stops before the backup GPT.
        assert!(root_last < 2 * GIB / SECTOR - GPT_BACKUP_SECTORS);
        assert_eq!(layout.bytes(ROOT) % MIB, 0);
    }

    #[test]
    fn gpt_written_to_a_file_reads_back() {
        let layout = layout(256 * MIB, ids(), x86());
        let mut file = tempfile::tempfile().unwrap();
        file.set_len(layout.disk_bytes).unwrap();
        write_gpt(&mut file, &layout).unwrap();
        let disk = gpt::GptConfig::new().open_from_device(&mut file).unwrap();
        assert_eq!(*disk.guid(), layout.ids.disk_guid);
        let parts: Vec<_> = disk.partitions().values().collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(
            parts[0].part_type_guid.guid.to_string().to_uppercase(),
            TYPE_BIOS_BOOT
        );
        assert_eq!(
            parts[1].part_type_guid.guid.to_string().to_uppercase(),
            TYPE_ESP
        );
        assert_eq!(parts[2].first_lba, layout.partitions[2].first_lba);
        assert_eq!(
            parts[2].part_type_guid.guid.to_string().to_uppercase(),
            TYPE_ROOT_X86_64
        );
        assert_eq!(parts[2].part_guid, layout.ids.partition_guids[2]);
        // Protective MBR: one 0xEE partition and the boot signature.
        let mut lba0 = [0u8; 512];
        file.seek(SeekFrom::Start(0)).unwrap();
        file.read_exact(&mut lba0).unwrap();
        assert_eq!(lba0[446 + 4], 0xEE);
        assert_eq!(&lba0[510..], &[0x55, 0xAA]);
    }

    #[test]
    fn ids_follow_the_seed_and_are_all_different() {
        let a = DiskIds::from_seed("image");
        let b = DiskIds::from_seed("image");
        assert_eq!(a.disk_guid, b.disk_guid);
        assert_eq!(a.partition_guids, b.partition_guids);
        assert_eq!(a.esp_volume_id, b.esp_volume_id);
        let c = DiskIds::from_seed("other");
        assert_ne!(a.disk_guid, c.disk_guid);
        assert_ne!(a.root_fs_uuid, c.root_fs_uuid);
        let mut all = vec![a.disk_guid, a.root_fs_uuid, a.root_hash_seed];
        all.extend(a.partition_guids);
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 6, "every purpose gets its own id");
    }

    #[test]
    fn arm64_disk_has_no_bios_boot_partition_and_an_arm64_root() {
        let arm = crate::platform::lookup("arm64").unwrap();
        let layout = layout(256 * MIB, ids(), arm);
        assert!(layout.get(BIOS_BOOT).is_none());
        assert_eq!(layout.offset(ESP), MIB, "the ESP moves to the first MiB");
        let mut file = tempfile::tempfile().unwrap();
        file.set_len(layout.disk_bytes).unwrap();
        write_gpt(&mut file, &layout).unwrap();
        let disk = gpt::GptConfig::new().open_from_device(&mut file).unwrap();
        let parts: Vec<_> = disk.partitions().values().collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(
            parts[0].part_type_guid.guid.to_string().to_uppercase(),
            TYPE_ESP
        );
        assert_eq!(
            parts[1].part_type_guid.guid.to_string().to_uppercase(),
            "B921B045-1DF0-41C3-AF44-4C6F280D3FAE"
        );
        assert_eq!(parts[1].part_guid, layout.ids.partition_guids[ROOT]);
        assert_eq!(parts[1].first_lba * SECTOR, layout.offset(ROOT));
    }

    #[test]
    fn esp_label_is_blkid_style() {
        let mut ids = ids();
        ids.esp_volume_id = 0x1234_abcd;
        assert_eq!(ids.esp_volume_label(), "1234-ABCD");
    }
}
