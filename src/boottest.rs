//! `imgforge boot-test`: boot an image under QEMU and check the guest's report.

use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct BootTestArgs {
    /// The image to boot (raw, qcow2, vdi or vmdk).
    pub image: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum BootTestError {
    #[error("boot-test is not implemented yet")]
    NotImplemented,
}

pub fn run(_args: &BootTestArgs) -> Result<(), BootTestError> {
    Err(BootTestError::NotImplemented)
}
