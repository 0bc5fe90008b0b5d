//! `imgforge sbom IMAGE`: the inventory of a finished image, read without
//! mounting it. debugfs dumps what the SBOM reads (dpkg's status file,
//! /etc/debian_version, /usr/share/doc) from the root filesystem into a
//! temporary root; the manifest comes from the ESP.

use std::fs;
use std::path::{Path, PathBuf};

use super::{Inventory, SbomError};
use crate::image::inspect::{self, InspectError};
use crate::image::manifest::Manifest;
use crate::sys::fsio::at;
use crate::sys::tool::{Tool, ToolError};

/// What the SBOM reads from the root filesystem, file by file.
const FILES: &[&str] = &["var/lib/dpkg/status", "etc/debian_version"];
/// And folder by folder (with `rdump`).
const FOLDERS: &[(&str, &str)] = &[("usr/share/doc", "usr/share")];

#[derive(Debug, thiserror::Error)]
pub enum ImageSbomError {
    #[error(transparent)]
    Inspect(#[from] InspectError),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(
        "{0} has no imgforge manifest on its ESP: `imgforge sbom` describes images imgforge built"
    )]
    NoManifest(PathBuf),
    #[error("{0}: the manifest names no ext4 root partition")]
    NoRoot(PathBuf),
    #[error("cannot make a temporary folder")]
    TempDir(#[source] std::io::Error),
}

/// The image's manifest (from its ESP) and inventory.
pub fn read(image: &Path) -> Result<(Manifest, Inventory), SbomError> {
    let info = inspect::read_image(image).map_err(ImageSbomError::from)?;
    let manifest = info
        .manifest
        .clone()
        .ok_or_else(|| ImageSbomError::NoManifest(image.to_path_buf()))?;
    let root = manifest
        .disk
        .partitions
        .iter()
        .find(|p| p.filesystem.as_deref() == Some("ext4"))
        .ok_or_else(|| ImageSbomError::NoRoot(image.to_path_buf()))?;
    let dump = tempfile::Builder::new()
        .prefix("imgforge-sbom-")
        .tempdir()
        .map_err(ImageSbomError::TempDir)?;
    let mut commands = String::new();
    for file in FILES {
        let to = dump.path().join(file);
        let parent = to.parent().expect("a file in a folder");
        fs::create_dir_all(parent).map_err(at("create", parent))?;
        commands.push_str(&format!("dump /{file} \"{}\"\n", to.display()));
    }
    for (folder, into) in FOLDERS {
        let to = dump.path().join(into);
        fs::create_dir_all(&to).map_err(at("create", &to))?;
        commands.push_str(&format!("rdump /{folder} \"{}\"\n", to.display()));
    }
    let script = dump.path().join("debugfs.cmd");
    fs::write(&script, commands).map_err(at("write", &script))?;
    Tool::new("debugfs")
        .arg("-f")
        .arg(&script)
        .arg(format!(
            "{}?offset={}",
            image.display(),
            root.first_lba * crate::image::layout::SECTOR
        ))
        .run()
        .map_err(ImageSbomError::from)?;
    let inventory = Inventory::read(dump.path(), &manifest)?;
    Ok((manifest, inventory))
}
