//! `imgforge inspect`: read an image's GPT, ESP and manifest without mounting.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::build::assemble::{SECTOR, TYPE_BIOS_BOOT, TYPE_ESP, TYPE_ROOT_X86_64};
use crate::build::bootloader::{BOOT_KERNEL_SECTOR, MBR_CODE_BYTES};
use crate::image::esp::PartitionSlice;
use crate::image::manifest::{self, Manifest};

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The raw image to read.
    pub image: PathBuf,
    /// Print the result as JSON (for scripts).
    #[arg(long)]
    pub json: bool,
}

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
    pub manifest: Option<Manifest>,
}

/// Reads the GPT, the boot code and the ESP's manifest.
pub fn read_image(path: &Path) -> Result<ImageInfo, InspectError> {
    let io_err = |source| InspectError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return Err(InspectError::NotGpt {
            path: path.to_path_buf(),
            reason: "not a regular file".into(),
        });
    }
    let not_gpt = |reason: String| InspectError::NotGpt {
        path: path.to_path_buf(),
        reason,
    };
    let disk = gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .open_from_device(&mut file)
        .map_err(|e| not_gpt(e.to_string()))?;
    let disk_guid = disk.guid().to_string();
    let partitions: Vec<PartitionInfo> = disk
        .partitions()
        .iter()
        .filter(|(_, p)| p.is_used())
        .map(|(number, p)| PartitionInfo {
            number: *number,
            name: p.name.clone(),
            type_guid: p.part_type_guid.guid.to_string().to_uppercase(),
            partition_guid: p.part_guid.to_string(),
            first_lba: p.first_lba,
            last_lba: p.last_lba,
            size_bytes: (p.last_lba - p.first_lba + 1) * SECTOR,
        })
        .collect();
    drop(disk);

    let bios = has_bios_boot_code(&mut file, &partitions).map_err(io_err)?;
    let (uefi, manifest) = match partitions.iter().find(|p| p.type_guid == TYPE_ESP) {
        Some(esp) => read_esp(&mut file, esp),
        None => (false, None),
    };
    Ok(ImageInfo {
        path: path.to_path_buf(),
        size_bytes: meta.len(),
        disk_guid,
        partitions,
        boot_modes: BootModes { bios, uefi },
        manifest,
    })
}

/// GRUB's boot.img in LBA 0 and, where the disk has a BIOS boot partition,
/// a core image at its start that boot.img points to.
fn has_bios_boot_code(file: &mut File, partitions: &[PartitionInfo]) -> std::io::Result<bool> {
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
fn read_esp(file: &mut File, esp: &PartitionInfo) -> (bool, Option<Manifest>) {
    let Ok(mut slice) = PartitionSlice::new(file, esp.first_lba * SECTOR, esp.size_bytes) else {
        return (false, None);
    };
    let Ok(fs) = fatfs::FileSystem::new(&mut slice, fatfs::FsOptions::new()) else {
        return (false, None);
    };
    let root = fs.root_dir();
    let uefi = ["EFI/BOOT/BOOTX64.EFI", "EFI/BOOT/BOOTAA64.EFI"]
        .iter()
        .any(|p| {
            root.open_file(p)
                .is_ok_and(|mut f| f.read(&mut [0u8; 2]).is_ok_and(|n| n > 0))
        });
    let manifest = root.open_file(manifest::ESP_PATH).ok().and_then(|mut f| {
        let mut text = String::new();
        f.read_to_string(&mut text).ok()?;
        serde_json::from_str(&text).ok()
    });
    (uefi, manifest)
}

/// The firmwares an image can boot with.
pub fn boot_modes(path: &Path) -> Result<BootModes, InspectError> {
    read_image(path).map(|info| info.boot_modes)
}

fn describe_type(type_guid: &str) -> &'static str {
    match type_guid {
        TYPE_BIOS_BOOT => "BIOS boot",
        TYPE_ESP => "EFI system",
        TYPE_ROOT_X86_64 => "Linux root (x86-64)",
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4" => "Linux filesystem",
        _ => "other",
    }
}

fn mib(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

pub fn run(args: &InspectArgs) -> Result<(), InspectError> {
    let info = read_image(&args.image)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&info).expect("serializes")
        );
        return Ok(());
    }
    println!(
        "image       {} ({})",
        info.path.display(),
        mib(info.size_bytes)
    );
    println!("disk GUID   {}", info.disk_guid);
    println!("partitions");
    for p in &info.partitions {
        println!(
            "  {}  {:<10} {:>10}  LBA {}-{}  {}",
            p.number,
            p.name,
            mib(p.size_bytes),
            p.first_lba,
            p.last_lba,
            describe_type(&p.type_guid)
        );
    }
    let mut modes = Vec::new();
    if info.boot_modes.bios {
        modes.push("bios");
    }
    if info.boot_modes.uefi {
        modes.push("uefi");
    }
    println!(
        "boot modes  {}",
        if modes.is_empty() {
            "none".to_string()
        } else {
            modes.join(", ")
        }
    );
    match &info.manifest {
        Some(m) => {
            println!(
                "distro      {} {} ({})",
                m.distro, m.release, m.architecture
            );
            println!("kernel      {}", m.kernel_version);
            println!("size class  {}", m.size_class);
            println!("cmdline     {}", m.kernel_cmdline);
            println!("packages    {}", m.packages.len());
            println!("layers      {}", m.layers.join(", "));
        }
        None => println!("manifest    none (not an imgforge image?)"),
    }
    Ok(())
}
