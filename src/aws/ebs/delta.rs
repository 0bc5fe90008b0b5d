//! Delta publishing: a snapshot incremental to a parent snapshot
//! (StartSnapshot ParentSnapshotId), written with only the blocks whose
//! content differs from the parent's.
//!
//! What each published snapshot holds is kept locally, in a store of block
//! digests keyed by region and snapshot id ([`DigestStore`]): comparing a
//! new image with its parent then needs no download. The store lives in the
//! user's state directory (`$XDG_STATE_HOME/imgforge`, else
//! `~/.local/state/imgforge`), not beside the image: an image is usually
//! rebuilt in place, which would leave a digest file beside it describing
//! another image, and `--parent auto` must find the last snapshot of a
//! family whatever path its image had.
//!
//! EBS rules followed here (EBS direct APIs reference, "Encryption outcomes
//! for EBS direct APIs"):
//! - `Encrypted` and `ParentSnapshotId` in one request is a
//!   ValidationException. The child of an encrypted parent is encrypted
//!   (with the parent's KMS key, or the one given as KmsKeyArn); an
//!   unencrypted parent gives an unencrypted child, and asking for
//!   encryption with it fails. So `--encrypted` with an unencrypted parent
//!   is refused here, and with an encrypted parent only KmsKeyArn is sent.
//! - The child's volume is at least as large as the parent's.
//! - Blocks not written are inherited from the parent: a block that held
//!   data in the parent and is all zeros now is written as zeros (EBS has no
//!   "delete block").

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[cfg(test)]
use super::blocks;
use super::blocks::Digest;
use super::snapshot;
use crate::aws::client::Clients;
use crate::aws::retry::{ApiError, RetryError, with_retries};
use crate::sys::interrupt::Interrupted;

pub const RECORD_FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error(
        "--parent {given:?} is not a parent: pass a snapshot id (snap-...), an AMI id (ami-...) or `auto`"
    )]
    BadParent { given: String },
    #[error(
        "--parent auto: no snapshot of family {family:?} in {region} was published from this \
machine (digest store {store}); upload once without --parent (a full upload), and later \
uploads of the family can be deltas (the family is --family, else the --name without its \
trailing version, else the image's file name)"
    )]
    NoFamilySnapshot {
        family: String,
        region: String,
        store: PathBuf,
    },
    #[error("parent AMI {image_id} does not exist in {region} (DescribeImages found nothing)")]
    ImageNotFound { image_id: String, region: String },
    #[error("parent AMI {image_id} has no EBS root snapshot in its block device mapping")]
    ImageWithoutSnapshot { image_id: String },
    #[error("parent snapshot {snapshot_id} does not exist in {region}")]
    SnapshotNotFound { snapshot_id: String, region: String },
    #[error(
        "parent snapshot {snapshot_id} is `{state}`, not `completed`; wait for it, or pick another parent"
    )]
    SnapshotNotCompleted { snapshot_id: String, state: String },
    #[error(
        "imgforge has no block digests of parent snapshot {snapshot_id} (digest store {store}): \
it keeps them only for snapshots it published from this machine. Upload without --parent \
(a full upload; its digests are then kept for the next delta), or copy the store from the \
machine that published it"
    )]
    DigestsUnknown { snapshot_id: String, store: PathBuf },
    #[error(
        "parent snapshot {snapshot_id} is not encrypted, and EBS cannot make an encrypted snapshot \
incremental to an unencrypted one: drop --encrypted (the child is then unencrypted like its \
parent), or upload in full with --encrypted and no --parent"
    )]
    EncryptedChildOfUnencryptedParent { snapshot_id: String },
    #[error(
        "--volume-size {given} GiB is smaller than parent snapshot {snapshot_id}'s {parent} GiB; \
EBS needs a child at least as large as its parent: pass --volume-size {parent}G or more"
    )]
    SmallerThanParent {
        given: u64,
        parent: u64,
        snapshot_id: String,
    },
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
    #[error("cannot read the digest store {path}: {reason}")]
    StoreRead { path: PathBuf, reason: String },
    #[error(
        "cannot write the digest store {path}: {source} (pass --state-dir DIR to keep it elsewhere)"
    )]
    StoreWrite {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<RetryError> for DeltaError {
    fn from(err: RetryError) -> Self {
        match err {
            RetryError::Api(api) => Self::Api(api),
            RetryError::Interrupted(i) => Self::Interrupted(i),
        }
    }
}

/// `--parent`: what the new snapshot is to be incremental to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParentArg {
    Snapshot(String),
    Image(String),
    /// The last snapshot published from this machine in the same family.
    Auto,
}

