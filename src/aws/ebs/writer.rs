//! The snapshot writer: picks up a matching journal, starts or resumes the
//! snapshot, reads, hashes and sends in one pass every block not handled
//! yet (only those that differ from the parent's, for a delta), completes
//! it, and cleans up after a failure. Takes its own small [`WriteRequest`]
//! (the four things of an upload it needs) and answers a [`WriteError`].

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

use super::blocks::{self, BLOCK_SIZE, BlockRecord, BlocksError, Digest};
use super::delta::{self, BlockAction, ParentContent};
use super::journal::{self, ImageIdentity, Journal, JournalError, TokenBasis};
use super::pool::BufferPool;
use super::snapshot::{self, SnapshotError};
use crate::aws::client::Clients;
use crate::image::sparse;
use crate::sys::interrupt::{self, Interrupted};

/// How often confirmed blocks are written to the journal. Blocks confirmed
/// after the last save are sent again on resume, nothing worse.
const JOURNAL_SAVE_INTERVAL: Duration = Duration::from_secs(1);
/// How often the upload loop checks for Ctrl-C while requests are in flight.
const INTERRUPT_POLL: Duration = Duration::from_millis(200);

fn progress_bar(total_bytes: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total_bytes);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:9} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// What the writer needs of an upload.
#[derive(Debug, Clone)]
pub struct WriteRequest {
    /// The image, checked again before CompleteSnapshot (it must not change).
    pub image: PathBuf,
    /// Concurrent PutSnapshotBlock requests.
    pub workers: usize,
    /// How long to wait for the snapshot to become `completed`.
    pub wait_timeout: Duration,
    /// After a failure, keep the snapshot and the journal (a rerun resumes).
    pub keep_snapshot: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Blocks(#[from] BlocksError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
    #[error(
        "{path} changed while it was being uploaded (its size, modification time or content \
differs from when the upload started); the snapshot is not completed: do not modify an image \
during its upload, then upload it again"
    )]
    ImageChanged { path: PathBuf },
    #[error("the upload journal {path} is damaged ({reason}); delete it and upload again")]
    BadJournal { path: PathBuf, reason: String },
    #[error("StartSnapshot kept answering snapshots in state `error`; see the warnings above")]
    StartKeepsFailing,
}

impl WriteError {
    /// Whether this failure is the user's Ctrl-C (or SIGTERM).
    pub fn is_interrupted(&self) -> bool {
        matches!(
            self,
            Self::Interrupted(_)
                | Self::Snapshot(SnapshotError::Interrupted(_))
                | Self::Blocks(BlocksError::Interrupted(_))
        )
    }
}

/// What the snapshot phase produced.
pub struct SnapshotOutcome {
    pub snapshot_id: String,
    pub resumed: bool,
    /// Blocks the snapshot was written with (its ChangedBlocksCount).
    pub blocks_total: u64,
    pub blocks_sent: u64,
    pub blocks_already_confirmed: u64,
    /// Blocks of the image that hold data (not all zeros).
    pub data_blocks: u64,
    /// Data blocks not written because the parent holds the same.
    pub blocks_unchanged: u64,
    pub bytes_read: u64,
    pub upload_seconds: f64,
    /// The image's content: SHA-256 of every block that is not all zeros.
    pub digests: BTreeMap<u64, Digest>,
}

/// Which blocks an upload looks at, and what decides whether each is sent.
#[derive(Debug, Clone)]
pub struct BlockPlan {
    /// Blocks to read (or know to be zeros), ascending.
    pub candidates: Vec<u64>,
    /// The image's blocks that overlap data (SEEK_DATA); candidates not in
    /// here lie in holes and read as zeros without a read.
    pub data_blocks: Vec<u64>,
    pub parent: Option<ParentContent>,
    /// Encrypted snapshots get their zero blocks written too.
    pub write_zero_blocks: bool,
}

