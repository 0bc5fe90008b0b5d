//! `imgforge download`: EBS snapshot -> raw image file.

use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct DownloadArgs {
    /// The snapshot to read.
    pub snapshot_id: String,
    /// Where to write the image.
    #[arg(short, long)]
    pub output: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("download is not implemented yet")]
    NotImplemented,
}

pub fn run(_args: &DownloadArgs) -> Result<(), DownloadError> {
    Err(DownloadError::NotImplemented)
}
