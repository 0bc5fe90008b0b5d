//! One EBS snapshot's life: StartSnapshot, PutSnapshotBlock,
//! CompleteSnapshot, then waiting for EC2 to call it `completed`.

use std::time::{Duration, Instant};

use aws_sdk_ebs::primitives::ByteStream;
use aws_sdk_ebs::types::{ChecksumAggregationMethod, ChecksumAlgorithm, Tag};
use aws_sdk_ec2::types::SnapshotState;
use bytes::Bytes;

use super::blocks::{self, BLOCK_SIZE, Digest};
use super::journal::SnapshotParams;
use crate::aws::client::Clients;
use crate::aws::retry::{ApiError, RetryError, with_retries};
use crate::sys::interrupt::{self, Interrupted};
use crate::units::format_duration;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
    #[error("StartSnapshot answered without a snapshot id")]
    NoSnapshotId,
    #[error(
        "snapshot {snapshot_id} went to state `error` after CompleteSnapshot{}",
        message.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
    )]
    Failed {
        snapshot_id: String,
        message: Option<String>,
    },
    #[error(
        "snapshot {snapshot_id} is still `{state}` after {waited}; pass a longer \
--wait-timeout"
    )]
    WaitTimedOut {
        snapshot_id: String,
        state: String,
        waited: String,
    },
}

impl From<RetryError> for SnapshotError {
    fn from(err: RetryError) -> Self {
        match err {
            RetryError::Api(api) => Self::Api(api),
            RetryError::Interrupted(i) => Self::Interrupted(i),
        }
    }
}

/// A snapshot's state as EC2 reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Pending,
    Completed,
    Error(Option<String>),
    /// Deleted, or never existed in this account and region.
    Missing,
    Other(String),
}

/// What StartSnapshot answered.
#[derive(Debug, Clone)]
pub struct Started {
    pub snapshot_id: String,
    /// `Pending` for a new snapshot. A token EBS has seen before answers
    /// that earlier snapshot, which may be `Completed` or `Error` by now.
    pub state: State,
}

/// StartSnapshot. The token makes a repeated call return the same snapshot.
pub async fn start(
    clients: &Clients,
    params: &SnapshotParams,
    client_token: &str,
) -> Result<Started, SnapshotError> {
    let tags: Vec<Tag> = params
        .tags
        .iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect();
    // EBS refuses Encrypted together with ParentSnapshotId: a child takes
    // its parent's encryption (KmsKeyArn may still name another key).
    let encrypted = params
        .parent_snapshot_id
        .is_none()
        .then_some(params.encrypted);
    let output = with_retries(&clients.retry, "StartSnapshot", "StartSnapshot", || {
        clients
            .ebs
            .start_snapshot()
            .volume_size(params.volume_size_gib as i64)
            .description(&params.description)
            .set_tags(Some(tags.clone()))
            .client_token(client_token)
            .timeout(params.timeout_minutes as i32)
            .set_encrypted(encrypted)
            .set_kms_key_arn(params.kms_key_id.clone())
            .set_parent_snapshot_id(params.parent_snapshot_id.clone())
            .send()
    })
    .await?;
    if let Some(size) = output.block_size()
        && i64::from(size) != BLOCK_SIZE as i64
    {
        // moto answers 512; real EBS 524288. The API's block size is fixed.
        log::debug!("StartSnapshot answered BlockSize {size}; using {BLOCK_SIZE} regardless");
    }
    let snapshot_id = output
        .snapshot_id()
        .map(str::to_string)
        .ok_or(SnapshotError::NoSnapshotId)?;
    let state = match output.status() {
        Some(aws_sdk_ebs::types::Status::Completed) => State::Completed,
        Some(aws_sdk_ebs::types::Status::Error) => State::Error(None),
        _ => State::Pending,
    };
    Ok(Started { snapshot_id, state })
}

/// PutSnapshotBlock with the block's SHA-256, retried on transient errors.
pub async fn put_block(
    clients: &Clients,
    snapshot_id: &str,
    index: u64,
    data: Bytes,
    digest: &Digest,
) -> Result<(), SnapshotError> {
    let checksum = blocks::base64(digest);
    let what = format!("PutSnapshotBlock {snapshot_id} block {index}");
    with_retries(&clients.retry, "PutSnapshotBlock", &what, || {
        clients
            .ebs
            .put_snapshot_block()
            .snapshot_id(snapshot_id)
            .block_index(index as i32)
            .block_data(ByteStream::from(data.clone()))
            .data_length(BLOCK_SIZE as i32)
            .checksum(&checksum)
            .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
            .send()
    })
    .await?;
    Ok(())
}

