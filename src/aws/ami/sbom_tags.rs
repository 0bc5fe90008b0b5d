//! The image's SBOM digests as tags on its snapshot and AMI, so that an
//! SBOM file can be matched to the AMI it describes (compare its sha256
//! with the tag).
//!
//! The documents are made again from the image itself, not read from the
//! files beside it (which may belong to another build of the same name):
//! the SBOM is reproducible, so these are the bytes the build wrote.

use std::path::Path;

use crate::sbom;

/// The SPDX document's sha256.
pub const SBOM_SPDX_TAG: &str = "imgforge:sbom-spdx-sha256";
/// The CycloneDX document's sha256.
pub const SBOM_CYCLONEDX_TAG: &str = "imgforge:sbom-cdx-sha256";

/// Both tags for `image`; none (with a note in the log) when no SBOM can
/// be made for it (an image without a manifest or a package database imgforge reads).
pub fn of(image: &Path) -> Vec<(String, String)> {
    match sbom::image::read(image) {
        Ok((_, inventory)) => {
            let (spdx, cyclonedx) = sbom::documents(&inventory);
            vec![
                (SBOM_SPDX_TAG.into(), sbom::sha256_hex(spdx.as_bytes())),
                (
                    SBOM_CYCLONEDX_TAG.into(),
                    sbom::sha256_hex(cyclonedx.as_bytes()),
                ),
            ]
        }
        Err(err) => {
            log::info!("{}: no SBOM digest tags: {err}", image.display());
            Vec::new()
        }
    }
}
