//! The image reader behind `imgforge inspect`, boot-test, upload and diff:
//! an image's GPT, boot code, ESP and manifest, read without mounting and
//! without writing. The command line is `commands/inspect.rs`.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::image::bios_boot::{BOOT_KERNEL_SECTOR, MBR_CODE_BYTES};
use crate::image::esp::PartitionSlice;
use crate::image::firmware::Firmware;
use crate::image::gpt_header;
use crate::image::layout::{SECTOR, TYPE_BIOS_BOOT, TYPE_ESP};
use crate::image::manifest::{self, Manifest};
use crate::platform;
use crate::units::human_bytes;

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a GPT disk image: {reason}")]
    NotGpt { path: PathBuf, reason: String },
}

/// Which firmwares an image carries a bootloader for.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct BootModes {
    /// GRUB boot.img in the MBR and core.img in a BIOS boot partition.
    pub bios: bool,
    /// EFI/BOOT/BOOTX64.EFI (or BOOTAA64.EFI) on an EFI system partition.
    pub uefi: bool,
}

impl BootModes {
    /// Whether the image carries a bootloader for `firmware`.
    pub fn has(self, firmware: Firmware) -> bool {
        match firmware {
            Firmware::Bios => self.bios,
            Firmware::Uefi => self.uefi,
        }
    }

    /// The firmwares the image can boot with, BIOS first.
    pub fn firmwares(self) -> Vec<Firmware> {
        Firmware::ALL.into_iter().filter(|f| self.has(*f)).collect()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionInfo {
    pub number: u32,
    pub name: String,
    pub type_guid: String,
    pub partition_guid: String,
    pub first_lba: u64,
    pub last_lba: u64,
    pub size_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImageInfo {
    pub path: PathBuf,
    pub size_bytes: u64,
    pub disk_guid: String,
    pub partitions: Vec<PartitionInfo>,
    pub boot_modes: BootModes,
    /// The CPU architecture (imgforge's name), from the manifest, else from
    /// the root partition's type; None when neither tells.
    pub architecture: Option<ImageArchitecture>,
    pub manifest: Option<Manifest>,
}

/// An image's CPU architecture and where it was read.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ImageArchitecture {
    /// `x86_64`, `arm64` (boot/architectures.toml).
    pub name: String,
    /// `manifest` or `root partition type`.
    pub source: String,
}

/// The architecture the manifest names (any of the table's names for it,
/// so older manifests' `amd64` counts), else the one whose root partition
/// type the disk carries.
pub fn architecture_of(
    manifest: Option<&Manifest>,
    partitions: &[PartitionInfo],
) -> Option<ImageArchitecture> {
    let from_manifest = manifest
        .and_then(|m| platform::lookup(&m.architecture).ok())
        .map(|a| (a, "manifest"));
    let from_root = || {
        partitions
            .iter()
            .find_map(|p| platform::by_root_type(&p.type_guid))
            .map(|a| (a, "root partition type"))
    };
    from_manifest
        .or_else(from_root)
        .map(|(a, source)| ImageArchitecture {
            name: a.name.clone(),
            source: source.into(),
        })
}

/// Reads the GPT, the boot code and the ESP's manifest.
pub fn read_image(path: &Path) -> Result<ImageInfo, InspectError> {
    let io_err = |source| InspectError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return Err(InspectError::NotGpt {
            path: path.to_path_buf(),
            reason: "not a regular file".into(),
        });
    }
    read_image_from(file, path)
}

pub use super::gpt_header::MAX_GPT_ENTRIES;
/// Larger manifests on the ESP are ignored (imgforge writes tens of KiB).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Read calls on the ESP before it is given up: bounds fatfs 0.3, which
/// follows cyclic cluster chains forever.
const ESP_READ_BUDGET: u64 = 1 << 18;

/// [`read_image`] on any seekable reader (a file, or bytes in memory);
/// `shown_as` is the path reported. Nothing is written.
pub fn read_image_from<D: Read + Seek>(
    device: D,
    shown_as: &Path,
) -> Result<ImageInfo, InspectError> {
    let mut device = ReadOnly(device);
    let io_err = |source| InspectError::Io {
        path: shown_as.to_path_buf(),
        source,
    };
    let not_gpt = |reason: String| InspectError::NotGpt {
        path: shown_as.to_path_buf(),
        reason,
    };
    let size_bytes = device.seek(SeekFrom::End(0)).map_err(io_err)?;
    device.seek(SeekFrom::Start(0)).map_err(io_err)?;
    gpt_header::check(&mut device, size_bytes, shown_as)
        .map_err(io_err)?
        .map_err(not_gpt)?;
    device.seek(SeekFrom::Start(0)).map_err(io_err)?;
    let disk = gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .open_from_device(&mut device)
        .map_err(|e| not_gpt(e.to_string()))?;
    let disk_guid = disk.guid().to_string();
    let sectors = size_bytes / SECTOR;
    let mut partitions = Vec::new();
    for (number, p) in disk.partitions().iter().filter(|(_, p)| p.is_used()) {
        if p.last_lba < p.first_lba || p.last_lba >= sectors {
            return Err(not_gpt(format!(
                "partition {number} (LBA {}-{}) {}",
                p.first_lba,
                p.last_lba,
                if p.last_lba < p.first_lba {
                    "ends before it starts".to_string()
                } else {
                    format!("lies past the end of the image ({sectors} sectors): truncated?")
                }
            )));
        }
        partitions.push(PartitionInfo {
            number: *number,
            name: p.name.clone(),
            type_guid: p.part_type_guid.guid.to_string().to_uppercase(),
            partition_guid: p.part_guid.to_string(),
            first_lba: p.first_lba,
            last_lba: p.last_lba,
            size_bytes: (p.last_lba - p.first_lba + 1) * SECTOR,
        });
    }
    drop(disk);

    let bios = has_bios_boot_code(&mut device, &partitions).map_err(io_err)?;
    let (uefi, manifest) = match partitions.iter().find(|p| p.type_guid == TYPE_ESP) {
        Some(esp) => read_esp(&mut device, esp),
        None => (false, None),
    };
    Ok(ImageInfo {
        path: shown_as.to_path_buf(),
        size_bytes,
        disk_guid,
        architecture: architecture_of(manifest.as_ref(), &partitions),
        partitions,
        boot_modes: BootModes { bios, uefi },
        manifest,
    })
}

/// A reader as a read-only device: the gpt crate and fatfs want a
/// writable one, and inspect must never write (as with a file opened
/// read-only, every write fails).
pub(crate) struct ReadOnly<D>(pub(crate) D);

impl<D> std::fmt::Debug for ReadOnly<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadOnly")
    }
}

