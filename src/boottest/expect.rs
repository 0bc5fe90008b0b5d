//! What the guest must show, read from the image's own manifest (through
//! [`crate::image::inspect`]): its kernel command line, its size class and
//! its root filesystem's UUID.

use super::report::Expectations;
use crate::image::firmware::Firmware;
use crate::image::inspect::ImageInfo;
use crate::image::manifest::Manifest;
use crate::sizeclass::SizeClass;

/// The expectations of one boot of `firmware` on `smp` vCPUs.
pub fn expectations(
    firmware: Firmware,
    smp: u32,
    class: Option<&SizeClass>,
    info: &ImageInfo,
) -> Expectations {
    let manifest = info.manifest.as_ref();
    Expectations {
        firmware,
        smp,
        class: class.cloned(),
        manifest_cmdline: manifest
            .map(|m| {
                m.kernel_cmdline
                    .split_whitespace()
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default(),
        root_uuid: manifest.and_then(root_uuid),
    }
}

/// The root filesystem's UUID: the partition named `root`, else the last
/// partition with a filesystem other than FAT.
fn root_uuid(manifest: &Manifest) -> Option<String> {
    let parts = &manifest.disk.partitions;
    parts
        .iter()
        .find(|p| p.name.eq_ignore_ascii_case("root") && p.filesystem_uuid.is_some())
        .or_else(|| {
            parts.iter().rev().find(|p| {
                p.filesystem_uuid.is_some()
                    && !matches!(p.filesystem.as_deref(), Some("vfat" | "fat" | "fat32"))
            })
        })
        .and_then(|p| p.filesystem_uuid.clone())
}
