//! The snapshot writer: picks up a matching journal, starts or resumes the
//! snapshot, reads, hashes and sends in one pass every block not handled
//! yet (only those that differ from the parent's, for a delta), completes
//! it, and cleans up after a failure. Takes the plain [`UploadRequest`].

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

use super::blocks::{self, BLOCK_SIZE, BlockRecord, BlocksError, Digest};
use super::delta::{self, BlockAction, ParentContent};
use super::journal::{self, ImageIdentity, Journal, SnapshotParams, TokenBasis};
use super::snapshot::{self, SnapshotError, State};
use crate::aws::ami::register::RegisterError;
use crate::aws::client::Clients;
use crate::aws::request::{UploadError, UploadRequest};
use crate::image::sparse;
use crate::sys::interrupt;

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

/// The journal of an earlier run of this upload (same image, same
/// parameters), if there is one. A journal of another image or other
/// parameters is dropped, and its pending snapshot deleted.
pub async fn load_journal(
    clients: &Clients,
    journal_path: &Path,
    identity: &ImageIdentity,
    params: &SnapshotParams,
) -> Result<Option<Journal>, UploadError> {
    let Some(old) = Journal::load(journal_path)? else {
        return Ok(None);
    };
    if old.matches(identity, params) {
        return Ok(Some(old));
    }
    log::warn!(
        "the upload journal {} records an upload of another image or with other \
parameters; starting a new snapshot",
        journal_path.display()
    );
    if let (Some(id), false) = (&old.snapshot_id, old.completed) {
        match snapshot::delete(clients, id).await {
            Ok(()) => log::warn!("deleted that upload's pending snapshot {id}"),
            Err(err) => log::warn!("cannot delete that upload's snapshot {id}: {err}"),
        }
    }
    Ok(None)
}

