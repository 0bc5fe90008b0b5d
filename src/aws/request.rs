//! What an upload is asked to do, as plain values (the CLI and the config
//! file both fill it in), the checks that need no AWS (the image file, the
//! volume size, the timeouts), and what can go wrong.

use std::fs::File;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::ami::digest::DigestError;
use super::ami::instance_types::InstanceTypeError;
use super::ami::platform::InstancePlatformError;
use super::ami::register::{BootMode, ROOT_DEVICE, RegisterError};
use super::ami::same_name::SameNameError;
use super::ami::storage::Storage;
use super::client::{ClientError, Connection};
use super::ebs::blocks::BlocksError;
use super::ebs::delta::{DeltaError, ParentArg};
use super::ebs::journal::JournalError;
use super::ebs::snapshot::SnapshotError;
use super::ebs::writer::WriteError;
use super::kms::KmsError;
use super::output::{OutputError, UploadResult};
use super::publish::{PublishError, PublishPlan};
use crate::platform::Architecture;
use crate::sys::interrupt::Interrupted;
use crate::units::{ByteSize, format_duration};

const GIB: u64 = 1 << 30;

/// EBS's largest volume.
pub const MAX_VOLUME_GIB: u64 = 65_536;

/// Everything `upload` needs; no clap in here.
#[derive(Debug, Clone)]
pub struct UploadRequest {
    pub image: PathBuf,
    pub connection: Connection,
    /// AMI name; None: derived from the file name and the content hash.
    pub name: Option<String>,
    pub description: Option<String>,
    /// Tags for the snapshot and the AMI, in every region.
    pub tags: Vec<(String, String)>,
    /// Tags for the snapshots only, in every region.
    pub snapshot_tags: Vec<(String, String)>,
    /// The volume's size, a whole number of GiB; None: the image's size
    /// rounded up to a GiB.
    pub volume_size: Option<ByteSize>,
    /// Concurrent PutSnapshotBlock requests.
    pub workers: usize,
    /// None: read from the image.
    pub boot_mode: Option<BootMode>,
    /// None: read from the image (see [`super::ami::platform`]).
    pub architecture: Option<&'static Architecture>,
    pub tpm: bool,
    /// RegisterImage's UefiData (base64, AWS's format, at most 64,000
    /// characters): the Secure Boot variables the instance starts with.
    pub uefi_data: Option<String>,
    pub encrypted: bool,
    pub kms_key_id: Option<String>,
    pub no_register: bool,
    /// Replace an AMI of the name that holds another image (`--replace`).
    pub force_deregister: bool,
    pub keep_snapshot: bool,
    pub output_dir: PathBuf,
    /// None: IMAGE.upload-journal.json beside the image.
    pub journal: Option<PathBuf>,
    /// Make the snapshot incremental to this parent (only changed blocks
    /// are written).
    pub parent: Option<ParentArg>,
    /// The block digest store of published snapshots; None: the user's
    /// state directory (see [`super::ebs::delta::DigestStore::new`]).
    pub state_dir: Option<PathBuf>,
    /// StartSnapshot's Timeout: how long EBS keeps a pending snapshot that
    /// receives no block (whole minutes, 10 minutes to 72 hours).
    pub snapshot_timeout: Duration,
    /// How long to wait for the snapshot to become `completed`.
    pub wait_timeout: Duration,
    /// The root volume's type, IOPS and throughput; extra volumes.
    pub storage: Storage,
    /// Instance types the image must run on, checked before any upload.
    pub instance_types: Vec<String>,
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
pass --volume-size {needed}G or more, or leave it out"
    )]
    VolumeTooSmall { given: u64, size: u64, needed: u64 },
    #[error(
        "--volume-size {given} is not a whole number of GiB (EBS sizes volumes in GiB); e.g. 8G"
    )]
    VolumeNotWholeGib { given: ByteSize },
    #[error("the volume would be {gib} GiB; EBS volumes hold at most {MAX_VOLUME_GIB} GiB")]
    VolumeTooLarge { gib: u64 },
    #[error("--tpm needs UEFI: pass --boot-mode uefi or uefi-preferred")]
    TpmNeedsUefi,
    #[error("--snapshot-timeout {given} is out of range: EBS takes 10m to 72h, in whole minutes")]
    BadSnapshotTimeout { given: String },
    #[error(transparent)]
    Platform(#[from] InstancePlatformError),
    #[error(
        "--name {template:?} takes {{date}} from the image's build manifest, and {} has none \
(or no build_time); give the date in the name, or upload the image `imgforge build` wrote with \
its manifest beside it", manifest.display()
    )]
    NoBuildDate { template: String, manifest: PathBuf },
    #[error(transparent)]
    Digest(#[from] DigestError),
    #[error(transparent)]
    SameName(#[from] SameNameError),
    #[error(transparent)]
    Kms(#[from] KmsError),
    #[error("{0}")]
    Storage(String),
    #[error(transparent)]
    InstanceTypes(#[from] InstanceTypeError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Blocks(#[from] BlocksError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Register(#[from] RegisterError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error(transparent)]
    Delta(#[from] DeltaError),
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
    /// Interrupted after the snapshot was started: nothing is deleted, so
    /// that the same command resumes.
    #[error(
        "interrupted; snapshot {snapshot_id} and the journal {journal} are kept: rerun the same \
command to resume"
    )]
    KeptForResume {
        snapshot_id: String,
        journal: PathBuf,
    },
    #[error("{source}\n{cleanup}")]
    AfterSnapshot {
        #[source]
        source: Box<UploadError>,
        cleanup: String,
    },
}

impl UploadError {
    /// Whether this failure is the user's Ctrl-C (or SIGTERM), at whatever
    /// depth it was noticed.
    pub fn is_interrupted(&self) -> bool {
        match self {
            Self::Interrupted(_) | Self::KeptForResume { .. } => true,
            Self::Write(err) => err.is_interrupted(),
            Self::Snapshot(err) => matches!(err, SnapshotError::Interrupted(_)),
            Self::Blocks(err) => matches!(err, BlocksError::Interrupted(_)),
            Self::Register(err) => matches!(
                err,
                RegisterError::Interrupted(_)
                    | RegisterError::Snapshot(SnapshotError::Interrupted(_))
            ),
            Self::Delta(err) => matches!(err, DeltaError::Interrupted(_)),
            Self::Kms(err) => matches!(err, KmsError::Interrupted(_)),
            Self::InstanceTypes(err) => matches!(err, InstanceTypeError::Interrupted(_)),
            Self::SameName(SameNameError::Register(err)) => {
                matches!(err, RegisterError::Interrupted(_))
            }
            Self::Publish(err) => matches!(err, PublishError::Interrupted(_)),
            Self::AfterSnapshot { source, .. } => source.is_interrupted(),
            _ => false,
        }
    }
}

/// The checks of a request that need neither AWS nor a pass over the
/// image: the file, the volume size, the snapshot timeout, --tpm against
/// --boot-mode. The command line runs them before any work (bad input);
/// [`upload`] relies on them again.
pub fn check(req: &UploadRequest) -> Result<(), UploadError> {
    let (_, size) = open_image(&req.image)?;
    let root_gib = volume_size_gib(req.volume_size, size)?;
    req.storage
        .check(ROOT_DEVICE, root_gib)
        .map_err(UploadError::Storage)?;
    snapshot_timeout_minutes(req)?;
    if req.tpm && req.boot_mode == Some(BootMode::LegacyBios) {
        return Err(UploadError::TpmNeedsUefi);
    }
    if let Some(template) = &req.name {
        render_template(&req.image, template)?;
    }
    Ok(())
}

/// `--name` with `{date}` replaced by the image's build date (its manifest).
pub fn render_template(image: &Path, template: &str) -> Result<String, UploadError> {
    if !crate::aws::ami::names::has_date(template) {
        return Ok(template.to_string());
    }
    let date =
        crate::aws::ami::digest::build_date(image).ok_or_else(|| UploadError::NoBuildDate {
            template: template.to_string(),
            manifest: PathBuf::from(format!("{}.json", image.display())),
        })?;
    Ok(crate::aws::ami::names::render_name(template, &date))
}

/// Opens the image and checks that it is something we can upload.
pub fn open_image(path: &Path) -> Result<(File, u64), UploadError> {
    let bad = |reason: String| UploadError::BadImage {
        path: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_block_device() {
            "a block device"
        } else {
            "not a regular file"
        };
        return Err(bad(format!(
            "is {what}; upload takes a raw disk image file (e.g. from `imgforge build -o image.raw`)"
        )));
    }
    let file = File::open(path).map_err(|e| bad(format!("cannot open it: {e}")))?;
    let size = meta.len();
    if size == 0 {
        return Err(bad("is empty; there is nothing to upload".into()));
    }
    if size % 512 != 0 {
        log::warn!(
            "{}: {size} bytes is not a multiple of 512; the last block is padded with zeros",
            path.display()
        );
    }
    Ok((file, size))
}

/// The requested volume size in GiB, if any (a whole number of GiB).
pub fn requested_gib(requested: Option<ByteSize>) -> Result<Option<u64>, UploadError> {
    match requested {
        None => Ok(None),
        Some(given) if !given.bytes().is_multiple_of(GIB) => {
            Err(UploadError::VolumeNotWholeGib { given })
        }
        Some(given) => Ok(Some(given.bytes() / GIB)),
    }
}

pub fn volume_size_gib(requested: Option<ByteSize>, image_size: u64) -> Result<u64, UploadError> {
    let needed = image_size.div_ceil(GIB);
    let gib = match requested_gib(requested)? {
        Some(given) if given < needed => {
            return Err(UploadError::VolumeTooSmall {
                given,
                size: image_size,
                needed,
            });
        }
        Some(given) => given,
        None => needed,
    };
    if gib > MAX_VOLUME_GIB {
        return Err(UploadError::VolumeTooLarge { gib });
    }
    Ok(gib)
}

/// StartSnapshot's Timeout, in minutes (10 to 4320).
pub fn snapshot_timeout_minutes(req: &UploadRequest) -> Result<u32, UploadError> {
    let minutes = req.snapshot_timeout.as_secs() / 60;
    if !req.snapshot_timeout.as_secs().is_multiple_of(60) || !(10..=4320).contains(&minutes) {
        return Err(UploadError::BadSnapshotTimeout {
            given: format_duration(req.snapshot_timeout),
        });
    }
    Ok(minutes as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::ami::names::default_ami_name;

    #[test]
    fn volume_size_rules() {
        assert_eq!(volume_size_gib(None, 1).unwrap(), 1);
        assert_eq!(volume_size_gib(None, GIB).unwrap(), 1);
        assert_eq!(volume_size_gib(None, GIB + 1).unwrap(), 2);
        assert!(matches!(
            volume_size_gib(Some(ByteSize(GIB)), GIB + 1),
            Err(UploadError::VolumeTooSmall { needed: 2, .. })
        ));
        assert!(matches!(
            volume_size_gib(Some(ByteSize(70_000 * GIB)), 1),
            Err(UploadError::VolumeTooLarge { .. })
        ));
        assert!(matches!(
            volume_size_gib(Some(ByteSize(GIB + 1)), 1),
            Err(UploadError::VolumeNotWholeGib { .. })
        ));
    }

    #[test]
    fn default_name_is_valid_and_stable() {
        let name = default_ami_name(Path::new("/x/my image+v1.raw"), &"ab".repeat(32));
        assert_eq!(name, "my image-v1-abababababab");
        assert!(crate::aws::ami::names::parse_ami_name(&name).is_ok());
    }

    #[test]
    fn image_checks() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            open_image(dir.path()),
            Err(UploadError::BadImage { .. })
        ));
        let empty = dir.path().join("empty.raw");
        std::fs::write(&empty, b"").unwrap();
        let err = open_image(&empty).unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
        let odd = dir.path().join("odd.raw");
        std::fs::write(&odd, b"abc").unwrap();
        assert_eq!(open_image(&odd).unwrap().1, 3);
    }
}
