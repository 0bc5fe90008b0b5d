//! inspect
use std::path::PathBuf;
#[derive(Debug, clap::Args)]
pub struct InspectArgs { pub image: PathBuf }
pub fn run(_a: &InspectArgs) -> anyhow::Result<()> { Ok(()) }
