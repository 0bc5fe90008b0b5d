//! The layout kept from a parent (`build --layout-from PARENT.raw`): what an
//! image imgforge built says about itself that a new image laid out on it
//! must keep (its seed, its disk size, its root partition's place), and the
//! digest of its root partition the new manifest records. Reads only.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::image::inspect::{self, InspectError, PartitionInfo};
use crate::image::layout::{PARTITIONS, ROOT, SECTOR};
use crate::image::manifest::LayoutParent;
use crate::platform::Architecture;
use crate::sys::fsio::{PathError, at};

#[derive(Debug, thiserror::Error)]
pub enum ParentError {
    #[error("--layout-from {path}: cannot read it as a disk image")]
    Inspect {
        path: PathBuf,
        #[source]
        source: InspectError,
    },
    #[error(
        "--layout-from {0}: the image carries no build manifest with a seed (it was built with \
         random ids, or not by imgforge): build the parent with `imgforge build --seed NAME`, or \
         build without --layout-from"
    )]
    NoSeed(PathBuf),
    #[error("--layout-from {path}: it is an {found} image and this build is {wanted}")]
    Architecture {
        path: PathBuf,
        found: String,
        wanted: String,
    },
    #[error(
        "--layout-from {path}: its disk ids come from seed `{parent}`, and this build asks for \
         --seed `{given}`; the new image keeps its parent's ids (its root filesystem is the \
         parent's): drop --seed or give `{parent}`"
    )]
    Seed {
        path: PathBuf,
        parent: String,
        given: String,
    },
    #[error(
        "--layout-from {path}: its disk is {parent_bytes} bytes and --size asks for {given_bytes}; \
         the new image keeps its parent's size: drop --size"
    )]
    Size {
        path: PathBuf,
        parent_bytes: u64,
        given_bytes: u64,
    },
    #[error("--layout-from {0}: the image has no partition named `root`")]
    NoRoot(PathBuf),
    #[error(transparent)]
    Io(#[from] PathError),
}

/// The parent image, read and checked before the build starts.
#[derive(Debug, Clone)]
pub struct Parent {
    pub image: PathBuf,
    /// The seed the parent's disk ids came from: the new image's too.
    pub seed: String,
    pub disk_bytes: u64,
    /// What the manifest records of the parent.
    pub record: LayoutParent,
    root: PartitionInfo,
}

impl Parent {
    /// Reads PARENT's partition table and manifest, checks it suits a build
    /// for `arch`, and digests its root partition.
    pub fn read(image: &Path, arch: &Architecture) -> Result<Self, ParentError> {
        let info = inspect::read_image(image).map_err(|source| ParentError::Inspect {
            path: image.to_path_buf(),
            source,
        })?;
        let seed = info
            .manifest
            .as_ref()
            .and_then(|m| m.seed.clone())
            .ok_or_else(|| ParentError::NoSeed(image.to_path_buf()))?;
        if let Some(found) = &info.architecture
            && found.name != arch.name
        {
            return Err(ParentError::Architecture {
                path: image.to_path_buf(),
                found: found.name.clone(),
                wanted: arch.name.clone(),
            });
        }
        let root = info
            .partitions
            .iter()
            .find(|p| p.name == PARTITIONS[ROOT].name)
            .cloned()
            .ok_or_else(|| ParentError::NoRoot(image.to_path_buf()))?;
        let root_sha256 = digest_range(image, root.first_lba * SECTOR, root.size_bytes)?;
        Ok(Self {
            image: image.to_path_buf(),
            seed,
            disk_bytes: info.size_bytes,
            record: LayoutParent {
                image: image
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                root_sha256,
            },
            root,
        })
    }

    /// The seed for the new image: the parent's; `--seed` may only repeat it.
    pub fn seed_for(&self, given: Option<&str>) -> Result<String, ParentError> {
        match given {
            Some(given) if given != self.seed => Err(ParentError::Seed {
                path: self.image.clone(),
                parent: self.seed.clone(),
                given: given.to_string(),
            }),
            _ => Ok(self.seed.clone()),
        }
    }

    /// The disk size for the new image: the parent's; `--size` may only
    /// repeat it.
    pub fn disk_bytes_for(&self, given: Option<u64>) -> Result<u64, ParentError> {
        match given {
            Some(given) if given != self.disk_bytes => Err(ParentError::Size {
                path: self.image.clone(),
                parent_bytes: self.disk_bytes,
                given_bytes: given,
            }),
            _ => Ok(self.disk_bytes),
        }
    }

    /// Where the parent's root partition starts, in bytes.
    pub fn root_offset(&self) -> u64 {
        self.root.first_lba * SECTOR
    }

    /// The parent's root partition's size, in bytes.
    pub fn root_bytes(&self) -> u64 {
        self.root.size_bytes
    }

    /// The parent's root filesystem as debugfs and e2fsck name it
    /// (`IMAGE?offset=BYTES`).
    pub fn filesystem_spec(&self) -> String {
        format!("{}?offset={}", self.image.display(), self.root_offset())
    }
}

/// sha256 of `bytes` bytes at `offset` of `path` (holes read as zeros).
fn digest_range(path: &Path, offset: u64, bytes: u64) -> Result<String, ParentError> {
    let file = File::open(path).map_err(at("open", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < bytes {
        let n = ((bytes - done) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], offset + done)
            .map_err(at("read", path))?;
        hasher.update(&buf[..n]);
        done += n as u64;
    }
    Ok(hex::encode(hasher.finalize()))
}