/// CompleteSnapshot with the block count and the LINEAR aggregate checksum.
pub async fn complete(
    clients: &Clients,
    snapshot_id: &str,
    changed_blocks: u64,
    aggregate: &Digest,
) -> Result<(), SnapshotError> {
    let checksum = blocks::base64(aggregate);
    with_retries(
        &clients.retry,
        "CompleteSnapshot",
        "CompleteSnapshot",
        || {
            clients
                .ebs
                .complete_snapshot()
                .snapshot_id(snapshot_id)
                .changed_blocks_count(changed_blocks as i32)
                .checksum(&checksum)
                .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
                .checksum_aggregation_method(ChecksumAggregationMethod::ChecksumAggregationLinear)
                .send()
        },
    )
    .await?;
    Ok(())
}

/// One snapshot from EC2 DescribeSnapshots; `None` when it is gone.
pub async fn describe(
    clients: &Clients,
    snapshot_id: &str,
) -> Result<Option<aws_sdk_ec2::types::Snapshot>, RetryError> {
    let result = with_retries(
        &clients.retry,
        "DescribeSnapshots",
        "DescribeSnapshots",
        || {
            clients
                .ec2
                .describe_snapshots()
                .snapshot_ids(snapshot_id)
                .send()
        },
    )
    .await;
    match result {
        Ok(output) => Ok(output.snapshots().first().cloned()),
        Err(RetryError::Api(api)) if api.is_not_found() => Ok(None),
        Err(err) => Err(err),
    }
}

/// The snapshot's state, from EC2 DescribeSnapshots.
pub async fn state(clients: &Clients, snapshot_id: &str) -> Result<State, SnapshotError> {
    let Some(snapshot) = describe(clients, snapshot_id).await? else {
        return Ok(State::Missing);
    };
    Ok(match snapshot.state() {
        Some(SnapshotState::Pending) => State::Pending,
        Some(SnapshotState::Completed) => State::Completed,
        Some(SnapshotState::Error) => State::Error(snapshot.state_message().map(str::to_string)),
        Some(other) => State::Other(other.as_str().to_string()),
        None => State::Other("unknown".into()),
    })
}

/// Polls until the snapshot is `completed`; fails at once on `error`.
pub async fn wait_completed(
    clients: &Clients,
    snapshot_id: &str,
    timeout: Duration,
) -> Result<(), SnapshotError> {
    let started = Instant::now();
    let mut delay = Duration::from_millis(500);
    loop {
        match state(clients, snapshot_id).await? {
            State::Completed => return Ok(()),
            State::Error(message) => {
                return Err(SnapshotError::Failed {
                    snapshot_id: snapshot_id.to_string(),
                    message,
                });
            }
            State::Missing => {
                return Err(SnapshotError::Failed {
                    snapshot_id: snapshot_id.to_string(),
                    message: Some("it no longer exists".into()),
                });
            }
            State::Pending | State::Other(_) if started.elapsed() >= timeout => {
                return Err(SnapshotError::WaitTimedOut {
                    snapshot_id: snapshot_id.to_string(),
                    state: "pending".into(),
                    waited: format_duration(timeout),
                });
            }
            State::Pending | State::Other(_) => {}
        }
        if interrupt::requested() {
            return Err(SnapshotError::Interrupted(Interrupted));
        }
        log::info!("snapshot {snapshot_id} is not completed yet; checking again in {delay:?}");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(15));
    }
}

/// DeleteSnapshot; a snapshot that is already gone counts as deleted.
pub async fn delete(clients: &Clients, snapshot_id: &str) -> Result<(), SnapshotError> {
    let result = with_retries(&clients.retry, "DeleteSnapshot", "DeleteSnapshot", || {
        clients
            .ec2
            .delete_snapshot()
            .snapshot_id(snapshot_id)
            .send()
    })
    .await;
    match result {
        Ok(_) => Ok(()),
        Err(RetryError::Api(api)) if api.is_not_found() => Ok(()),
        Err(err) => Err(err.into()),
    }
}
