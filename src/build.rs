//! build
#[derive(Debug, clap::Args)]
pub struct BuildArgs {}
pub fn run(_a: &BuildArgs) -> anyhow::Result<()> { Ok(()) }