/// A pass over the image's data for its content hash, before the upload:
/// only for an image without a trusted manifest whose default AMI name (the
/// content hash) is needed before anything is sent. The upload then reads
/// the data a second time.
pub fn content_hash_pass(file: &File, size: u64) -> Result<(String, u64), UploadError> {
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

/// The journal's snapshot if it can still be written to, else a new one.
pub async fn ensure_snapshot(
    clients: &Clients,
    journal_path: &Path,
    journal: &mut Journal,
    params: &SnapshotParams,
) -> Result<String, UploadError> {
    if let Some(id) = journal.snapshot_id.clone() {
        match snapshot::state(clients, &id).await? {
            // moto calls a pending snapshot `completed` at once; the journal
            // knows better whether CompleteSnapshot was called.
            State::Pending | State::Completed | State::Other(_) => {
                let confirmed = journal.confirmed_set().len();
                if !journal.completed {
                    eprintln!(
                        "imgforge: resuming snapshot {id}: {confirmed} blocks already confirmed"
                    );
                }
                return Ok(id);
            }
            State::Error(message) => {
                log::warn!(
                    "snapshot {id} is in state `error`{} (a pending snapshot that receives no \
block for --snapshot-timeout minutes times out this way); deleting it and starting over \
with a new snapshot",
                    message.map(|m| format!(" ({m})")).unwrap_or_default()
                );
                if let Err(err) = snapshot::delete(clients, &id).await {
                    log::warn!("cannot delete snapshot {id}: {err}");
                }
            }
            State::Missing => log::warn!(
                "snapshot {id} from the journal no longer exists (deleted, or timed out and \
removed); starting over with a new snapshot"
            ),
        }
        journal.start_over();
        journal.save(journal_path)?;
    }
    // The journal (and with it the attempt number, which the token is
    // derived from) is saved before StartSnapshot: a crash in between reruns
    // it with the same ClientToken, and EBS answers the same snapshot.
    for _ in 0..3 {
        let started = snapshot::start(clients, params, &journal.client_token).await?;
        let id = started.snapshot_id;
        match started.state {
            State::Error(_) => {
                // The token belongs to an earlier upload whose snapshot failed.
                log::warn!(
                    "StartSnapshot answered snapshot {id} of an earlier attempt, which is in \
state `error`; starting over with a new snapshot"
                );
                journal.start_over();
                journal.save(journal_path)?;
                continue;
            }
            State::Completed => {
                // An earlier upload of the same content with the same
                // parameters finished this snapshot: nothing left to send.
                log::warn!(
                    "snapshot {id} holds this image already (an earlier upload with the same \
content and parameters completed it); reusing it"
                );
                // Its blocks are still read once, for the digest store.
                journal.completed = true;
            }
            _ => log::info!("started snapshot {id}"),
        }
        journal.snapshot_id = Some(id.clone());
        journal.save(journal_path)?;
        return Ok(id);
    }
    Err(UploadError::StartKeepsFailing)
}

/// How one block ended.
enum Done {
    Sent,
    /// To be written, but the snapshot is complete already (StartSnapshot
    /// answered a completed snapshot for the token): counted, not sent.
    Counted,
    Skipped,
}

/// Reads every block the plan names that no earlier run handled, hashes
/// it, sends it when it must be written (in the same pass: the image is
/// read once), then completes the snapshot and waits for it.
pub async fn write_snapshot(
    req: &UploadRequest,
    clients: &Clients,
    journal_path: &Path,
    journal: &mut Journal,
    plan: &BlockPlan,
    file: &Arc<File>,
    size: u64,
) -> Result<SnapshotOutcome, UploadError> {
    let snapshot_id = journal.snapshot_id.clone().expect("snapshot started");
    let mut confirmed: BTreeSet<u64> = journal.confirmed_set();
    let mut skipped: BTreeSet<u64> = journal.skipped_set();
    let mut digests = journal
        .digest_map()
        .map_err(|reason| UploadError::BadJournal {
            path: journal_path.to_path_buf(),
            reason,
        })?;
    let already = confirmed.len() as u64;
    let todo: Vec<u64> = plan
        .candidates
        .iter()
        .copied()
        .filter(|i| !confirmed.contains(i) && !skipped.contains(i))
        .collect();
    let resumed = already > 0 || journal.completed;
    let send = !journal.completed;

    let upload_started = Instant::now();
    let mut sent = 0u64;
    let mut bytes_read = 0u64;
    let bar = progress_bar(todo.len() as u64 * BLOCK_SIZE, "uploading");
    let zero_digest = blocks::zero_block_digest();
    let zero_block = Bytes::from(vec![0u8; BLOCK_SIZE as usize]);
    let mut work = futures::stream::iter(todo)
        .map(|index| {
            let file = Arc::clone(file);
            let zero_block = zero_block.clone();
            let snapshot_id = snapshot_id.as_str();
            async move {
                let (data, content, read) = if plan.in_hole(index) {
                    (zero_block, None, 0)
                } else {
                    read_block(file, index, size).await?
                };
                let action = delta::block_action(
                    index,
                    content.as_ref(),
                    plan.parent.as_ref(),
                    plan.write_zero_blocks,
                    &zero_digest,
                );
                let done = match action {
                    BlockAction::Skip => Done::Skipped,
                    BlockAction::Write(_) if !send => Done::Counted,
                    BlockAction::Write(digest) => {
                        // A block without content reads as zeros: data is zeros.
                        snapshot::put_block(clients, snapshot_id, index, data, &digest).await?;
                        Done::Sent
                    }
                };
                Ok::<_, UploadError>((index, content, done, read))
            }
        })
        .buffer_unordered(req.workers as usize);
    let save = |journal: &mut Journal,
                digests: &BTreeMap<u64, Digest>,
                confirmed: &BTreeSet<u64>,
                skipped: &BTreeSet<u64>| {
        journal.set_digests(digests);
        journal.set_confirmed(confirmed);
        journal.set_skipped(skipped);
        journal.save(journal_path)
    };
    let mut last_save = Instant::now();
    loop {
        // Wake up now and then even when no request finishes, so that a
        // Ctrl-C is honoured without waiting for slow requests.
        let next = match tokio::time::timeout(INTERRUPT_POLL, work.next()).await {
            Ok(Some(next)) => Some(next),
            Ok(None) => break,
            Err(_) => None,
        };
        match next {
            None => {}
            Some(Ok((index, content, done, read))) => {
                if let Some(digest) = content {
                    digests.insert(index, digest);
                }
                match done {
                    Done::Sent => {
                        sent += 1;
                        confirmed.insert(index);
                    }
                    Done::Counted => {
                        confirmed.insert(index);
                    }
                    Done::Skipped => {
                        skipped.insert(index);
                    }
                }
                bytes_read += read;
                bar.inc(BLOCK_SIZE);
            }
            Some(Err(err)) => {
                drop(work);
                bar.abandon();
                save(journal, &digests, &confirmed, &skipped)?;
                return Err(interrupted_or(err, &snapshot_id, journal_path));
            }
        }
        if last_save.elapsed() >= JOURNAL_SAVE_INTERVAL {
            save(journal, &digests, &confirmed, &skipped)?;
            last_save = Instant::now();
        }
        if interrupt::requested() {
            drop(work);
            bar.abandon();
            save(journal, &digests, &confirmed, &skipped)?;
            return Err(UploadError::Interrupted {
                snapshot_id,
                journal: journal_path.to_path_buf(),
            });
        }
    }
    drop(work);
    bar.finish_and_clear();
    // Everything confirmed is on disk before CompleteSnapshot, so the
    // journal never says "incomplete" about a completed snapshot's blocks.
    save(journal, &digests, &confirmed, &skipped)?;
    check_unchanged(req, journal, size, &digests)?;

    if send {
        let written: Vec<Digest> = confirmed
            .iter()
            .map(|i| digests.get(i).copied().unwrap_or(zero_digest))
            .collect();
        let aggregate = blocks::linear_checksum(written.iter());
        snapshot::complete(clients, &snapshot_id, confirmed.len() as u64, &aggregate)
            .await
            .map_err(|e| interrupted_or(e.into(), &snapshot_id, journal_path))?;
        journal.completed = true;
        journal.save(journal_path)?;
    }
    let upload_seconds = upload_started.elapsed().as_secs_f64();
    snapshot::wait_completed(
        clients,
        &snapshot_id,
        Duration::from_secs(req.wait_timeout.saturating_mul(60)),
    )
    .await
    .map_err(|e| interrupted_or(e.into(), &snapshot_id, journal_path))?;
    let blocks_unchanged = skipped.iter().filter(|i| digests.contains_key(i)).count() as u64;
    Ok(SnapshotOutcome {
        snapshot_id,
        resumed,
        blocks_total: confirmed.len() as u64,
        blocks_sent: sent,
        blocks_already_confirmed: already,
        data_blocks: digests.len() as u64,
        blocks_unchanged,
        bytes_read,
        upload_seconds,
        digests,
    })
}

/// Reads one block on the blocking pool: its bytes, its digest (None when
/// all zeros) and how many image bytes that read.
async fn read_block(
    file: Arc<File>,
    index: u64,
    size: u64,
) -> Result<(Bytes, Option<Digest>, u64), UploadError> {
    let read = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; BLOCK_SIZE as usize];
        blocks::read_block(&file, index, size, &mut buf)?;
        let content = (!blocks::is_zero(&buf)).then(|| blocks::sha256(&buf));
        Ok::<_, std::io::Error>((buf, content))
    })
    .await
    .expect("block read task panicked");
    let (buf, content) = read.map_err(BlocksError::Io)?;
    let read = size.saturating_sub(index * BLOCK_SIZE).min(BLOCK_SIZE);
    Ok((Bytes::from(buf), content, read))
}

