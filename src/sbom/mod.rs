//! The software bill of materials of an image: every installed package
//! (name, version, architecture, source package, licence where the package
//! declares it machine-readably, a purl), the kernel and the image itself,
//! as SPDX 2.3 ([`spdx`]) and CycloneDX 1.5 ([`cyclonedx`]) JSON.
//!
//! One [`Inventory`] is read from a root tree (the build's, or what
//! [`image`] dumps from a finished image with debugfs) and the image's
//! manifest; the tree's package database ([`database`]: dpkg's, read by
//! [`dpkg`], or pacman's, read by [`alpm`]) lists the packages. Nothing in it comes from the clock or the file's path: the
//! time is the manifest's `build_time` (SOURCE_DATE_EPOCH) and the names
//! come from the manifest, so the same image gives the same bytes, from
//! the build, from `imgforge sbom`, inside the image and beside it.

pub mod alpm;
pub mod cyclonedx;
pub mod database;
pub mod dpkg;
pub mod image;
pub mod licence;
pub mod spdx;

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::image::manifest::Manifest;
use crate::sys::fsio::{PathError, at};
use database::{InstalledPackage, PackageDatabase};

/// Where the SBOMs live inside the image, beside the manifest.
pub const ROOTFS_SPDX: &str = "etc/imgforge/sbom.spdx.json";
pub const ROOTFS_CYCLONEDX: &str = "etc/imgforge/sbom.cdx.json";