impl BlockPlan {
    pub fn new(
        file: &File,
        size: u64,
        write_zero_blocks: bool,
        parent: Option<ParentContent>,
    ) -> Result<Self, BlocksError> {
        let extents = sparse::data_extents(file, size)?;
        let data_blocks = blocks::blocks_touching(&extents);
        let image_blocks = blocks::block_count(size);
        let candidates = if write_zero_blocks {
            (0..image_blocks).collect()
        } else if let Some(parent) = &parent {
            delta::candidates_with_parent(&data_blocks, parent, image_blocks)
        } else {
            data_blocks.clone()
        };
        Ok(Self {
            candidates,
            data_blocks,
            parent,
            write_zero_blocks,
        })
    }

    fn in_hole(&self, index: u64) -> bool {
        self.data_blocks.binary_search(&index).is_err()
    }
}

/// A pass over the image's data for its content hash, before the upload:
/// only for an image without a trusted manifest whose default AMI name (the
/// content hash) is needed before anything is sent. The upload then reads
/// the data a second time.
pub fn content_hash_pass(file: &File, size: u64) -> Result<(String, u64), WriteError> {
    let bar = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{msg:9} {binary_bytes} {binary_bytes_per_sec}")
            .expect("valid template"),
    );
    bar.set_message("hashing");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let scan = {
        let bar = bar.clone();
        blocks::scan(file, size, false, threads, move |n| bar.inc(n))?
    };
    bar.finish_and_clear();
    let content = journal::content_digest(size, &scan.blocks);
    Ok((hex::encode(content), scan.bytes_read))
}

/// How one block ended.
enum Done {
    Sent,
    /// To be written, but the snapshot is complete already (StartSnapshot
    /// answered a completed snapshot for the token): counted, not sent.
    Counted,
    Skipped,
}

/// One block's result: its index, its digest (None: all zeros), how it
/// ended and how many image bytes it read.
type BlockDone = (u64, Option<Digest>, Done, u64);

/// Where one upload stands: what the journal had, plus what this run did.
struct Progress {
    confirmed: BTreeSet<u64>,
    skipped: BTreeSet<u64>,
    digests: BTreeMap<u64, Digest>,
    /// Blocks confirmed by an earlier run.
    already: u64,
    sent: u64,
    bytes_read: u64,
}

impl Progress {
    fn from_journal(journal: &Journal, journal_path: &Path) -> Result<Self, WriteError> {
        let digests = journal
            .digest_map()
            .map_err(|reason| WriteError::BadJournal {
                path: journal_path.to_path_buf(),
                reason,
            })?;
        let confirmed = journal.confirmed_set();
        Ok(Self {
            already: confirmed.len() as u64,
            confirmed,
            skipped: journal.skipped_set(),
            digests,
            sent: 0,
            bytes_read: 0,
        })
    }

    /// The plan's blocks that no run has handled yet.
    fn pending(&self, plan: &BlockPlan) -> Vec<u64> {
        plan.candidates
            .iter()
            .copied()
            .filter(|i| !self.confirmed.contains(i) && !self.skipped.contains(i))
            .collect()
    }

    fn record(&mut self, (index, content, done, read): BlockDone) {
        if let Some(digest) = content {
            self.digests.insert(index, digest);
        }
        match done {
            Done::Sent => {
                self.sent += 1;
                self.confirmed.insert(index);
            }
            Done::Counted => {
                self.confirmed.insert(index);
            }
            Done::Skipped => {
                self.skipped.insert(index);
            }
        }
        self.bytes_read += read;
    }

    fn save(&self, journal: &mut Journal, journal_path: &Path) -> Result<(), JournalError> {
        journal.set_digests(&self.digests);
        journal.set_confirmed(&self.confirmed);
        journal.set_skipped(&self.skipped);
        journal.save(journal_path)
    }
}

/// One snapshot being written: what every step reads.
struct Session<'a> {
    req: &'a WriteRequest,
    clients: &'a Clients,
    snapshot_id: String,
    journal_path: &'a Path,
    plan: &'a BlockPlan,
    file: &'a Arc<File>,
    size: u64,
    buffers: Arc<BufferPool>,
}

