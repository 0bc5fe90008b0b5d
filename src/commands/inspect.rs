//! `imgforge inspect IMAGE`: the command line only; the reader is
//! [`imgforge::image::inspect`]. An image that cannot be opened, or that is
//! not a GPT disk, is bad input (exit status 2).

use std::path::{Path, PathBuf};

use imgforge::image::inspect::{self, ImageInfo, InspectError};

use super::BadInput;

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The raw image to read.
    pub image: PathBuf,
    /// Print the result as JSON (for scripts).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &InspectArgs) -> anyhow::Result<()> {
    let info = read(&args.image)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&info).expect("serializes")
        );
    } else {
        print!("{}", inspect::render(&info));
    }
    Ok(())
}

/// Reads an image given on the command line: a file that is missing or is
/// not a GPT disk is bad input, an I/O error while reading a failure.
fn read(image: &Path) -> anyhow::Result<ImageInfo> {
    require_file(image)?;
    inspect::read_image(image).map_err(|err| match err {
        InspectError::NotGpt { .. } => BadInput::from_error(err).into(),
        other => other.into(),
    })
}

/// The image must exist and be readable before any work starts.
pub fn require_file(image: &Path) -> Result<(), BadInput> {
    std::fs::File::open(image)
        .map(drop)
        .map_err(|err| BadInput::new(format!("cannot read {}: {err}", image.display())))
}
