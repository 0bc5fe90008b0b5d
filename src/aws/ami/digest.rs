//! The image's identity as AWS resources carry it: the sha256 of the whole
//! raw image, tagged ([`IMAGE_SHA256_TAG`]) on every snapshot and AMI
//! imgforge makes, so that an AMI name never hides other content: an AMI of
//! the same name is reused only when its tag names the same image.
//!
//! The digest comes from the build manifest beside the image (`IMAGE.json`)
//! when that can be trusted ([`trusted_manifest_sha256`]), else from one
//! pass over the image. The manifest also dates the image (`{date}` in a
//! name template): a rerun on another day resumes instead of renaming.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::aws::ami::names::FAMILY_TAG;
use crate::aws::ebs::journal::{ImageIdentity, trusted_manifest_sha256};
use crate::image::manifest::Manifest;

/// The tag holding the image's sha256 on every snapshot and AMI imgforge makes.
pub const IMAGE_SHA256_TAG: &str = "imgforge:image-sha256";

/// The image's sha256 and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageDigest {
    /// Lower-case hex.
    pub sha256: String,
    /// From a trusted build manifest (no pass over the image).
    pub from_manifest: bool,
    /// Bytes read to compute it (0 from the manifest).
    pub bytes_read: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    #[error("{path}: cannot read it to compute its sha256: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The digest of `image` (open as `file`, `size` bytes).
pub fn of(
    image: &Path,
    file: &File,
    size: u64,
    identity: &ImageIdentity,
) -> Result<ImageDigest, DigestError> {
    if let Some(sha256) = trusted_manifest_sha256(image, identity) {
        return Ok(ImageDigest {
            sha256: sha256.to_ascii_lowercase(),
            from_manifest: true,
            bytes_read: 0,
        });
    }
    log::info!(
        "{}: no trusted build manifest beside it; hashing the image for its sha256",
        image.display()
    );
    let (sha256, bytes_read) = file_sha256(file, size).map_err(|source| DigestError::Read {
        path: image.to_path_buf(),
        source,
    })?;
    Ok(ImageDigest {
        sha256,
        from_manifest: false,
        bytes_read,
    })
}

/// sha256 of the first `size` bytes of `file`, with a progress bar, and
/// the bytes read: holes (SEEK_DATA/SEEK_HOLE) are hashed as zeros unread.
fn file_sha256(file: &File, size: u64) -> std::io::Result<(String, u64)> {
    let bar = ProgressBar::new(size).with_style(
        ProgressStyle::with_template(
            "sha256    {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}",
        )
        .expect("valid template"),
    );
    let zeros = vec![0u8; 1 << 20];
    let mut buffer = vec![0u8; 1 << 20];
    let mut hasher = Sha256::new();
    let mut at = 0;
    let mut read = 0;
    let hash_zeros = |hasher: &mut Sha256, mut len: u64| {
        while len > 0 {
            let n = len.min(zeros.len() as u64);
            hasher.update(&zeros[..n as usize]);
            len -= n;
            bar.inc(n);
        }
    };
    for extent in crate::image::sparse::data_extents(file, size)? {
        hash_zeros(&mut hasher, extent.start - at);
        at = extent.start;
        while at < extent.end {
            crate::sys::interrupt::check().map_err(std::io::Error::other)?;
            let want = buffer.len().min((extent.end - at) as usize);
            file.read_exact_at(&mut buffer[..want], at)?;
            hasher.update(&buffer[..want]);
            at += want as u64;
            read += want as u64;
            bar.inc(want as u64);
        }
    }
    hash_zeros(&mut hasher, size - at);
    bar.finish_and_clear();
    Ok((hex::encode(hasher.finalize()), read))
}

/// The tags naming what a snapshot or AMI holds: the image's sha256 and its
/// family.
pub fn identity_tags(digest: &ImageDigest, family: &str) -> Vec<(String, String)> {
    vec![
        (IMAGE_SHA256_TAG.to_string(), digest.sha256.clone()),
        (FAMILY_TAG.to_string(), family.to_string()),
    ]
}

/// The image's build date as `YYYYMMDD` (UTC), from its build manifest
/// (`IMAGE.json` beside it): what `{date}` in a name template means.
pub fn build_date(image: &Path) -> Option<String> {
    let path = PathBuf::from(format!("{}.json", image.display()));
    let manifest = Manifest::from_json(&std::fs::read_to_string(path).ok()?).ok()?;
    let text = crate::aws::ami::names::format_rfc3339(manifest.build_time as i64);
    Some(text.get(..10)?.replace('-', ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_sha256_matches_sha2() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.raw");
        let mut data = vec![0u8; 5_000_003];
        for (i, b) in data[2_100_000..3_000_001].iter_mut().enumerate() {
            *b = (i % 251) as u8 + 1;
        }
        let file = File::create(&path).unwrap();
        file.set_len(data.len() as u64).unwrap();
        file.write_all_at(&data[2_100_000..3_000_001], 2_100_000)
            .unwrap();
        let file = File::open(&path).unwrap();
        let (sha, read) = file_sha256(&file, data.len() as u64).unwrap();
        assert_eq!(sha, hex::encode(Sha256::digest(&data)));
        assert!(read < 2_000_000, "the holes are not read: {read}");
    }

    #[test]
    fn build_date_comes_from_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("i.raw");
        assert_eq!(build_date(&image), None);
        let manifest = serde_json::json!({
            "imgforge_version": "t", "distro": "debian", "release": "bookworm",
            "architecture": "x86_64", "size_class": "small", "kernel_version": "6.1",
            "kernel_cmdline": "", "boot_modes": ["bios"],
            "disk": {"size_bytes": 1, "disk_guid": "0", "partitions": []},
            "layers": [], "packages": [], "build_time": 1_764_633_600u64,
        });
        std::fs::write(dir.path().join("i.raw.json"), manifest.to_string()).unwrap();
        assert_eq!(build_date(&image).as_deref(), Some("20251202"));
    }
}
