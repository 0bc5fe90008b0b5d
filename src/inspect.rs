//! `imgforge inspect`: read an image's GPT, ESP and manifest without mounting.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::manifest::Manifest;

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
    #[error("cannot read {path}: {source}")]
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
pub fn read_image(_path: &Path) -> Result<ImageInfo, InspectError> {
    todo!("lands with the build issue")
}

/// The firmwares an image can boot with.
pub fn boot_modes(path: &Path) -> Result<BootModes, InspectError> {
    read_image(path).map(|info| info.boot_modes)
}

pub fn run(args: &InspectArgs) -> Result<(), InspectError> {
    let info = read_image(&args.image)?;
    println!("{info:?}");
    Ok(())
}
