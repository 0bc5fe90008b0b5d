//! The package databases the SBOM reads, one per package manager (dpkg's
//! status file, pacman's local database). Each says, as data, which file
//! marks it in a root tree and what `imgforge sbom` dumps of it from a
//! finished image, and reads its installed packages. The tree decides
//! which one applies (the one whose marker it holds, see
//! [`super::DATABASES`]): no distro name is tested anywhere in the SBOM.

use std::path::Path;

use super::{Component, SbomError};
use crate::image::manifest::Manifest;

/// One installed package, as its package manager recorded it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct InstalledPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// The source package and its version (the binary's own when the
    /// database records none).
    pub source: String,
    pub source_version: String,
}

/// What a database lists: every installed package (sorted by name and
/// architecture) with its licence and purl, and the package that carries
/// the image's kernel, when one does.
#[derive(Debug, Clone)]
pub struct Listing {
    pub packages: Vec<Component>,
    pub kernel_package: Option<String>,
}

/// A package manager's database, as the SBOM reads it.
pub struct PackageDatabase {
    /// The package manager, for messages.
    pub name: &'static str,
    /// The file (relative to the root) whose presence says the tree holds
    /// this database.
    pub marker: &'static str,
    /// What [`PackageDatabase::read`] reads: files, and whole folders.
    pub files: &'static [&'static str],
    pub folders: &'static [&'static str],
    /// The packages of the tree at `root`, for the image `manifest` describes.
    pub read: fn(root: &Path, manifest: &Manifest) -> Result<Listing, SbomError>,
}

/// purl's percent-encoding: everything but letters, digits, `.-_~` and
/// `:` (which the purl specification says is never encoded).
pub fn percent(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b'~' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
