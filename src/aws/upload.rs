//! `imgforge upload`: image -> EBS snapshot -> AMI.

use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct UploadArgs {
    /// The raw image to upload.
    pub image: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("upload is not implemented yet")]
    NotImplemented,
}

pub fn run(_args: &UploadArgs) -> Result<(), UploadError> {
    Err(UploadError::NotImplemented)
}