#[derive(Debug, thiserror::Error)]
pub enum SbomError {
    #[error(transparent)]
    Io(#[from] PathError),
    #[error(
        "{0} has no package database imgforge reads (one of: {known}): no SBOM can be made \
         for it",
        known = known()
    )]
    NoPackageDatabase(PathBuf),
    #[error(transparent)]
    Alpm(#[from] alpm::AlpmError),
    #[error(transparent)]
    Image(#[from] image::ImageSbomError),
}

/// What the SBOM lists.
#[derive(Debug, Clone)]
pub struct Inventory {
    /// The image's name: distro-release-architecture-size class-seed.
    pub image_name: String,
    /// The image's version: its build time and seed.
    pub image_version: String,
    pub kernel_version: String,
    /// SOURCE_DATE_EPOCH of the build.
    pub created: u64,
    pub packages: Vec<Component>,
    /// The name of the package that carries the kernel, if one does.
    pub kernel_package: Option<String>,
}

/// One installed package.
#[derive(Debug, Clone)]
pub struct Component {
    pub package: InstalledPackage,
    /// SPDX expression, when the package declares one machine-readably.
    pub licence: Option<String>,
    pub purl: String,
}

impl Inventory {
    /// The inventory of the tree at `root` (a root filesystem with a
    /// package database of [`DATABASES`]) for the image
    /// `manifest` describes.
    pub fn read(root: &Path, manifest: &Manifest) -> Result<Self, SbomError> {
        let database =
            find(root, manifest).ok_or_else(|| SbomError::NoPackageDatabase(root.to_path_buf()))?;
        let listing = (database.read)(root, manifest)?;
        Ok(Self {
            image_name: format!(
                "{}-{}-{}-{}-{}",
                manifest.distro,
                manifest.release,
                manifest.architecture,
                manifest.size_class,
                manifest.seed.as_deref().unwrap_or("unseeded")
            ),
            image_version: format!("{}", manifest.build_time),
            kernel_version: manifest.kernel_version.clone(),
            created: manifest.build_time,
            packages: listing.packages,
            kernel_package: listing.kernel_package,
        })
    }

    /// A digest of everything listed: the documents' unique ids.
    pub fn digest(&self) -> String {
        let mut hash = Sha256::new();
        for part in [&self.image_name, &self.image_version, &self.kernel_version] {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
        for c in &self.packages {
            for part in [&c.purl, c.licence.as_deref().unwrap_or("")] {
                hash.update(part.as_bytes());
                hash.update([0]);
            }
        }
        hex(&hash.finalize())
    }

    /// The package that carries the kernel.
    pub fn kernel_package(&self) -> Option<&Component> {
        let name = self.kernel_package.as_deref()?;
        self.packages.iter().find(|c| c.package.name == name)
    }
}

/// Every database the SBOM reads.
pub const DATABASES: &[&PackageDatabase] = &[&dpkg::DATABASE, &alpm::DATABASE];

/// The database the tree at `root` holds: the one the manifest names
/// (the distro's), else, for a manifest from before it was kept, the first
/// whose marker the tree has.
pub fn find(root: &Path, manifest: &Manifest) -> Option<&'static PackageDatabase> {
    let held = |db: &&PackageDatabase| root.join(db.marker).is_file();
    match manifest.package_database.as_deref() {
        Some(name) => DATABASES
            .iter()
            .copied()
            .find(|db| db.name == name)
            .filter(held),
        None => DATABASES.iter().copied().find(held),
    }
}

/// `dpkg (var/lib/dpkg/status), pacman (...)`: what a tree may hold.
pub fn known() -> String {
    DATABASES
        .iter()
        .map(|db| format!("{} ({})", db.name, db.marker))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The build's SBOM stage: both documents of the tree at `root`, written
/// into it beside the manifest; `None` (with a warning) for a tree without
/// a package database imgforge reads.
pub fn write_into_tree(
    root: &Path,
    manifest: &Manifest,
) -> Result<Option<(String, String)>, SbomError> {
    let inventory = match Inventory::read(root, manifest) {
        Ok(inventory) => inventory,
        Err(SbomError::NoPackageDatabase(_)) => {
            log::warn!(
                "no SBOM: the tree has no package database imgforge reads (one of: {})",
                known()
            );
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let (spdx, cdx) = documents(&inventory);
    for (path, text) in [(ROOTFS_SPDX, &spdx), (ROOTFS_CYCLONEDX, &cdx)] {
        let path = root.join(path);
        let dir = path.parent().expect("a file in a folder");
        fs::create_dir_all(dir).map_err(at("create", dir))?;
        fs::write(&path, text).map_err(at("write", &path))?;
    }
    Ok(Some((spdx, cdx)))
}

/// Writes both documents beside `image`; returns their paths.
pub fn write_beside(
    image: &Path,
    documents: &(String, String),
) -> Result<(PathBuf, PathBuf), SbomError> {
    let (spdx_path, cdx_path) = beside(image);
    write_atomically(&spdx_path, &documents.0)?;
    write_atomically(&cdx_path, &documents.1)?;
    Ok((spdx_path, cdx_path))
}

/// The SBOM files of an image: `IMAGE.spdx.json` and `IMAGE.cdx.json`.
pub fn beside(image: &Path) -> (PathBuf, PathBuf) {
    let with = |suffix: &str| PathBuf::from(format!("{}{suffix}", image.display()));
    (with(".spdx.json"), with(".cdx.json"))
}

/// Both documents, as the bytes written everywhere.
pub fn documents(inventory: &Inventory) -> (String, String) {
    (spdx::document(inventory), cyclonedx::document(inventory))
}

/// Writes `text` to `path` through a temporary file in the same folder.
pub fn write_atomically(path: &Path, text: &str) -> Result<(), PathError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(at("create", dir))?;
    let temp = tempfile::Builder::new()
        .prefix(".imgforge-")
        .suffix(".partial")
        .tempfile_in(dir)
        .map_err(at("create a temporary file in", dir))?;
    fs::write(temp.path(), text).map_err(at("write", temp.path()))?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(temp.path(), fs::Permissions::from_mode(0o644))
        .map_err(at("chmod", temp.path()))?;
    temp.persist(path)
        .map_err(|e| at("rename into", path)(e.error))?;
    Ok(())
}

/// A file under `root`, following symbolic links as if `root` were `/`
/// (an absolute link, or a folder on the way such as
/// `usr/share/doc/PKG -> /usr/share/doc/OTHER`, never reaches the host's).
pub(crate) fn read_in_root(root: &Path, relative: &str) -> Option<String> {
    let mut pending: Vec<String> = relative.split('/').rev().map(String::from).collect();
    let mut inside: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "" | "." => continue,
            ".." => {
                inside.pop();
                continue;
            }
            _ => {}
        }
        let here = root.join(inside.join("/")).join(&part);
        let meta = fs::symlink_metadata(&here).ok()?;
        if !meta.file_type().is_symlink() {
            inside.push(part);
            continue;
        }
        links += 1;
        if links > 16 {
            return None;
        }
        let target = fs::read_link(&here).ok()?.to_string_lossy().into_owned();
        if target.starts_with('/') {
            inside.clear();
        }
        pending.extend(target.split('/').rev().map(String::from));
    }
    fs::read_to_string(root.join(inside.join("/"))).ok()
}

/// sha256 of `bytes`, in hex (an SBOM's digest, as upload would tag it).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_manifests_package_database_wins_over_another_in_the_tree() {
        let root = tempfile::tempdir().unwrap();
        for db in DATABASES {
            let marker = root.path().join(db.marker);
            std::fs::create_dir_all(marker.parent().unwrap()).unwrap();
            std::fs::write(&marker, "x").unwrap();
        }
        let manifest = |database: Option<&str>| -> Manifest {
            let mut value = serde_json::json!({
                "imgforge_version": "0", "distro": "arch", "release": "rolling",
                "architecture": "x86_64", "size_class": "small",
                "kernel_version": "6.12.1-arch1-1", "kernel_cmdline": "",
                "boot_modes": ["bios"],
                "disk": {"size_bytes": 0, "disk_guid": "", "partitions": []},
                "layers": [], "packages": [], "build_time": 0
            });
            if let Some(name) = database {
                value["package_database"] = name.into();
            }
            serde_json::from_value(value).unwrap()
        };
        let name = |m: &Manifest| find(root.path(), m).map(|db| db.name);
        assert_eq!(name(&manifest(Some("pacman"))), Some("pacman"));
        assert_eq!(name(&manifest(Some("dpkg"))), Some("dpkg"));
        // An older manifest: the first database the tree holds.
        assert_eq!(name(&manifest(None)), Some(DATABASES[0].name));
        // The distro's database missing is no database, not another's.
        std::fs::remove_file(root.path().join(alpm::DATABASE.marker)).unwrap();
        assert_eq!(name(&manifest(Some("pacman"))), None);
    }

    use super::*;
    use crate::sys::calendar::epoch_to_iso;

    #[test]
    fn times_are_utc_rfc3339() {
        assert_eq!(epoch_to_iso(0), "1970-01-01T00:00:00Z");
        assert_eq!(epoch_to_iso(1_795_897_038), "2026-11-28T20:17:18Z");
    }

    #[test]
    fn links_resolve_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        let doc = root.path().join("usr/share/doc");
        fs::create_dir_all(doc.join("libfoo-common")).unwrap();
        fs::write(doc.join("libfoo-common/copyright"), "inside").unwrap();
        std::os::unix::fs::symlink("libfoo-common", doc.join("libfoo1")).unwrap();
        std::os::unix::fs::symlink("/usr/share/doc/libfoo-common", doc.join("libfoo2")).unwrap();
        for name in ["libfoo1", "libfoo2"] {
            assert_eq!(
                read_in_root(root.path(), &format!("usr/share/doc/{name}/copyright")).as_deref(),
                Some("inside")
            );
        }
    }
}
