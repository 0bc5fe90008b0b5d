//! One EBS snapshot's life: StartSnapshot, PutSnapshotBlock,
//! CompleteSnapshot, then waiting for EC2 to call it `completed`.

use std::time::{Duration, Instant};

use aws_runtime::auth::PayloadSigningOverride;
use aws_sdk_ebs::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_ebs::config::{ConfigBag, Intercept, RuntimeComponents};
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
    let what = format!("PutSnapshotBlock {snapshot_id} block {index}");
    with_retries(&clients.retry, "PutSnapshotBlock", &what, || {
        send_block(&clients.ebs, snapshot_id, index, data.clone(), digest)
    })
    .await?;
    Ok(())
}

/// One PutSnapshotBlock attempt. `digest` must be the SHA-256 of `data`:
/// it is both the EBS checksum and what SigV4 signs as the payload's hash.
fn send_block(
    ebs: &aws_sdk_ebs::Client,
    snapshot_id: &str,
    index: u64,
    data: Bytes,
    digest: &Digest,
) -> impl Future<
    Output = Result<
        aws_sdk_ebs::operation::put_snapshot_block::PutSnapshotBlockOutput,
        aws_sdk_ebs::error::SdkError<
            aws_sdk_ebs::operation::put_snapshot_block::PutSnapshotBlockError,
            aws_sdk_ebs::config::http::HttpResponse,
        >,
    >,
> {
    ebs.put_snapshot_block()
        .snapshot_id(snapshot_id)
        .block_index(index as i32)
        .block_data(ByteStream::from(data))
        .data_length(BLOCK_SIZE as i32)
        .checksum(blocks::base64(digest))
        .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
        .customize()
        .interceptor(SignedPayloadDigest(hex::encode(digest)))
        .send()
}

/// Hands SigV4 the payload's SHA-256 that the writer computed already:
/// without it the signer hashes every 512 KiB block a second time (as much
/// CPU as reading and hashing the image). EBS checks the signed hash
/// (x-amz-content-sha256) against the body it received.
#[derive(Debug)]
struct SignedPayloadDigest(String);

impl Intercept for SignedPayloadDigest {
    fn name(&self) -> &'static str {
        "SignedPayloadDigest"
    }

    fn read_before_signing(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        cfg.interceptor_state()
            .store_put(PayloadSigningOverride::Precomputed(self.0.clone()));
        Ok(())
    }
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

/// The first pause between DescribeSnapshots while waiting for `completed`;
/// it doubles up to [`POLL_MAX`].
const POLL_FIRST: Duration = Duration::from_millis(250);
/// The longest pause: the snapshot is noticed at most this late, at a rate
/// (30 calls a minute) far below EC2's DescribeSnapshots throttling.
const POLL_MAX: Duration = Duration::from_secs(2);

/// Polls until the snapshot is `completed`; fails at once on `error`.
pub async fn wait_completed(
    clients: &Clients,
    snapshot_id: &str,
    timeout: Duration,
) -> Result<(), SnapshotError> {
    let started = Instant::now();
    let mut delay = POLL_FIRST;
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
        delay = (delay * 2).min(POLL_MAX);
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

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ebs::config::{BehaviorVersion, Credentials, Region};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Accepts one connection, reads one request and answers 201; gives back
    /// the request's head (lower-cased) and body.
    async fn one_request(listener: tokio::net::TcpListener) -> (String, Vec<u8>) {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        let (head, body_start, length) = loop {
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed before the request's head");
            request.extend_from_slice(&buf[..n]);
            if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&request[..end]).to_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map(|v| v.trim().parse::<usize>().unwrap())
                    .unwrap_or(0);
                break (head, end + 4, length);
            }
        };
        while request.len() < body_start + length {
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed in the body");
            request.extend_from_slice(&buf[..n]);
        }
        socket
            .write_all(b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        (head, request[body_start..].to_vec())
    }

    async fn put_one(data: Vec<u8>, digest: Digest) -> (String, Vec<u8>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(one_request(listener));
        let config = aws_sdk_ebs::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("AKID", "SECRET", None, None, "test"))
            .endpoint_url(format!("http://127.0.0.1:{port}"))
            .build();
        let ebs = aws_sdk_ebs::Client::from_conf(config);
        send_block(&ebs, "snap-1", 3, Bytes::from(data), &digest)
            .await
            .unwrap();
        server.await.unwrap()
    }

    #[tokio::test]
    async fn put_block_signs_the_blocks_digest_without_hashing_it_again() {
        let mut data = vec![0u8; BLOCK_SIZE as usize];
        data[1000] = 7;
        let digest = blocks::sha256(&data);
        let (head, body) = put_one(data, digest).await;
        // What EBS checks: the body, its checksum and the signed payload hash agree.
        assert_eq!(blocks::sha256(&body), digest);
        assert!(head.contains(&format!("x-amz-content-sha256: {}", hex::encode(digest))));
        let checksum = blocks::base64(&digest).to_lowercase();
        assert!(
            head.contains(&format!("x-amz-checksum: {checksum}")),
            "{head}"
        );
        assert!(head.contains("authorization: aws4-hmac-sha256"), "{head}");

        // The signer takes the digest it is given (so it never hashes the
        // 512 KiB again): another digest is what it signs.
        let other = blocks::sha256(b"another block");
        let (head, _) = put_one(vec![1u8; BLOCK_SIZE as usize], other).await;
        assert!(head.contains(&format!("x-amz-content-sha256: {}", hex::encode(other))));
    }
}
