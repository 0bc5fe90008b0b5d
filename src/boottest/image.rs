//! The image under test: its format, whether it is a disk image at all,
//! which bootloaders it carries, and the throw-away overlay QEMU writes to.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::image::firmware::Firmware;
use crate::image::inspect::{self, BootModes, ImageInfo};
use crate::image::layout::{TYPE_BIOS_BOOT, TYPE_ESP};
use crate::sys::tool::{HostTool, Tool, ToolError};

pub const QEMU_IMG: HostTool = HostTool::new("qemu-img", "qemu-utils");

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a disk image: {reason}")]
    NotDiskImage { path: PathBuf, reason: String },
    #[error("{path} is a {format} file; imgforge handles raw, qcow2, vdi and vmdk images")]
    UnsupportedFormat { path: PathBuf, format: String },
    #[error("{path} has no {firmware} bootloader: {missing}")]
    NoBootloader {
        path: PathBuf,
        firmware: &'static str,
        missing: String,
    },
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    Inspect(#[from] inspect::InspectError),
}

/// The disk formats imgforge reads and writes besides raw.
pub const FORMATS: &[&str] = &["raw", "qcow2", "vdi", "vmdk"];

/// The format `qemu-img info` sees (`raw` for any file it does not know).
pub fn detect_format(path: &Path) -> Result<String, ImageError> {
    File::open(path).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    QEMU_IMG.require()?;
    let out = Tool::new("qemu-img")
        .args(["info", "--output=json", "--force-share"])
        .arg(path)
        .run()?;
    let info: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| ImageError::NotDiskImage {
            path: path.to_path_buf(),
            reason: format!("qemu-img info gave no readable answer ({e})"),
        })?;
    let format = info["format"].as_str().unwrap_or("raw").to_string();
    if !FORMATS.contains(&format.as_str()) {
        return Err(ImageError::UnsupportedFormat {
            path: path.to_path_buf(),
            format,
        });
    }
    Ok(format)
}

/// A raw view of the image: the image itself, or a sparse raw copy in
/// `scratch` for the other formats (the GPT and ESP are read from it).
pub fn raw_view(path: &Path, format: &str, scratch: &Path) -> Result<PathBuf, ImageError> {
    if format == "raw" {
        return Ok(path.to_path_buf());
    }
    let raw = scratch.join("image-view.raw");
    Tool::new("qemu-img")
        .args(["convert", "--force-share", "-f", format, "-O", "raw"])
        .arg(path)
        .arg(&raw)
        .run()?;
    Ok(raw)
}

/// Reads the raw view: a protective MBR and a GPT header must be there
/// before anything else is asked of the image.
pub fn read(raw: &Path, shown_as: &Path) -> Result<ImageInfo, ImageError> {
    let file = File::open(raw).map_err(|source| ImageError::Io {
        path: shown_as.to_path_buf(),
        source,
    })?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    read_from(file, len, shown_as)
}

/// [`read`] on any seekable reader of `len` bytes (a file, or bytes in
/// memory).
pub fn read_from<D: Read + Seek>(
    mut device: D,
    len: u64,
    shown_as: &Path,
) -> Result<ImageInfo, ImageError> {
    let not_image = |reason: String| ImageError::NotDiskImage {
        path: shown_as.to_path_buf(),
        reason,
    };
    if len < 1 << 20 {
        return Err(not_image(format!(
            "it is {len} bytes long, too small for a GPT disk"
        )));
    }
    let mut head = vec![0u8; 1024];
    device
        .read_exact(&mut head)
        .map_err(|source| ImageError::Io {
            path: shown_as.to_path_buf(),
            source,
        })?;
    if head[510..512] != [0x55, 0xaa] {
        return Err(not_image(
            "no partition table (no boot signature in its first sector)".into(),
        ));
    }
    if &head[512..520] != b"EFI PART" {
        return Err(not_image(
            "no GPT header at LBA 1 (imgforge images are GPT disks)".into(),
        ));
    }
    let mut info = inspect::read_image_from(device, shown_as).map_err(|err| match err {
        inspect::InspectError::NotGpt { reason, .. } => not_image(reason),
        other => other.into(),
    })?;
    info.path = shown_as.to_path_buf();
    Ok(info)
}

/// Fails, naming what is missing, when the image cannot boot `firmware`.
pub fn require_bootloader(
    raw: &Path,
    shown_as: &Path,
    info: &ImageInfo,
    firmware: Firmware,
) -> Result<(), ImageError> {
    let has = |modes: &BootModes| match firmware {
        Firmware::Bios => modes.bios,
        Firmware::Uefi => modes.uefi,
    };
    // inspect's BIOS mode already requires boot code in the MBR.
    if has(&info.boot_modes) {
        return Ok(());
    }
    // SeaBIOS runs the MBR's first 440 bytes; zeros there are the most
    // common way to lose BIOS boot, so the message names them.
    let mbr_code_empty = first_bytes(raw, 440)
        .map(|b| b.iter().all(|&x| x == 0))
        .unwrap_or(false);
    let has_type = |ty: &str| {
        info.partitions
            .iter()
            .any(|p| p.type_guid.eq_ignore_ascii_case(ty))
    };
    let missing = if firmware == Firmware::Bios {
        if !has_type(TYPE_BIOS_BOOT) {
            "there is no BIOS boot partition (GPT type 21686148-6449-6E6F-744E-656564454649) \
             holding GRUB's core.img"
                .to_string()
        } else if mbr_code_empty {
            "the MBR boot code is missing (the first 440 bytes of the disk are zero), \
             so SeaBIOS has nothing to run"
                .to_string()
        } else {
            "the MBR does not carry GRUB's boot.img pointing at core.img in the BIOS boot \
             partition"
                .to_string()
        }
    } else if !has_type(TYPE_ESP) {
        "there is no EFI system partition".to_string()
    } else {
        "the EFI system partition has no removable-media bootloader (EFI/BOOT/BOOTX64.EFI or \
         BOOTAA64.EFI)"
            .to_string()
    };
    Err(ImageError::NoBootloader {
        path: shown_as.to_path_buf(),
        firmware: match firmware {
            Firmware::Bios => "BIOS",
            Firmware::Uefi => "UEFI",
        },
        missing,
    })
}

fn first_bytes(path: &Path, n: usize) -> std::io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0u8; n];
    file.read_exact(&mut buf)?;
    Ok(buf)
}

/// A qcow2 overlay in `dir` backed by the image, so that the guest's writes
/// never reach the image.
pub fn overlay(image: &Path, format: &str, dir: &Path) -> Result<PathBuf, ImageError> {
    let backing = std::fs::canonicalize(image).map_err(|source| ImageError::Io {
        path: image.to_path_buf(),
        source,
    })?;
    let overlay = dir.join("overlay.qcow2");
    Tool::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", format, "-b"])
        .arg(&backing)
        .arg(&overlay)
        .run()?;
    Ok(overlay)
}