impl ParentArg {
    pub fn parse(text: &str) -> Result<Self, String> {
        let hex_id = |prefix: &str| {
            text.strip_prefix(prefix)
                .is_some_and(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_hexdigit()))
        };
        if text == "auto" {
            Ok(Self::Auto)
        } else if hex_id("snap-") {
            Ok(Self::Snapshot(text.to_string()))
        } else if hex_id("ami-") {
            Ok(Self::Image(text.to_string()))
        } else {
            Err(DeltaError::BadParent {
                given: text.to_string(),
            }
            .to_string())
        }
    }
}

/// What a published snapshot holds, block by block: the record kept for
/// later deltas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub format_version: u32,
    pub snapshot_id: String,
    pub region: String,
    /// The image family (`--family`, else the family of `--name`, else of
    /// the image's file name); what `--parent auto` matches.
    pub family: Option<String>,
    pub ami_name: Option<String>,
    pub ami_id: Option<String>,
    pub image: PathBuf,
    pub image_size_bytes: u64,
    pub volume_size_gib: u64,
    pub encrypted: bool,
    /// Snapshots written with every block (encrypted ones: zeros included)
    /// can be trusted to read zeros where no digest is recorded only below
    /// this many blocks; others read zeros wherever nothing was written.
    pub block_count: u64,
    pub zero_blocks_written: bool,
    pub parent_snapshot_id: Option<String>,
    /// Milliseconds since 1970 when the snapshot was completed.
    pub published_unix_ms: u64,
    /// SHA-256 (hex) of every block that is not all zeros, by index.
    pub digests: BTreeMap<u64, String>,
}

impl SnapshotRecord {
    pub fn digest_map(&self) -> Result<BTreeMap<u64, Digest>, String> {
        self.digests
            .iter()
            .map(|(&index, text)| {
                let bytes = hex::decode(text).map_err(|e| format!("block {index}: {e}"))?;
                let digest: Digest = bytes
                    .try_into()
                    .map_err(|_| format!("block {index}: digest is not 32 bytes"))?;
                Ok((index, digest))
            })
            .collect()
    }
}

/// The block digests of published snapshots: one JSON file per snapshot,
/// `DIR/snapshots/REGION/SNAPSHOT.json` (snapshot ids are per region).
#[derive(Debug, Clone)]
pub struct DigestStore {
    pub dir: PathBuf,
}

impl DigestStore {
    /// `dir`, else `$XDG_STATE_HOME/imgforge`, else `~/.local/state/imgforge`.
    pub fn new(dir: Option<PathBuf>) -> Self {
        let dir = dir.unwrap_or_else(|| {
            std::env::var_os("XDG_STATE_HOME")
                .filter(|d| !d.is_empty())
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
                .unwrap_or_else(|| PathBuf::from("."))
                .join("imgforge")
        });
        Self { dir }
    }

    fn region_dir(&self, region: &str) -> PathBuf {
        self.dir.join("snapshots").join(region)
    }

    pub fn path_of(&self, region: &str, snapshot_id: &str) -> PathBuf {
        self.region_dir(region).join(format!("{snapshot_id}.json"))
    }

