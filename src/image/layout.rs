//! The disk format: 512-byte sectors, a GPT with a BIOS boot partition
//! (where the architecture has a BIOS), an EFI system partition and a root
//! partition of the architecture's type, each on a 1 MiB boundary; the disk
//! identities written into it; and the partition table itself. The build
//! lays disks out with it, and inspect, boot-test and upload read them by
//! the same constants.

use std::collections::BTreeMap;
use std::fs::File;

use uuid::Uuid;

use crate::image::ids;
use crate::platform::Architecture;

pub const SECTOR: u64 = 512;
const MIB: u64 = 1 << 20;
/// Partitions start on 1 MiB boundaries.
pub const ALIGN: u64 = MIB;
/// The backup GPT: 32 sectors of entries and its header.
pub const GPT_BACKUP_SECTORS: u64 = 33;
/// What a root filesystem needs beyond its files: ext4's metadata and
/// journal, and room to boot (an empty tree needs this much).
pub const ROOT_OVERHEAD: u64 = 96 * MIB;

pub const TYPE_BIOS_BOOT: &str = "21686148-6449-6E6F-744E-656564454649";
pub const TYPE_ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// Discoverable Partitions Specification: root partition, x86-64 (each
/// architecture's is in boot/architectures.toml).
pub const TYPE_ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("writing the partition table: {0}")]
    Gpt(String),
}

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

/// The bytes of an `arch` disk that are not the root filesystem: the
/// alignment before the first partition, the fixed-size partitions, and
/// the alignment and backup GPT after the root.
pub fn fixed_bytes(arch: &'static Architecture) -> u64 {
    ALIGN
        + partitions(arch)
            .iter()
            .filter_map(|(_, p)| p.size)
            .sum::<u64>()
        + ALIGN
}

/// The smallest disk an `arch` image can have: its fixed part and the
/// root filesystem of an empty tree, in whole MiB.
pub fn minimum_disk_bytes(arch: &'static Architecture) -> u64 {
    (fixed_bytes(arch) + ROOT_OVERHEAD).div_ceil(MIB) * MIB
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

/// Writes the layout's GPT (both copies) and a protective MBR into `file`.
pub fn write_gpt(file: &mut File, layout: &DiskLayout) -> Result<(), LayoutError> {
    let gpt_err = |e: &dyn std::fmt::Display| LayoutError::Gpt(e.to_string());
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

    const GIB: u64 = 1 << 30;

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
    fn the_minimum_disk_holds_the_fixed_partitions_and_an_empty_root() {
        assert_eq!(minimum_disk_bytes(x86()), 199 * MIB);
        let arm = crate::platform::lookup("arm64").unwrap();
        assert_eq!(minimum_disk_bytes(arm), 198 * MIB);
        let smallest = layout(minimum_disk_bytes(x86()), ids(), x86());
        assert!(smallest.bytes(ROOT) >= ROOT_OVERHEAD - MIB);
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
