//! `imgforge download`: EBS snapshot -> raw image file.
//!
//! ListSnapshotBlocks names the blocks the snapshot holds; each is fetched
//! with GetSnapshotBlock, checked against its SHA-256 and written at its
//! offset. Blocks the snapshot does not hold stay holes in the output.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine;
use futures::StreamExt;

use super::blocks::{self, BLOCK_SIZE};
use crate::aws::client::{self, ClientError, Clients, Connection};
use crate::aws::retry::{ApiError, RetryError, with_retries};
use crate::sys::interrupt::{self, Interrupted};
use crate::units::ByteSize;

const GIB: u64 = 1 << 30;

/// What `download` is asked to do; plain values.
#[derive(Debug, Clone)]
pub struct DownloadRequest {
    pub snapshot_id: String,
    /// Created or truncated; sparse.
    pub output: PathBuf,
    /// The output file's size; None: the snapshot's volume size. Blocks past
    /// it must be empty.
    pub size: Option<ByteSize>,
    /// Concurrent GetSnapshotBlock requests (at least 1).
    pub workers: usize,
    pub connection: Connection,
}

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read block {index} of the snapshot: {reason}")]
    BadBlock { index: u64, reason: String },
    #[error(
        "block {index} of the snapshot lies past --size {size}; pass a larger --size or leave it out"
    )]
    BlockPastSize { index: u64, size: ByteSize },
}

impl From<RetryError> for DownloadError {
    fn from(err: RetryError) -> Self {
        match err {
            RetryError::Api(api) => Self::Api(api),
            RetryError::Interrupted(i) => Self::Interrupted(i),
        }
    }
}

/// One block the snapshot holds.
#[derive(Debug, Clone)]
struct ListedBlock {
    index: u64,
    token: String,
}

/// The whole download: list the blocks, then fetch, check and write each.
/// An interrupted download leaves `req.output` incomplete.
pub async fn download(req: &DownloadRequest) -> Result<(), DownloadError> {
    let clients = client::connect(&req.connection).await?;
    let (listed, volume_gib) = list_blocks(&clients, &req.snapshot_id).await?;
    let size = req.size.map_or(volume_gib * GIB, ByteSize::bytes);
    if let Some(past) = listed.iter().find(|b| b.index * BLOCK_SIZE >= size) {
        return Err(DownloadError::BlockPastSize {
            index: past.index,
            size: ByteSize(size),
        });
    }

    let write_err = |source| DownloadError::Write {
        path: req.output.clone(),
        source,
    };
    let file: File = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&req.output)
        .map_err(write_err)?;
    // Unwritten blocks stay holes: only the size is set, nothing written.
    file.set_len(size).map_err(write_err)?;
    let file = Arc::new(file);

    let mut gets = futures::stream::iter(listed)
        .map(|block| {
            let file = Arc::clone(&file);
            let clients = &clients;
            async move {
                let data = get_block(clients, &req.snapshot_id, &block).await?;
                // The last block may extend past a --size that is not a
                // multiple of the block size; its tail must be zeros.
                let offset = block.index * BLOCK_SIZE;
                let keep = (size - offset).min(BLOCK_SIZE) as usize;
                if !blocks::is_zero(&data[keep..]) {
                    return Err(DownloadError::BlockPastSize {
                        index: block.index,
                        size: ByteSize(size),
                    });
                }
                tokio::task::spawn_blocking(move || file.write_all_at(&data[..keep], offset))
                    .await
                    .expect("write task panicked")
                    .map_err(|source| DownloadError::Write {
                        path: req.output.clone(),
                        source,
                    })
            }
        })
        .buffer_unordered(req.workers.max(1));
    while let Some(result) = gets.next().await {
        result?;
        interrupt::check()?;
    }
    drop(gets);
    file.sync_all().map_err(write_err)?;
    Ok(())
}

/// Every block of the snapshot (all pages), and its volume size in GiB.
async fn list_blocks(
    clients: &Clients,
    snapshot_id: &str,
) -> Result<(Vec<ListedBlock>, u64), DownloadError> {
    let mut listed = Vec::new();
    let mut next_token: Option<String> = None;
    let mut volume_gib;
    loop {
        let page = with_retries(
            &clients.retry,
            "ListSnapshotBlocks",
            "ListSnapshotBlocks",
            || {
                clients
                    .ebs
                    .list_snapshot_blocks()
                    .snapshot_id(snapshot_id)
                    .set_next_token(next_token.clone())
                    .max_results(10_000)
                    .send()
            },
        )
        .await?;
        volume_gib = page.volume_size().unwrap_or_default() as u64;
        for block in page.blocks() {
            let (Some(index), Some(token)) = (block.block_index(), block.block_token()) else {
                continue;
            };
            listed.push(ListedBlock {
                index: index as u64,
                token: token.to_string(),
            });
        }
        match page.next_token() {
            Some(token) if !token.is_empty() => next_token = Some(token.to_string()),
            _ => break,
        }
    }
    listed.sort_by_key(|b| b.index);
    Ok((listed, volume_gib))
}

/// GetSnapshotBlock, checked against the SHA-256 EBS sends with it.
async fn get_block(
    clients: &Clients,
    snapshot_id: &str,
    block: &ListedBlock,
) -> Result<Vec<u8>, DownloadError> {
    let what = format!("GetSnapshotBlock {snapshot_id} block {}", block.index);
    let bad = |reason: String| DownloadError::BadBlock {
        index: block.index,
        reason,
    };
    // Reading the body is part of the attempt: a connection dropped halfway
    // through a block is retried like one dropped before the answer.
    let mut attempt = 1;
    loop {
        let output = with_retries(&clients.retry, "GetSnapshotBlock", &what, || {
            clients
                .ebs
                .get_snapshot_block()
                .snapshot_id(snapshot_id)
                .block_index(block.index as i32)
                .block_token(&block.token)
                .send()
        })
        .await?;
        let checksum = output.checksum().map(str::to_string);
        let data = match output.block_data.collect().await {
            Ok(body) => body.into_bytes().to_vec(),
            Err(err) if attempt < clients.retry.max_attempts => {
                log::warn!("{what}: reading the block failed ({err}); retry {attempt}");
                attempt += 1;
                continue;
            }
            Err(err) => return Err(bad(format!("reading the body failed: {err}"))),
        };
        if data.len() as u64 != BLOCK_SIZE {
            return Err(bad(format!("{} bytes instead of {BLOCK_SIZE}", data.len())));
        }
        if let Some(expected) = checksum {
            let actual = base64::engine::general_purpose::STANDARD.encode(blocks::sha256(&data));
            if actual != expected {
                return Err(bad(format!(
                    "SHA-256 {actual} differs from the checksum EBS sent ({expected})"
                )));
            }
        }
        return Ok(data);
    }
}