    pub fn load(
        &self,
        region: &str,
        snapshot_id: &str,
    ) -> Result<Option<SnapshotRecord>, DeltaError> {
        let path = self.path_of(region, snapshot_id);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => {
                return Err(DeltaError::StoreRead {
                    path,
                    reason: err.to_string(),
                });
            }
        };
        let record: SnapshotRecord =
            serde_json::from_str(&text).map_err(|e| DeltaError::StoreRead {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if let Err(reason) = record.digest_map() {
            return Err(DeltaError::StoreRead { path, reason });
        }
        Ok(Some(record))
    }

    /// Every record of the region (unreadable files are skipped with a
    /// warning: one bad file must not hide the others).
    fn records(&self, region: &str) -> Result<Vec<SnapshotRecord>, DeltaError> {
        let dir = self.region_dir(region);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => {
                return Err(DeltaError::StoreRead {
                    path: dir,
                    reason: err.to_string(),
                });
            }
        };
        let mut records = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            match self.load(region, id) {
                Ok(Some(record)) => records.push(record),
                Ok(None) => {}
                Err(err) => log::warn!("{err}; skipping it"),
            }
        }
        Ok(records)
    }

    /// The family's most recently published snapshot in `region`.
    pub fn latest_of_family(
        &self,
        region: &str,
        family: &str,
    ) -> Result<Option<SnapshotRecord>, DeltaError> {
        Ok(self
            .records(region)?
            .into_iter()
            .filter(|r| r.family.as_deref() == Some(family))
            .max_by(|a, b| {
                (a.published_unix_ms, &a.snapshot_id).cmp(&(b.published_unix_ms, &b.snapshot_id))
            }))
    }

    /// The record of the snapshot imgforge registered as `image_id`.
    pub fn find_by_ami(
        &self,
        region: &str,
        image_id: &str,
    ) -> Result<Option<SnapshotRecord>, DeltaError> {
        Ok(self
            .records(region)?
            .into_iter()
            .find(|r| r.ami_id.as_deref() == Some(image_id)))
    }

    /// Writes the record atomically (temporary file, fsync, rename).
    pub fn save(&self, record: &SnapshotRecord) -> Result<PathBuf, DeltaError> {
        let dir = self.region_dir(&record.region);
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DeltaError::StoreWrite { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(err(&dir))?;
        let path = self.path_of(&record.region, &record.snapshot_id);
        let mut tmp = tempfile::Builder::new()
            .prefix(".imgforge-")
            .suffix(".json.partial")
            .tempfile_in(&dir)
            .map_err(err(&dir))?;
        let text = serde_json::to_vec(record).expect("record serializes");
        tmp.write_all(&text).map_err(err(&path))?;
        tmp.as_file().sync_all().map_err(err(&path))?;
        tmp.persist(&path).map_err(|e| DeltaError::StoreWrite {
            path: path.clone(),
            source: e.error,
        })?;
        Ok(path)
    }
}

/// The parent as the upload uses it.
#[derive(Debug, Clone)]
pub struct Parent {
    pub snapshot_id: String,
    pub volume_size_gib: u64,
    pub encrypted: bool,
    /// What the parent holds, and whether its zero blocks were written.
    pub content: ParentContent,
}

#[derive(Debug, Clone, Default)]
pub struct ParentContent {
    pub digests: BTreeMap<u64, Digest>,
    pub block_count: u64,
    pub zero_blocks_written: bool,
}