impl<D: Read> Read for ReadOnly<D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<D> Write for ReadOnly<D> {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the image is opened read-only",
        ))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<D: Seek> Seek for ReadOnly<D> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.0.seek(to)
    }
}

/// A device that fails after `left` more read calls.
struct ReadBudget<D> {
    inner: D,
    left: u64,
}

impl<D: Read> Read for ReadBudget<D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::Error::other(
                "the file system takes too many reads (a cluster chain loop?)",
            ));
        }
        self.left -= 1;
        self.inner.read(buf)
    }
}

impl<D: Seek> Seek for ReadBudget<D> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.inner.seek(to)
    }
}

/// GRUB's boot.img in LBA 0 and, where the disk has a BIOS boot partition,
/// a core image at its start that boot.img points to.
fn has_bios_boot_code<D: Read + Seek>(
    file: &mut D,
    partitions: &[PartitionInfo],
) -> std::io::Result<bool> {
    let mut lba0 = [0u8; 512];
    file.seek(SeekFrom::Start(0))?;
    file.read_exact(&mut lba0)?;
    if lba0[..MBR_CODE_BYTES].iter().all(|b| *b == 0) {
        return Ok(false);
    }
    let Some(bios_boot) = partitions.iter().find(|p| p.type_guid == TYPE_BIOS_BOOT) else {
        // Boot code of another kind (no BIOS boot partition to check).
        return Ok(true);
    };
    let core_lba = u64::from_le_bytes(
        lba0[BOOT_KERNEL_SECTOR..BOOT_KERNEL_SECTOR + 8]
            .try_into()
            .expect("8 bytes"),
    );
    if core_lba != bios_boot.first_lba {
        return Ok(false);
    }
    let mut core = [0u8; 512];
    file.seek(SeekFrom::Start(core_lba * SECTOR))?;
    file.read_exact(&mut core)?;
    Ok(core.iter().any(|b| *b != 0))
}

