//! `imgforge export`: convert a raw image for other hypervisors.

use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The raw image to convert.
    pub image: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("export is not implemented yet")]
    NotImplemented,
}

pub fn run(_args: &ExportArgs) -> Result<(), ExportError> {
    Err(ExportError::NotImplemented)
}