/// Finds the parent, checks that it exists and is completed, and loads its
/// digests from the store.
pub async fn resolve_parent(
    clients: &Clients,
    store: &DigestStore,
    arg: &ParentArg,
    family: &str,
) -> Result<Parent, DeltaError> {
    let region = clients.region.as_str();
    let (snapshot_id, record) = match arg {
        ParentArg::Snapshot(id) => (id.clone(), None),
        ParentArg::Auto => {
            let record = store.latest_of_family(region, family)?.ok_or_else(|| {
                DeltaError::NoFamilySnapshot {
                    family: family.to_string(),
                    region: region.to_string(),
                    store: store.dir.clone(),
                }
            })?;
            log::info!(
                "--parent auto: snapshot {} ({}), the last of family {family:?} published from here",
                record.snapshot_id,
                record.ami_name.as_deref().unwrap_or("not registered")
            );
            (record.snapshot_id.clone(), Some(record))
        }
        ParentArg::Image(image_id) => {
            let root = image_root_snapshot(clients, image_id).await?;
            // The store knows which snapshot imgforge registered the AMI
            // with; EC2's mapping says the same on AWS.
            match store.find_by_ami(region, image_id)? {
                Some(record) => (record.snapshot_id.clone(), Some(record)),
                None => (
                    root.ok_or_else(|| DeltaError::ImageWithoutSnapshot {
                        image_id: image_id.clone(),
                    })?,
                    None,
                ),
            }
        }
    };
    let described = snapshot::describe(clients, &snapshot_id)
        .await?
        .ok_or_else(|| DeltaError::SnapshotNotFound {
            snapshot_id: snapshot_id.clone(),
            region: region.to_string(),
        })?;
    match described.state() {
        Some(aws_sdk_ec2::types::SnapshotState::Completed) => {}
        other => {
            return Err(DeltaError::SnapshotNotCompleted {
                snapshot_id,
                state: other.map_or("unknown", |s| s.as_str()).to_string(),
            });
        }
    }
    let record = match record {
        Some(record) => record,
        None => store
            .load(region, &snapshot_id)?
            .ok_or_else(|| DeltaError::DigestsUnknown {
                snapshot_id: snapshot_id.clone(),
                store: store.dir.clone(),
            })?,
    };
    let digests = record
        .digest_map()
        .map_err(|reason| DeltaError::StoreRead {
            path: store.path_of(region, &snapshot_id),
            reason,
        })?;
    let volume_size_gib = described
        .volume_size()
        .map_or(record.volume_size_gib, |gib| gib.max(0) as u64);
    Ok(Parent {
        snapshot_id,
        volume_size_gib,
        encrypted: described.encrypted().unwrap_or(record.encrypted),
        content: ParentContent {
            digests,
            block_count: record.block_count,
            zero_blocks_written: record.zero_blocks_written,
        },
    })
}

/// The AMI's root snapshot from DescribeImages (the mapping of the root
/// device, else the first EBS mapping).
async fn image_root_snapshot(
    clients: &Clients,
    image_id: &str,
) -> Result<Option<String>, DeltaError> {
    let result = with_retries(&clients.retry, "DescribeImages", "DescribeImages", || {
        clients.ec2.describe_images().image_ids(image_id).send()
    })
    .await;
    let output = match result {
        Ok(output) => output,
        Err(RetryError::Api(api)) if api.is_not_found() => {
            return Err(DeltaError::ImageNotFound {
                image_id: image_id.to_string(),
                region: clients.region.clone(),
            });
        }
        Err(err) => return Err(err.into()),
    };
    let image = output
        .images()
        .first()
        .ok_or_else(|| DeltaError::ImageNotFound {
            image_id: image_id.to_string(),
            region: clients.region.clone(),
        })?;
    let mappings = image.block_device_mappings();
    let root = mappings
        .iter()
        .find(|m| m.device_name() == image.root_device_name())
        .or_else(|| mappings.iter().find(|m| m.ebs().is_some()));
    Ok(root
        .and_then(|m| m.ebs())
        .and_then(|ebs| ebs.snapshot_id())
        .map(str::to_string))
}

/// The volume size with a parent: at least the parent's (EBS rule).
pub fn volume_with_parent(
    requested: Option<u64>,
    needed_by_image: u64,
    parent: &Parent,
) -> Result<u64, DeltaError> {
    match requested {
        Some(given) if given < parent.volume_size_gib => Err(DeltaError::SmallerThanParent {
            given,
            parent: parent.volume_size_gib,
            snapshot_id: parent.snapshot_id.clone(),
        }),
        Some(given) => Ok(given),
        None => Ok(needed_by_image.max(parent.volume_size_gib)),
    }
}

