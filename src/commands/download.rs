//! `imgforge download`: the command line only. The flags become a plain
//! [`DownloadRequest`] for the engine ([`imgforge::aws::ebs::download`]).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use imgforge::aws::client;
use imgforge::aws::ebs::download::{self, DownloadError, DownloadRequest};
use imgforge::units::ByteSize;

use super::aws_options::AwsOptions;

#[derive(Debug, Args)]
#[command(after_help = "Example:\n  imgforge download snap-0123456789abcdef0 -o image.raw")]
pub struct DownloadArgs {
    /// The snapshot to read (it must be `completed`).
    pub snapshot_id: String,
    /// Where to write the image (created or truncated; sparse).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Size of the output file (e.g. 8G; a bare number is bytes). Default: the
    /// snapshot's volume size. Blocks past this size must be empty.
    #[arg(long, value_name = "SIZE")]
    pub size: Option<ByteSize>,
    /// Concurrent GetSnapshotBlock requests.
    #[arg(long, default_value_t = 64, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: u32,
    #[command(flatten)]
    pub aws: AwsOptions,
}

impl DownloadArgs {
    /// The plain request the engine takes; bad flags are [`super::BadInput`].
    pub fn to_request(&self) -> anyhow::Result<DownloadRequest> {
        Ok(DownloadRequest {
            snapshot_id: self.snapshot_id.clone(),
            output: self.output.clone(),
            size: self.size,
            workers: self.workers as usize,
            connection: self.aws.to_connection()?,
        })
    }
}

pub fn run(args: &DownloadArgs) -> anyhow::Result<()> {
    let request = args.to_request()?;
    let runtime = client::runtime().context("cannot start the async runtime")?;
    match runtime.block_on(download::download(&request)) {
        Err(err @ DownloadError::Interrupted(_)) => {
            eprintln!(
                "imgforge: {} is incomplete; download again",
                request.output.display()
            );
            Err(err.into())
        }
        other => Ok(other?),
    }
}