/// Before CompleteSnapshot: the image is the one the upload started with.
/// Its size and modification time must not have moved (checked for every
/// upload), and when the token was derived from a pass over its blocks, the
/// blocks read now must hash to the same content.
fn check_unchanged(
    req: &UploadRequest,
    journal: &Journal,
    size: u64,
    digests: &BTreeMap<u64, Digest>,
) -> Result<(), UploadError> {
    let changed = || UploadError::ImageChanged {
        path: req.image.clone(),
    };
    let now = std::fs::File::open(&req.image)
        .and_then(|f| ImageIdentity::of(&req.image, &f))
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

/// An interrupted call becomes the "journal kept, rerun to resume" error.
pub fn interrupted_or(err: UploadError, snapshot_id: &str, journal_path: &Path) -> UploadError {
    match err {
        UploadError::Snapshot(SnapshotError::Interrupted)
        | UploadError::Register(RegisterError::Interrupted)
        | UploadError::Register(RegisterError::Snapshot(SnapshotError::Interrupted))
        | UploadError::Blocks(BlocksError::Interrupted) => UploadError::Interrupted {
            snapshot_id: snapshot_id.to_string(),
            journal: journal_path.to_path_buf(),
        },
        other => other,
    }
}

/// After the snapshot exists, a failure deletes it (unless --keep-snapshot);
/// an interruption keeps it and the journal for a rerun.
pub async fn clean_up_after_failure(
    req: &UploadRequest,
    clients: &Clients,
    journal_path: &Path,
    snapshot_id: &str,
    err: UploadError,
) -> UploadError {
    let err = interrupted_or(err, snapshot_id, journal_path);
    if matches!(err, UploadError::Interrupted { .. }) {
        return err;
    }
    let cleanup = if req.keep_snapshot {
        format!(
            "kept snapshot {snapshot_id} and the journal {} (--keep-snapshot): rerun the same \
command to resume",
            journal_path.display()
        )
    } else {
        match snapshot::delete(clients, snapshot_id).await {
            Ok(()) => {
                // The journal stays, with the next attempt number: the old
                // ClientToken would make EBS answer the deleted snapshot.
                if let Ok(Some(mut journal)) = Journal::load(journal_path) {
                    journal.start_over();
                    if let Err(err) = journal.save(journal_path) {
                        log::warn!("{err}");
                    }
                }
                format!(
                    "deleted snapshot {snapshot_id} (pass --keep-snapshot to keep a failed \
upload's snapshot and resume it later)"
                )
            }
            Err(delete_err) => format!(
                "could not delete snapshot {snapshot_id} ({delete_err}); the journal {} still \
records it, so a rerun resumes or replaces it",
                journal_path.display()
            ),
        }
    };
    UploadError::AfterSnapshot {
        source: Box::new(err),
        cleanup,
    }
}