/// The child's encryption: an encrypted parent makes an encrypted child;
/// an unencrypted parent cannot have an encrypted child.
pub fn child_encrypted(parent: &Parent, requested: bool) -> Result<bool, DeltaError> {
    if requested && !parent.encrypted {
        return Err(DeltaError::EncryptedChildOfUnencryptedParent {
            snapshot_id: parent.snapshot_id.clone(),
        });
    }
    if parent.encrypted && !requested {
        log::info!(
            "parent snapshot {} is encrypted, so the new snapshot is too (with the parent's KMS key)",
            parent.snapshot_id
        );
    }
    Ok(parent.encrypted)
}

/// What one block of the new image asks of the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockAction {
    /// Write it, with this digest (the zero block's for zeros).
    Write(Digest),
    /// Leave it: the snapshot reads the same without a write.
    Skip,
}

/// Whether block `index`, whose content is `content` (None: all zeros),
/// must be written. Without a parent, zeros are written only when
/// `write_zero_blocks` (encrypted snapshots); with one, a block is written
/// when it differs from what the parent holds there.
pub fn block_action(
    index: u64,
    content: Option<&Digest>,
    parent: Option<&ParentContent>,
    write_zero_blocks: bool,
    zero_digest: &Digest,
) -> BlockAction {
    let Some(parent) = parent else {
        return match content {
            Some(digest) => BlockAction::Write(*digest),
            None if write_zero_blocks => BlockAction::Write(*zero_digest),
            None => BlockAction::Skip,
        };
    };
    match (content, parent.digests.get(&index)) {
        (Some(digest), Some(held)) if digest == held => BlockAction::Skip,
        (Some(digest), _) => BlockAction::Write(*digest),
        // Data in the parent, zeros now: inherit nothing.
        (None, Some(_)) => BlockAction::Write(*zero_digest),
        (None, None) => {
            let parent_wrote_zeros = parent.zero_blocks_written && index < parent.block_count;
            if write_zero_blocks && !parent_wrote_zeros {
                BlockAction::Write(*zero_digest)
            } else {
                BlockAction::Skip
            }
        }
    }
}

