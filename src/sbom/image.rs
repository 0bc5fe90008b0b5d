//! `imgforge sbom IMAGE`: the inventory of a finished image, read without
//! mounting it. debugfs dumps what the SBOM reads from the root filesystem
//! into a temporary root: first each package database's marker, then what
//! the database found there reads (dpkg's status file, /etc/debian_version
//! and /usr/share/doc; pacman's local database). The manifest comes from
//! the ESP.

use std::fs;
use std::path::{Path, PathBuf};

use super::database::PackageDatabase;
use super::{DATABASES, Inventory, SbomError, find};
use crate::image::inspect::{self, InspectError};
use crate::image::manifest::Manifest;
use crate::sys::fsio::at;
use crate::sys::tool::{Tool, ToolError};

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
    let offset = root.first_lba * crate::image::layout::SECTOR;
    // The markers go to a folder of their own: rdump refuses a folder that
    // exists, as the marker's would.
    let probe = dump.path().join("markers");
    let markers: Vec<&str> = DATABASES.iter().map(|db| db.marker).collect();
    dump_from(image, offset, &probe, &markers, &[])?;
    let tree = dump.path().join("root");
    fs::create_dir_all(&tree).map_err(at("create", &tree))?;
    let Some(PackageDatabase { files, folders, .. }) = find(&probe, &manifest) else {
        return Err(SbomError::NoPackageDatabase(image.to_path_buf()));
    };
    dump_from(image, offset, &tree, files, folders)?;
    let inventory = Inventory::read(&tree, &manifest)?;
    Ok((manifest, inventory))
}

/// Dumps `files` and `folders` (relative paths) of the ext4 filesystem at
/// byte `offset` of `image` to the same places under `into`; what is
/// missing is left out.
fn dump_from(
    image: &Path,
    offset: u64,
    into: &Path,
    files: &[&str],
    folders: &[&str],
) -> Result<(), SbomError> {
    let mut commands = String::new();
    for file in files {
        let to = into.join(file);
        let parent = to.parent().expect("a file in a folder");
        fs::create_dir_all(parent).map_err(at("create", parent))?;
        commands.push_str(&format!("dump /{file} \"{}\"\n", to.display()));
    }
    for folder in folders {
        // rdump makes the folder itself inside the one it is given.
        let to = into.join(folder);
        let parent = to.parent().expect("a folder in a folder");
        fs::create_dir_all(parent).map_err(at("create", parent))?;
        commands.push_str(&format!("rdump /{folder} \"{}\"\n", parent.display()));
    }
    let script = tempfile::Builder::new()
        .prefix("imgforge-debugfs-")
        .suffix(".cmd")
        .tempfile()
        .map_err(ImageSbomError::TempDir)?;
    fs::write(script.path(), commands).map_err(at("write", script.path()))?;
    Tool::new("debugfs")
        .arg("-f")
        .arg(script.path())
        .arg(format!("{}?offset={offset}", image.display()))
        .run()
        .map_err(ImageSbomError::from)?;
    Ok(())
}
