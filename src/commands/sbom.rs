//! `imgforge sbom IMAGE`: the SBOMs of an existing image (the engine is
//! [`imgforge::sbom`]), written beside it as `IMAGE.spdx.json` and
//! `IMAGE.cdx.json`, the same bytes the build wrote.

use std::path::PathBuf;

use imgforge::image::inspect::InspectError;
use imgforge::sbom::{self, SbomError, image::ImageSbomError};

use super::BadInput;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  imgforge sbom image.raw\n  \
imgforge sbom image.raw -o /tmp/sbom --json")]
pub struct SbomArgs {
    /// The raw image imgforge built (read without mounting; the image is
    /// never written).
    pub image: PathBuf,
    /// Write `NAME.spdx.json` and `NAME.cdx.json` into this folder instead
    /// of beside the image (NAME is the image's file name).
    #[arg(short, long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Print the paths written and the documents' sha256 as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, serde::Serialize)]
struct Written {
    spdx: PathBuf,
    spdx_sha256: String,
    cyclonedx: PathBuf,
    cyclonedx_sha256: String,
    packages: usize,
}

pub fn run(args: &SbomArgs) -> anyhow::Result<()> {
    super::inspect::require_file(&args.image)?;
    if let Some(dir) = &args.output_dir
        && !dir.is_dir()
    {
        return Err(BadInput::new(format!(
            "--output-dir {} is not a folder: create it first",
            dir.display()
        ))
        .into());
    }
    let (_, inventory) = sbom::image::read(&args.image).map_err(|err| match err {
        SbomError::Image(ImageSbomError::Inspect(InspectError::NotGpt { .. }))
        | SbomError::Image(ImageSbomError::NoManifest(_))
        | SbomError::NoPackageDatabase(_) => BadInput::from_error(err).into(),
        other => anyhow::Error::from(other),
    })?;
    let documents = sbom::documents(&inventory);
    let base = match &args.output_dir {
        Some(dir) => dir.join(args.image.file_name().unwrap_or_default()),
        None => args.image.clone(),
    };
    let (spdx, cyclonedx) = sbom::write_beside(&base, &documents)?;
    let written = Written {
        spdx,
        spdx_sha256: sbom::sha256_hex(documents.0.as_bytes()),
        cyclonedx,
        cyclonedx_sha256: sbom::sha256_hex(documents.1.as_bytes()),
        packages: inventory.packages.len(),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&written).expect("serializes")
        );
    } else {
        eprintln!(
            "wrote {} and {} ({} packages)",
            written.spdx.display(),
            written.cyclonedx.display(),
            written.packages
        );
    }
    Ok(())
}