/// Reads every block the plan names that no earlier run handled, hashes
/// it, sends it when it must be written (in the same pass: the image is
/// read once), then completes the snapshot and waits for it.
#[allow(clippy::too_many_arguments)]
pub async fn write_snapshot(
    req: &WriteRequest,
    clients: &Clients,
    journal_path: &Path,
    journal: &mut Journal,
    plan: &BlockPlan,
    file: &Arc<File>,
    size: u64,
) -> Result<SnapshotOutcome, WriteError> {
    let session = Session {
        req,
        clients,
        snapshot_id: journal.snapshot_id.clone().expect("snapshot started"),
        journal_path,
        plan,
        file,
        size,
        // Enough for every request in flight, and the reads ahead of them.
        buffers: BufferPool::new(req.workers.max(1) + 8),
    };
    let mut progress = Progress::from_journal(journal, journal_path)?;
    let resumed = progress.already > 0 || journal.completed;
    let send = !journal.completed;
    let upload_started = Instant::now();
    session.send_blocks(journal, &mut progress, send).await?;
    check_unchanged(&req.image, journal, size, &progress.digests)?;
    if send {
        session.complete(journal, &progress).await?;
    }
    let upload_seconds = upload_started.elapsed().as_secs_f64();
    snapshot::wait_completed(clients, &session.snapshot_id, req.wait_timeout).await?;
    Ok(session.outcome(progress, resumed, upload_seconds))
}

impl Session<'_> {
    /// Reads, hashes and (when `send`) writes every pending block, at most
    /// `workers` at a time, saving the journal every second and on the way
    /// out (an error or Ctrl-C included).
    async fn send_blocks(
        &self,
        journal: &mut Journal,
        progress: &mut Progress,
        send: bool,
    ) -> Result<(), WriteError> {
        let todo = progress.pending(self.plan);
        let bar = progress_bar(todo.len() as u64 * BLOCK_SIZE, "uploading");
        let zero_block = Bytes::from(vec![0u8; BLOCK_SIZE as usize]);
        let mut work = futures::stream::iter(todo)
            .map(|index| self.one_block(index, zero_block.clone(), send))
            .buffer_unordered(self.req.workers.max(1));
        let mut last_save = Instant::now();
        let result = loop {
            // Wake up now and then even when no request finishes, so that a
            // Ctrl-C is honoured without waiting for slow requests.
            match tokio::time::timeout(INTERRUPT_POLL, work.next()).await {
                Ok(None) => break Ok(()),
                Ok(Some(Ok(done))) => {
                    progress.record(done);
                    bar.inc(BLOCK_SIZE);
                }
                Ok(Some(Err(err))) => break Err(err),
                Err(_) => {}
            }
            if last_save.elapsed() >= JOURNAL_SAVE_INTERVAL {
                progress.save(journal, self.journal_path)?;
                last_save = Instant::now();
            }
            if let Err(err) = interrupt::check() {
                break Err(err.into());
            }
        };
        drop(work);
        if result.is_ok() {
            bar.finish_and_clear();
        } else {
            bar.abandon();
        }
        // Everything confirmed is on disk before CompleteSnapshot, so the
        // journal never says "incomplete" about a completed snapshot's blocks.
        progress.save(journal, self.journal_path)?;
        result
    }

    /// One block: read (or known zeros, in a hole), hashed, and sent when
    /// it differs from what the snapshot would hold without it.
    async fn one_block(
        &self,
        index: u64,
        zero_block: Bytes,
        send: bool,
    ) -> Result<BlockDone, WriteError> {
        let (data, content, read) = if self.plan.in_hole(index) {
            (zero_block, None, 0)
        } else {
            read_block(Arc::clone(self.file), index, self.size, &self.buffers).await?
        };
        let action = delta::block_action(
            index,
            content.as_ref(),
            self.plan.parent.as_ref(),
            self.plan.write_zero_blocks,
            &blocks::zero_block_digest(),
        );
        let done = match action {
            BlockAction::Skip => Done::Skipped,
            BlockAction::Write(_) if !send => Done::Counted,
            BlockAction::Write(digest) => {
                // A block without content reads as zeros: data is zeros.
                snapshot::put_block(self.clients, &self.snapshot_id, index, data, &digest).await?;
                Done::Sent
            }
        };
        Ok((index, content, done, read))
    }

    /// CompleteSnapshot with the count and LINEAR checksum of every block
    /// written, then the journal says so.
    async fn complete(&self, journal: &mut Journal, progress: &Progress) -> Result<(), WriteError> {
        let zero_digest = blocks::zero_block_digest();
        let written: Vec<Digest> = progress
            .confirmed
            .iter()
            .map(|i| progress.digests.get(i).copied().unwrap_or(zero_digest))
            .collect();
        let aggregate = blocks::linear_checksum(written.iter());
        let count = progress.confirmed.len() as u64;
        snapshot::complete(self.clients, &self.snapshot_id, count, &aggregate).await?;
        journal.completed = true;
        journal.save(self.journal_path)?;
        Ok(())
    }

    fn outcome(self, progress: Progress, resumed: bool, upload_seconds: f64) -> SnapshotOutcome {
        let blocks_unchanged = progress
            .skipped
            .iter()
            .filter(|i| progress.digests.contains_key(i))
            .count() as u64;
        SnapshotOutcome {
            snapshot_id: self.snapshot_id,
            resumed,
            blocks_total: progress.confirmed.len() as u64,
            blocks_sent: progress.sent,
            blocks_already_confirmed: progress.already,
            data_blocks: progress.digests.len() as u64,
            blocks_unchanged,
            bytes_read: progress.bytes_read,
            upload_seconds,
            digests: progress.digests,
        }
    }
}