/// Whether the ESP holds a removable-media bootloader, and the manifest.
fn read_esp<D: Read + Seek>(file: &mut D, esp: &PartitionInfo) -> (bool, Option<Manifest>) {
    let Ok(slice) = PartitionSlice::new(file, esp.first_lba * SECTOR, esp.size_bytes) else {
        return (false, None);
    };
    read_fat(slice)
}

/// Whether a FAT file system holds a removable-media bootloader, and the
/// manifest (see [`read_esp`]); the volume is read, never written.
///
/// fatfs 0.3.6 does unchecked arithmetic on cluster numbers it reads from
/// the volume (`cluster - 2` in `FileSystem::sector_from_cluster`, for a
/// directory entry or FAT entry naming cluster 1, say): a panic where
/// overflow checks are on (debug and test builds, fuzzing), a read of the
/// wrong sector in release builds. Ruling that out beforehand would mean
/// walking every directory and cluster chain fatfs will follow, i.e. a
/// second FAT reader; so, as a last resort, a panic inside fatfs counts as
/// an unreadable ESP, like any other error it reports.
pub fn read_fat<D: Read + Seek>(volume: D) -> (bool, Option<Manifest>) {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_fat_unguarded(volume)))
        .unwrap_or_else(|_| {
            log::warn!("the FAT file system is corrupt (its reader panicked)");
            (false, None)
        })
}

fn read_fat_unguarded<D: Read + Seek>(volume: D) -> (bool, Option<Manifest>) {
    let mut volume = ReadOnly(ReadBudget {
        inner: volume,
        left: ESP_READ_BUDGET,
    });
    let Ok(fs) = fatfs::FileSystem::new(&mut volume, fatfs::FsOptions::new()) else {
        return (false, None);
    };
    let root = fs.root_dir();
    let uefi = ["EFI/BOOT/BOOTX64.EFI", "EFI/BOOT/BOOTAA64.EFI"]
        .iter()
        .any(|p| {
            root.open_file(p)
                .is_ok_and(|mut f| f.read(&mut [0u8; 2]).is_ok_and(|n| n > 0))
        });
    let manifest = root.open_file(manifest::ESP_PATH).ok().and_then(|f| {
        let mut text = String::new();
        f.take(MAX_MANIFEST_BYTES + 1)
            .read_to_string(&mut text)
            .ok()?;
        if text.len() as u64 > MAX_MANIFEST_BYTES {
            return None;
        }
        Manifest::from_json(&text).ok()
    });
    (uefi, manifest)
}

/// The firmwares an image can boot with.
pub fn boot_modes(path: &Path) -> Result<BootModes, InspectError> {
    read_image(path).map(|info| info.boot_modes)
}

fn describe_type(type_guid: &str) -> String {
    match type_guid {
        TYPE_BIOS_BOOT => "BIOS boot".into(),
        TYPE_ESP => "EFI system".into(),
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4" => "Linux filesystem".into(),
        _ => match platform::by_root_type(type_guid) {
            Some(arch) => format!("Linux root ({})", arch.name),
            None => "other".into(),
        },
    }
}

