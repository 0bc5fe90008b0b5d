//! What an upload is asked to do, as plain values (the CLI and the config
//! file both fill it in), and what can go wrong.

use std::path::PathBuf;

use super::ami::platform::PlatformError;
use super::ami::register::{Architecture, BootMode, RegisterError};
use super::client::{ClientError, ConnectionArgs};
use super::ebs::blocks::BlocksError;
use super::ebs::delta::{DeltaError, ParentArg};
use super::ebs::journal::JournalError;
use super::ebs::snapshot::SnapshotError;
use super::output::{OutputError, UploadResult};
use super::publish::{PublishError, PublishPlan};

/// EBS's largest volume.
pub const MAX_VOLUME_GIB: u64 = 65_536;

/// Everything `upload` needs; no clap in here.
#[derive(Debug, Clone)]
pub struct UploadRequest {
    pub image: PathBuf,
    pub connection: ConnectionArgs,
    /// AMI name; None: derived from the file name and the content hash.
    pub name: Option<String>,
    pub description: Option<String>,
    /// Tags for the snapshot and the AMI, in every region.
    pub tags: Vec<(String, String)>,
    /// Tags for the snapshots only, in every region.
    pub snapshot_tags: Vec<(String, String)>,
    pub volume_size: Option<u64>,
    pub workers: u32,
    /// None: read from the image.
    pub boot_mode: Option<BootMode>,
    /// None: read from the image (see [`super::platform`]).
    pub architecture: Option<Architecture>,
    pub tpm: bool,
    pub encrypted: bool,
    pub kms_key_id: Option<String>,
    pub no_register: bool,
    pub force_deregister: bool,
    pub keep_snapshot: bool,
    pub output_dir: PathBuf,
    /// None: IMAGE.upload-journal.json beside the image.
    pub journal: Option<PathBuf>,
    /// Make the snapshot incremental to this parent (only changed blocks
    /// are written).
    pub parent: Option<ParentArg>,
    /// The block digest store of published snapshots; None: the user's
    /// state directory (see [`super::delta::DigestStore::new`]).
    pub state_dir: Option<PathBuf>,
    pub snapshot_timeout: u32,
    /// Minutes.
    pub wait_timeout: u64,
    /// Copies, sharing, deprecation, SSM, after the AMI exists.
    pub publish: PublishPlan,
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(
        "published in {}; failed in {}",
        if succeeded.is_empty() { "no region".to_string() } else { succeeded.join(", ") },
        failed.iter().map(|(r, e)| format!("{r} ({e})")).collect::<Vec<_>>().join("; ")
    )]
    PartialPublish {
        succeeded: Vec<String>,
        failed: Vec<(String, String)>,
        result: Box<UploadResult>,
    },
    #[error("{path}: {reason}")]
    BadImage { path: PathBuf, reason: String },
    #[error(
        "--volume-size {given} GiB is smaller than the image ({size} bytes needs {needed} GiB); \
pass --volume-size {needed} or more, or leave it out"
    )]
    VolumeTooSmall { given: u64, size: u64, needed: u64 },
    #[error("the volume would be {gib} GiB; EBS volumes hold at most {MAX_VOLUME_GIB} GiB")]
    VolumeTooLarge { gib: u64 },
    #[error("--tpm needs UEFI: pass --boot-mode uefi or uefi-preferred")]
    TpmNeedsUefi,
    #[error(transparent)]
    Platform(#[from] PlatformError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Blocks(#[from] BlocksError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Register(#[from] RegisterError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error(
        "{path} changed while it was being uploaded (its size, modification time or content \
differs from when the upload started); the snapshot is not completed: do not modify an image \
during its upload, then upload it again"
    )]
    ImageChanged { path: PathBuf },
    #[error("the upload journal {path} is damaged ({reason}); delete it and upload again")]
    BadJournal { path: PathBuf, reason: String },
    #[error(transparent)]
    Delta(#[from] DeltaError),
    #[error(
        "interrupted; snapshot {snapshot_id} and the journal {journal} are kept: rerun the same command to resume"
    )]
    Interrupted {
        snapshot_id: String,
        journal: PathBuf,
    },
    #[error("{source}\n{cleanup}")]
    AfterSnapshot {
        #[source]
        source: Box<UploadError>,
        cleanup: String,
    },
    #[error("StartSnapshot kept answering snapshots in state `error`; see the warnings above")]
    StartKeepsFailing,
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}
