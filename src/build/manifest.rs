//! Stage 4 and the end of the build: the manifest recorded into the tree
//! and the ESP (its schema is [`crate::image::manifest`]), then the seal:
//! the image's sha256, and the image and `IMAGE.json` renamed into place.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::assemble::ImageFile;
use super::bootloader::BootFiles;
use super::bootstrap::Rootfs;
use super::context::BuildContext;
use crate::image::layout::DiskLayout;
use crate::image::manifest::{DiskManifest, ESP_PATH, Manifest, PartitionManifest, ROOTFS_PATH};
use crate::image::sparse;
use crate::sys::fsio::{PathError, at};
use crate::sys::interrupt::{self, Interrupted};

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(transparent)]
    Io(#[from] PathError),
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
    #[error("cannot move the finished image to {path}")]
    Persist {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Describes the image and writes that description into the root tree and
/// the ESP staging folder.
pub fn record(
    ctx: &BuildContext,
    rootfs: &Rootfs,
    boot: &BootFiles,
    layout: &DiskLayout,
    source_date_epoch: u64,
) -> Result<Manifest, ManifestError> {
    let request = &ctx.request;
    let partitions = layout
        .partitions
        .iter()
        .enumerate()
        .map(|(i, placed)| (i, placed, &placed.spec))
        .map(|(i, placed, spec)| PartitionManifest {
            number: i as u32 + 1,
            name: spec.name.to_string(),
            type_guid: spec.type_guid.to_string(),
            partition_guid: layout.ids.partition_guids[placed.slot].to_string(),
            first_lba: placed.first_lba,
            last_lba: placed.last_lba,
            filesystem: spec.filesystem.map(String::from),
            filesystem_uuid: match spec.filesystem {
                Some("ext4") => Some(layout.ids.root_fs_uuid.to_string()),
                Some("vfat") => Some(layout.ids.esp_volume_label()),
                _ => None,
            },
        })
        .collect();
    let manifest = Manifest {
        imgforge_version: env!("CARGO_PKG_VERSION").to_string(),
        distro: request.distro.data().name.clone(),
        release: request.release.clone(),
        architecture: request.architecture.name.clone(),
        size_class: request.size_class.name.clone(),
        profile: request.profile.name.clone(),
        kernel_version: rootfs.kernel.version.clone(),
        kernel_cmdline: boot.kernel_cmdline.clone(),
        boot_modes: boot.boot_modes.iter().map(|f| f.to_string()).collect(),
        disk: DiskManifest {
            size_bytes: layout.disk_bytes,
            disk_guid: layout.ids.disk_guid.to_string(),
            partitions,
        },
        layers: request.layers.iter().map(|l| l.name.clone()).collect(),
        packages: rootfs.packages.clone(),
        provisioning: rootfs.provisioned.clone(),
        build_time: source_date_epoch,
        seed: Some(ctx.seed.clone()),
        layout_from: ctx.parent.as_ref().map(|p| p.record.clone()),
        secure_boot: boot.secure_boot.clone(),
        tpm_tools: request.tpm_tools,
        package_database: request.distro.data().package_database.clone(),
        sha256: None,
    };
    for path in [rootfs.dir.join(ROOTFS_PATH), ctx.esp_dir().join(ESP_PATH)] {
        fs::create_dir_all(path.parent().expect("manifest path has a folder"))
            .map_err(at("create", &path))?;
        fs::write(&path, manifest.to_json()).map_err(at("write", &path))?;
    }
    Ok(manifest)
}

pub struct Sealed {
    pub sha256: String,
    pub manifest_path: PathBuf,
}

/// Hashes the finished image, then moves it and its manifest into place.
pub fn seal(
    image: ImageFile,
    mut manifest: Manifest,
    output: &Path,
) -> Result<Sealed, ManifestError> {
    let sha256 = sha256_sparse(image.temp.path())?;
    manifest.sha256 = Some(sha256.clone());
    let manifest_path = PathBuf::from(format!("{}.json", output.display()));
    let dir = manifest_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let json = tempfile::Builder::new()
        .prefix(".imgforge-")
        .suffix(".json.partial")
        .tempfile_in(dir)
        .map_err(at("create a temporary manifest in", dir))?;
    fs::write(json.path(), manifest.to_json()).map_err(at("write", json.path()))?;
    // Temporary files are private; the results are ordinary files.
    for path in [json.path(), image.temp.path()] {
        fs::set_permissions(path, fs::Permissions::from_mode(0o644)).map_err(at("chmod", path))?;
    }
    image
        .temp
        .persist(output)
        .map_err(|e| ManifestError::Persist {
            path: output.to_path_buf(),
            source: e.error,
        })?;
    json.persist(&manifest_path)
        .map_err(|e| ManifestError::Persist {
            path: manifest_path.clone(),
            source: e.error,
        })?;
    Ok(Sealed {
        sha256,
        manifest_path,
    })
}

/// sha256 of a file, feeding zeros for holes instead of reading them.
pub fn sha256_sparse(path: &Path) -> Result<String, ManifestError> {
    let mut file = fs::File::open(path).map_err(at("open", path))?;
    let len = file.metadata().map_err(at("stat", path))?.len();
    let extents = sparse::data_extents(&file, len).map_err(at("find the data in", path))?;
    let mut hasher = Sha256::new();
    let zeros = vec![0u8; 1 << 20];
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    let hash_zeros_to = |hasher: &mut Sha256, pos: &mut u64, end: u64| {
        while *pos < end {
            let n = (end - *pos).min(zeros.len() as u64) as usize;
            hasher.update(&zeros[..n]);
            *pos += n as u64;
        }
    };
    for extent in extents {
        hash_zeros_to(&mut hasher, &mut pos, extent.start);
        interrupt::check()?;
        file.seek(SeekFrom::Start(pos)).map_err(at("seek", path))?;
        while pos < extent.end {
            let n = (extent.end - pos).min(buf.len() as u64) as usize;
            file.read_exact(&mut buf[..n]).map_err(at("read", path))?;
            hasher.update(&buf[..n]);
            pos += n as u64;
        }
    }
    hash_zeros_to(&mut hasher, &mut pos, len);
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn sparse_hash_equals_plain_hash() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(5 << 20).unwrap();
        file.seek(SeekFrom::Start(3 << 20)).unwrap();
        file.write_all(b"data in the middle").unwrap();
        file.flush().unwrap();
        let plain = hex::encode(Sha256::digest(fs::read(file.path()).unwrap()));
        assert_eq!(sha256_sparse(file.path()).unwrap(), plain);
    }
}