/// Reads one block on the blocking pool into a buffer from `buffers`: its
/// bytes, its digest (None when all zeros) and how many image bytes that read.
async fn read_block(
    file: Arc<File>,
    index: u64,
    size: u64,
    buffers: &Arc<BufferPool>,
) -> Result<(Bytes, Option<Digest>, u64), WriteError> {
    let mut buf = buffers.take();
    let read = tokio::task::spawn_blocking(move || {
        // Fills all of it (a partial last block is padded with zeros), so
        // a reused buffer's old content never leaks into this block.
        blocks::read_block(&file, index, size, buf.as_mut_slice())?;
        let content = (!blocks::is_zero(buf.as_ref())).then(|| blocks::sha256(buf.as_ref()));
        Ok::<_, std::io::Error>((buf, content))
    })
    .await
    .expect("block read task panicked");
    let (buf, content) = read.map_err(BlocksError::Io)?;
    let read = size.saturating_sub(index * BLOCK_SIZE).min(BLOCK_SIZE);
    Ok((buf.into_bytes(), content, read))
}

/// Before CompleteSnapshot: the image is the one the upload started with.
/// Its size and modification time must not have moved (checked for every
/// upload), and when the token was derived from a pass over its blocks, the
/// blocks read now must hash to the same content.
fn check_unchanged(
    image: &Path,
    journal: &Journal,
    size: u64,
    digests: &BTreeMap<u64, Digest>,
) -> Result<(), WriteError> {
    let changed = || WriteError::ImageChanged {
        path: image.to_path_buf(),
    };
    let now = std::fs::File::open(image)
        .and_then(|f| ImageIdentity::of(image, &f))
        .map_err(|_| changed())?;
    if now != journal.image {
        return Err(changed());
    }
    if let TokenBasis::Blocks { sha256 } = &journal.token_basis {
        let records: Vec<BlockRecord> = digests
            .iter()
            .map(|(&index, &digest)| BlockRecord { index, digest })
            .collect();
        if hex::encode(journal::content_digest(size, &records)) != *sha256 {
            return Err(changed());
        }
    }
    Ok(())
}
