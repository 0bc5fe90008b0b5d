//! imgforge's built-in data (`rootfs/`, `boot/`, `kernel-configs/`): embedded
//! in the binary by the build script beside this file, unpacked into a
//! private temporary folder when a command needs it, or read from
//! `--data-dir` / `IMGFORGE_DATA_DIR` instead (a folder with the same three
//! subfolders, e.g. a checkout being edited).

use std::path::{Path, PathBuf};

use tempfile::TempDir;

/// The tar archive of the data folders, made by `src/data/embed.rs`.
const EMBEDDED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/data.tar"));

/// The environment variable that overrides the embedded data.
pub const DATA_DIR_ENV: &str = "IMGFORGE_DATA_DIR";

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(
        "data directory {0} has no rootfs/ folder: point --data-dir (or IMGFORGE_DATA_DIR) at a \
         folder with rootfs/, boot/ and kernel-configs/, e.g. an imgforge checkout"
    )]
    NotData(PathBuf),
    #[error("cannot unpack imgforge's built-in data into a temporary folder")]
    Unpack(#[source] std::io::Error),
    #[error("cannot read {path} from the data directory {dir}")]
    Read {
        path: String,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A folder holding the data, for as long as this value lives.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    /// The unpacked embedded copy, removed on drop.
    _unpacked: Option<TempDir>,
}

impl DataDir {
    /// `dir`, else `IMGFORGE_DATA_DIR`, else the embedded data.
    pub fn open(dir: Option<&Path>) -> Result<Self, DataError> {
        let chosen = dir
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os(DATA_DIR_ENV).map(PathBuf::from));
        if let Some(path) = chosen {
            if !path.join("rootfs").is_dir() {
                return Err(DataError::NotData(path));
            }
            return Ok(Self {
                path,
                _unpacked: None,
            });
        }
        let unpacked = tempfile::Builder::new()
            .prefix("imgforge-data-")
            .tempdir()
            .map_err(DataError::Unpack)?;
        let mut archive = tar::Archive::new(EMBEDDED);
        archive.set_preserve_permissions(true);
        archive.unpack(unpacked.path()).map_err(DataError::Unpack)?;
        Ok(Self {
            path: unpacked.path().to_path_buf(),
            _unpacked: Some(unpacked),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this is the copy built into the binary.
    pub fn is_embedded(&self) -> bool {
        self._unpacked.is_some()
    }

    /// A file below the data directory, e.g. `boot/grub.cfg.tmpl`.
    pub fn read_to_string(&self, relative: &str) -> Result<String, DataError> {
        std::fs::read_to_string(self.path.join(relative)).map_err(|source| DataError::Read {
            path: relative.to_string(),
            dir: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn embedded_data_keeps_modes_and_symlinks_and_goes_away() {
        let data = DataDir::open(None).unwrap();
        assert!(data.is_embedded());
        let report = data
            .path()
            .join("rootfs/base/usr/local/libexec/imgforge/report");
        let mode = std::fs::metadata(&report).unwrap().permissions().mode();
        assert!(
            mode & 0o111 != 0,
            "report script keeps its exec bits: {mode:o}"
        );
        let link = data
            .path()
            .join("rootfs/distros/arch/layer/etc/resolv.conf");
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            Path::new("/run/systemd/resolve/stub-resolv.conf")
        );
        assert!(
            data.read_to_string("boot/grub.cfg.tmpl")
                .unwrap()
                .contains("menuentry")
        );
        let path = data.path().to_path_buf();
        drop(data);
        assert!(!path.exists());
    }

    #[test]
    fn a_data_dir_without_rootfs_is_refused() {
        let empty = tempfile::tempdir().unwrap();
        let err = DataDir::open(Some(empty.path())).unwrap_err().to_string();
        assert!(err.contains("no rootfs/"), "{err}");
        let checkout = DataDir::open(Some(Path::new(env!("CARGO_MANIFEST_DIR")))).unwrap();
        assert!(!checkout.is_embedded());
    }
}
