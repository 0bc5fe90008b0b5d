//! Stage 5, assemble: the disk image file. A sparse file, a GPT (BIOS boot
//! where the architecture has a BIOS, EFI system, root of the
//! architecture's type), a FAT ESP written in-process, an ext4 root made from
//! the directory by `mkfs.ext4 -d` at the partition's offset (or laid out
//! on a parent's, [`super::layout_from`]), and the BIOS boot code. No loop
//! device and no mount. The format itself (layout, ids, GPT, boot code) is
//! [`crate::image::layout`] and [`crate::image::bios_boot`]; this stage
//! sizes the disk and writes it.

use std::fs;
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use super::bootloader::BootFiles;
use super::bootstrap::Rootfs;
use super::context::BuildContext;
use super::layout_from::{self, LayoutFromError};
use super::request::ImageSize;
use crate::image::bios_boot::{self, BiosBootError};
use crate::image::layout::{
    self, ALIGN, DiskLayout, ESP, LayoutError, ROOT, ROOT_OVERHEAD, write_gpt,
};
use crate::image::{esp, ext4};
use crate::sys::fsio::{PathError, at};
use crate::sys::tool::{Tool, ToolError};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    Io(#[from] PathError),
    #[error(
        "--size {given} is too small: the root filesystem needs {needed_mib} MiB, so the image needs at least {min}; \
         pass --size {min} or more"
    )]
    TooSmall {
        given: String,
        needed_mib: u64,
        min: String,
    },
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Esp(#[from] esp::EspError),
    #[error(transparent)]
    BiosBoot(#[from] BiosBootError),
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

/// Bytes the root filesystem needs: file data in 4 KiB blocks, inodes and
/// a margin for ext4's metadata and journal.
pub fn root_bytes_needed(dir: &Path) -> u64 {
    let (blocks, inodes) = usage(dir);
    let data = blocks * 4096 + inodes * 256;
    data + data / 10 + ROOT_OVERHEAD
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
    let minimum = layout::fixed_bytes(arch) + needed;
    if let Some(parent) = &ctx.parent {
        if parent.disk_bytes < minimum {
            return Err(AssembleError::ParentTooSmall {
                parent: parent.image.clone(),
                given: human(parent.disk_bytes),
                needed: human(minimum.div_ceil(MIB) * MIB),
            });
        }
        return Ok(layout::layout(parent.disk_bytes, ctx.ids.clone(), arch));
    }
    let disk_bytes = match ctx.request.image_size {
        ImageSize::Fixed(size) if size.bytes() < minimum => {
            return Err(AssembleError::TooSmall {
                given: human(size.bytes()),
                needed_mib: needed / MIB,
                min: human(minimum.div_ceil(MIB) * MIB),
            });
        }
        ImageSize::Fixed(size) => size.bytes() / ALIGN * ALIGN,
        // Headroom for the first boot and updates; whole GiB as EBS wants.
        ImageSize::Auto => (minimum + minimum / 2).div_ceil(GIB).max(2) * GIB,
    };
    Ok(layout::layout(disk_bytes, ctx.ids.clone(), arch))
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
    if let Some((boot_img, core)) = &boot.bios {
        bios_boot::embed(&mut file, layout, boot_img, core)?;
    }
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