/// The blocks a delta upload must look at: the image's data blocks, and the
/// parent's (a block with data in the parent may be zeros now).
pub fn candidates_with_parent(
    data_blocks: &[u64],
    parent: &ParentContent,
    image_blocks: u64,
) -> Vec<u64> {
    let mut all: Vec<u64> = data_blocks.to_vec();
    all.extend(parent.digests.keys().copied().filter(|&i| i < image_blocks));
    all.sort_unstable();
    all.dedup();
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_argument_forms() {
        assert_eq!(ParentArg::parse("auto").unwrap(), ParentArg::Auto);
        assert_eq!(
            ParentArg::parse("snap-0123abcd").unwrap(),
            ParentArg::Snapshot("snap-0123abcd".into())
        );
        assert_eq!(
            ParentArg::parse("ami-12ab").unwrap(),
            ParentArg::Image("ami-12ab".into())
        );
        for bad in ["", "snap-", "snap-xyz", "vol-123", "AUTO", "ami-12 "] {
            let err = ParentArg::parse(bad).unwrap_err();
            assert!(
                err.contains("snap-...") && err.contains("auto"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn block_actions() {
        let zero = blocks::zero_block_digest();
        let a = [1u8; 32];
        let b = [2u8; 32];
        // No parent: data written, zeros only when encrypted.
        assert_eq!(
            block_action(0, Some(&a), None, false, &zero),
            BlockAction::Write(a)
        );
        assert_eq!(block_action(0, None, None, false, &zero), BlockAction::Skip);
        assert_eq!(
            block_action(0, None, None, true, &zero),
            BlockAction::Write(zero)
        );

        let parent = ParentContent {
            digests: [(1, a), (2, b)].into_iter().collect(),
            block_count: 4,
            zero_blocks_written: false,
        };
        let p = Some(&parent);
        assert_eq!(
            block_action(1, Some(&a), p, false, &zero),
            BlockAction::Skip,
            "unchanged"
        );
        assert_eq!(
            block_action(1, Some(&b), p, false, &zero),
            BlockAction::Write(b),
            "changed"
        );
        assert_eq!(
            block_action(3, Some(&a), p, false, &zero),
            BlockAction::Write(a),
            "new"
        );
        assert_eq!(
            block_action(2, None, p, false, &zero),
            BlockAction::Write(zero),
            "data became zeros: written as zeros"
        );
        assert_eq!(
            block_action(3, None, p, false, &zero),
            BlockAction::Skip,
            "zeros stay zeros"
        );

        // An encrypted parent that wrote its zero blocks: they are inherited
        // below its size, written above it.
        let encrypted = ParentContent {
            zero_blocks_written: true,
            ..parent.clone()
        };
        let e = Some(&encrypted);
        assert_eq!(block_action(3, None, e, true, &zero), BlockAction::Skip);
        assert_eq!(
            block_action(4, None, e, true, &zero),
            BlockAction::Write(zero)
        );
    }

    #[test]
    fn candidates_include_the_parents_data_blocks_inside_the_image() {
        let parent = ParentContent {
            digests: [(1, [1; 32]), (5, [2; 32]), (50, [3; 32])]
                .into_iter()
                .collect(),
            block_count: 60,
            zero_blocks_written: false,
        };
        assert_eq!(
            candidates_with_parent(&[0, 1, 7], &parent, 10),
            vec![0, 1, 5, 7]
        );
    }

    #[test]
    fn store_saves_loads_and_finds_the_familys_latest() {
        let dir = tempfile::tempdir().unwrap();
        let store = DigestStore::new(Some(dir.path().to_path_buf()));
        let record = |id: &str, family: &str, at: u64| SnapshotRecord {
            format_version: RECORD_FORMAT_VERSION,
            snapshot_id: id.into(),
            region: "us-east-1".into(),
            family: Some(family.into()),
            ami_name: None,
            ami_id: Some(format!("ami-{at}")),
            image: "/x.raw".into(),
            image_size_bytes: 1 << 20,
            volume_size_gib: 1,
            encrypted: false,
            block_count: 2,
            zero_blocks_written: false,
            parent_snapshot_id: None,
            published_unix_ms: at,
            digests: [(0, hex::encode([7u8; 32]))].into_iter().collect(),
        };
        store.save(&record("snap-1", "web", 100)).unwrap();
        store.save(&record("snap-2", "web", 200)).unwrap();
        store.save(&record("snap-3", "db", 300)).unwrap();
        assert_eq!(
            store.load("us-east-1", "snap-2").unwrap().unwrap(),
            record("snap-2", "web", 200)
        );
        assert!(store.load("eu-west-1", "snap-2").unwrap().is_none());
        let latest = store.latest_of_family("us-east-1", "web").unwrap().unwrap();
        assert_eq!(latest.snapshot_id, "snap-2");
        assert!(
            store
                .latest_of_family("us-east-1", "none")
                .unwrap()
                .is_none()
        );
        assert_eq!(
            store
                .find_by_ami("us-east-1", "ami-300")
                .unwrap()
                .unwrap()
                .snapshot_id,
            "snap-3"
        );
        // A damaged record is an error when asked for, and skipped in searches.
        std::fs::write(store.path_of("us-east-1", "snap-9"), "{").unwrap();
        assert!(store.load("us-east-1", "snap-9").is_err());
        assert!(
            store
                .latest_of_family("us-east-1", "web")
                .unwrap()
                .is_some()
        );
    }
}