/// What `imgforge inspect` prints without `--json`.
pub fn render(info: &ImageInfo) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "image       {} ({})",
        info.path.display(),
        human_bytes(info.size_bytes)
    );
    let _ = writeln!(out, "disk GUID   {}", info.disk_guid);
    let _ = writeln!(out, "partitions");
    for p in &info.partitions {
        let _ = writeln!(
            out,
            "  {}  {:<10} {:>10}  LBA {}-{}  {}",
            p.number,
            p.name,
            human_bytes(p.size_bytes),
            p.first_lba,
            p.last_lba,
            describe_type(&p.type_guid)
        );
    }
    let modes: Vec<&str> = info
        .boot_modes
        .firmwares()
        .into_iter()
        .map(Firmware::as_str)
        .collect();
    let _ = writeln!(
        out,
        "arch        {}",
        match &info.architecture {
            Some(a) => format!("{} (from the {})", a.name, a.source),
            None => "unknown (no manifest, no root partition type imgforge knows)".into(),
        }
    );
    let _ = writeln!(
        out,
        "boot modes  {}",
        if modes.is_empty() {
            "none".to_string()
        } else {
            modes.join(", ")
        }
    );
    match &info.manifest {
        Some(m) => {
            let _ = writeln!(
                out,
                "distro      {} {} ({})",
                m.distro, m.release, m.architecture
            );
            let _ = writeln!(out, "kernel      {}", m.kernel_version);
            let _ = writeln!(out, "size class  {}", m.size_class);
            let _ = writeln!(out, "cmdline     {}", m.kernel_cmdline);
            let _ = writeln!(out, "packages    {}", m.packages.len());
            let _ = writeln!(out, "layers      {}", m.layers.join(", "));
        }
        None => {
            let _ = writeln!(out, "manifest    none (not an imgforge image?)");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::gpt_header::crc32;
    use std::io::Cursor;

    const ESP_GUID: [u8; 16] = [
        0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9,
        0x3b,
    ];

    /// A GPT disk of `sectors` sectors in memory, its entry array at LBA 2,
    /// `partitions` as (type GUID bytes, first LBA, last LBA), both CRCs
    /// right (as a crafted image would have them).
    fn gpt_disk(
        sectors: u64,
        entries: u32,
        entry_size: u32,
        partitions: &[([u8; 16], u64, u64)],
    ) -> Vec<u8> {
        let mut disk = vec![0u8; (sectors * SECTOR) as usize];
        disk[510] = 0x55;
        disk[511] = 0xaa;
        disk[446 + 4] = 0xee;
        let table = 2 * SECTOR as usize;
        for (i, (type_guid, first, last)) in partitions.iter().enumerate() {
            let e = table + i * 128;
            disk[e..e + 16].copy_from_slice(type_guid);
            disk[e + 16] = i as u8 + 1;
            disk[e + 32..e + 40].copy_from_slice(&first.to_le_bytes());
            disk[e + 40..e + 48].copy_from_slice(&last.to_le_bytes());
        }
        let table_len = (u64::from(entries) * u64::from(entry_size)).min(disk.len() as u64 - 1024);
        let table_crc = crc32(&disk[table..table + table_len as usize]);
        let h = SECTOR as usize;
        disk[h..h + 8].copy_from_slice(b"EFI PART");
        disk[h + 8..h + 12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        disk[h + 12..h + 16].copy_from_slice(&92u32.to_le_bytes());
        disk[h + 24..h + 32].copy_from_slice(&1u64.to_le_bytes());
        disk[h + 32..h + 40].copy_from_slice(&(sectors - 1).to_le_bytes());
        disk[h + 40..h + 48].copy_from_slice(&34u64.to_le_bytes());
        disk[h + 48..h + 56].copy_from_slice(&(sectors - 34).to_le_bytes());
        disk[h + 56] = 0x42;
        disk[h + 72..h + 80].copy_from_slice(&2u64.to_le_bytes());
        disk[h + 80..h + 84].copy_from_slice(&entries.to_le_bytes());
        disk[h + 84..h + 88].copy_from_slice(&entry_size.to_le_bytes());
        disk[h + 88..h + 92].copy_from_slice(&table_crc.to_le_bytes());
        let crc = crc32(&disk[h..h + 92]);
        disk[h + 16..h + 20].copy_from_slice(&crc.to_le_bytes());
        disk
    }

    fn read(disk: &[u8]) -> Result<ImageInfo, InspectError> {
        read_image_from(Cursor::new(disk), Path::new("test.raw"))
    }

    /// An ESP at LBA 64..=1087 formatted by fatfs, with a bootloader and a
    /// manifest, is read back from memory.
    #[test]
    fn reads_a_gpt_disk_with_an_esp_in_memory() {
        let mut disk = gpt_disk(2048, 128, 128, &[(ESP_GUID, 64, 1087)]);
        {
            let mut cursor = Cursor::new(&mut disk[64 * SECTOR as usize..1088 * SECTOR as usize]);
            fatfs::format_volume(&mut cursor, fatfs::FormatVolumeOptions::new()).unwrap();
            cursor.set_position(0);
            let fs = fatfs::FileSystem::new(&mut cursor, fatfs::FsOptions::new()).unwrap();
            let root = fs.root_dir();
            root.create_dir("EFI").unwrap().create_dir("BOOT").unwrap();
            root.create_file("EFI/BOOT/BOOTX64.EFI")
                .unwrap()
                .write_all(b"MZ")
                .unwrap();
            root.create_dir("imgforge").unwrap();
            let manifest = include_str!("../../tests/fuzz/seeds/manifest_json/debian-small.json");
            root.create_file(manifest::ESP_PATH)
                .unwrap()
                .write_all(manifest.as_bytes())
                .unwrap();
        }
        let info = read(&disk).unwrap();
        assert_eq!(info.size_bytes, 2048 * SECTOR);
        assert_eq!(info.partitions.len(), 1);
        assert_eq!(info.partitions[0].type_guid, TYPE_ESP);
        assert_eq!(info.partitions[0].size_bytes, 1024 * SECTOR);
        assert!(info.boot_modes.uefi && !info.boot_modes.bios);
        assert_eq!(info.manifest.unwrap().distro, "debian");
    }

    /// gpt 4.1 asserts 128-byte entries: a panic before this check.
    #[test]
    fn gpt_entries_of_another_size_are_an_error_not_a_panic() {
        let disk = gpt_disk(256, 64, 256, &[(ESP_GUID, 64, 100)]);
        let err = read(&disk).unwrap_err().to_string();
        assert!(err.contains("entries of 256 bytes"), "{err}");
    }

    /// gpt 4.1 reads (and allocates) as many entries as the header claims.
    #[test]
    fn gpt_claiming_billions_of_entries_is_refused() {
        let disk = gpt_disk(256, u32::MAX, 128, &[]);
        let err = read(&disk).unwrap_err().to_string();
        assert!(err.contains("4294967295 partition entries"), "{err}");
        // Fewer, but past the end of the image.
        let disk = gpt_disk(256, 4096, 128, &[]);
        let err = read(&disk).unwrap_err().to_string();
        assert!(err.contains("past the end of the image"), "{err}");
    }

    /// `last - first + 1` underflowed (a panic in debug builds, a size near
    /// 2^64 in release ones).
    #[test]
    fn partition_ending_before_it_starts_is_an_error() {
        let disk = gpt_disk(256, 128, 128, &[(ESP_GUID, 100, 50)]);
        let err = read(&disk).unwrap_err().to_string();
        assert!(err.contains("ends before it starts"), "{err}");
    }

    /// `(last - first + 1) * 512` and the ESP's `first * 512` overflowed.
    #[test]
    fn partition_past_the_end_of_the_image_is_an_error() {
        for (first, last) in [(64, 300), (u64::MAX / 2, u64::MAX), (1 << 60, 1 << 61)] {
            let disk = gpt_disk(256, 128, 128, &[(ESP_GUID, first, last)]);
            let err = read(&disk).unwrap_err().to_string();
            assert!(
                err.contains("past the end of the image"),
                "{first}-{last}: {err}"
            );
        }
    }

    /// fatfs 0.3 follows a directory's cluster chain forever when it loops;
    /// the read budget ends it.
    #[test]
    fn fat_with_a_cluster_loop_is_given_up() {
        let mut volume = vec![0u8; 1 << 20];
        {
            let mut cursor = Cursor::new(&mut volume[..]);
            fatfs::format_volume(
                &mut cursor,
                fatfs::FormatVolumeOptions::new().fat_type(fatfs::FatType::Fat12),
            )
            .unwrap();
            cursor.set_position(0);
            let fs = fatfs::FileSystem::new(&mut cursor, fatfs::FsOptions::new()).unwrap();
            let efi = fs.root_dir().create_dir("EFI").unwrap();
            // More entries than one cluster holds: the loop never meets
            // the end-of-directory entry.
            for i in 0..100 {
                efi.create_file(&format!("F{i}")).unwrap();
            }
        };
        // The FAT12 entry of EFI's first cluster points back at itself, in
        // both FATs.
        let reserved = u16::from_le_bytes([volume[14], volume[15]]) as usize;
        let fat_sectors = u16::from_le_bytes([volume[22], volume[23]]) as usize;
        let root_dir = (reserved + volume[16] as usize * fat_sectors) * 512;
        let efi = (0..512)
            .map(|i| root_dir + i * 32)
            .find(|&e| &volume[e..e + 11] == b"EFI        ")
            .unwrap();
        let cluster = u32::from(u16::from_le_bytes([volume[efi + 26], volume[efi + 27]]));
        for fat in 0..volume[16] as usize {
            let at = (reserved + fat * fat_sectors) * 512 + cluster as usize * 3 / 2;
            let mut pair = u16::from_le_bytes([volume[at], volume[at + 1]]);
            pair = if cluster % 2 == 0 {
                (pair & 0xf000) | cluster as u16
            } else {
                (pair & 0x000f) | ((cluster as u16) << 4)
            };
            volume[at..at + 2].copy_from_slice(&pair.to_le_bytes());
        }
        let started = std::time::Instant::now();
        assert_eq!(read_fat(Cursor::new(&volume[..])), (false, None));
        assert!(started.elapsed().as_secs() < 30);
    }

    /// A FAT12 volume made by fatfs with EFI/BOOT/BOOTX64.EFI; `patch`
    /// edits its bytes, given the offset of EFI's root directory entry.
    fn fat12_with_efi(patch: impl FnOnce(&mut [u8], usize)) -> Vec<u8> {
        let mut volume = vec![0u8; 256 << 10];
        {
            let mut cursor = Cursor::new(&mut volume[..]);
            fatfs::format_volume(
                &mut cursor,
                fatfs::FormatVolumeOptions::new().fat_type(fatfs::FatType::Fat12),
            )
            .unwrap();
            cursor.set_position(0);
            let fs = fatfs::FileSystem::new(&mut cursor, fatfs::FsOptions::new()).unwrap();
            fs.root_dir().create_dir("EFI").unwrap();
            fs.root_dir().create_dir("EFI/BOOT").unwrap();
            fs.root_dir()
                .create_file("EFI/BOOT/BOOTX64.EFI")
                .unwrap()
                .write_all(b"MZ")
                .unwrap();
        }
        let reserved = u16::from_le_bytes([volume[14], volume[15]]) as usize;
        let fat_sectors = u16::from_le_bytes([volume[22], volume[23]]) as usize;
        let root_dir = (reserved + volume[16] as usize * fat_sectors) * 512;
        let efi = (0..512)
            .map(|i| root_dir + i * 32)
            .find(|&e| &volume[e..e + 11] == b"EFI        ")
            .unwrap();
        patch(&mut volume, efi);
        volume
    }

    /// Found by the esp_fat and gpt_image fuzz targets: a directory entry
    /// naming cluster 1 made fatfs compute `1 - 2` (a panic with overflow
    /// checks on, as in `cargo test` and fuzzing; a wrong sector without).
    #[test]
    fn fat_directory_at_cluster_1_is_an_unreadable_esp_not_a_panic() {
        let good = fat12_with_efi(|_, _| ());
        assert_eq!(read_fat(Cursor::new(&good[..])), (true, None));
        let bad =
            fat12_with_efi(|v, efi| v[efi + 26..efi + 28].copy_from_slice(&1u16.to_le_bytes()));
        assert_eq!(read_fat(Cursor::new(&bad[..])), (false, None));
    }
    #[test]
    fn architecture_comes_from_the_manifest_else_the_root_type() {
        let part = |type_guid: &str| PartitionInfo {
            number: 1,
            name: "root".into(),
            type_guid: type_guid.into(),
            partition_guid: String::new(),
            first_lba: 2048,
            last_lba: 4095,
            size_bytes: 1 << 20,
        };
        let arm_root = [part("B921B045-1DF0-41C3-AF44-4C6F280D3FAE")];
        let found = architecture_of(None, &arm_root).unwrap();
        assert_eq!(found.name, "arm64");
        assert_eq!(found.source, "root partition type");
        assert_eq!(
            describe_type("B921B045-1DF0-41C3-AF44-4C6F280D3FAE"),
            "Linux root (arm64)"
        );
        // An older manifest spells x86-64 as Debian does.
        let text = include_str!("../../tests/fuzz/seeds/manifest_json/debian-small.json")
            .replace("\"x86_64\"", "\"amd64\"");
        let manifest = Manifest::from_json(&text).unwrap();
        let found = architecture_of(Some(&manifest), &[]).unwrap();
        assert_eq!(
            (found.name.as_str(), found.source.as_str()),
            ("x86_64", "manifest")
        );
        assert!(architecture_of(None, &[part("0FC63DAF-8483-4772-8E79-3D69D8477DE4")]).is_none());
    }
}
