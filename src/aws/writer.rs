//! The snapshot writer: reads the image (or a matching journal), starts or
//! resumes the snapshot, sends every unconfirmed block, completes it, and
//! cleans up after a failure. Takes the plain [`UploadRequest`].

use std::collections::BTreeSet;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

use super::blocks::{self, BLOCK_SIZE, BlockRecord, BlocksError};
use super::client::Clients;
use super::journal::{ImageIdentity, Journal, SnapshotParams};
use super::register::RegisterError;
use super::request::{UploadError, UploadRequest};
use super::snapshot::{self, SnapshotError, State};
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
    pub blocks_total: u64,
    pub blocks_sent: u64,
    pub blocks_already_confirmed: u64,
    pub bytes_read: u64,
    pub upload_seconds: f64,
}

/// A journal that matches this image and these parameters, or a fresh one
/// from reading the image. Also answers the bytes read doing so.
pub async fn load_or_scan(
    clients: &Clients,
    journal_path: &Path,
    file: &File,
    identity: ImageIdentity,
    params: &SnapshotParams,
) -> Result<(Journal, Vec<BlockRecord>, u64), UploadError> {
    if let Some(old) = Journal::load(journal_path)? {
        if old.matches(&identity, params) {
            match old.block_records() {
                Ok(list) => return Ok((old, list, 0)),
                Err(reason) => log::warn!(
                    "ignoring the upload journal {}: {reason}",
                    journal_path.display()
                ),
            }
        } else {
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
        }
    }
    // How much data there is is not known before the scan; show a counter.
    let bar = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{msg:9} {binary_bytes} {binary_bytes_per_sec}")
            .expect("valid template"),
    );
    bar.set_message("reading");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let scan = {
        let bar = bar.clone();
        blocks::scan(file, identity.size, params.encrypted, threads, move |n| {
            bar.inc(n)
        })?
    };
    bar.finish_and_clear();
    log::info!(
        "{} blocks to write ({} MiB of data read, {} all-zero blocks skipped)",
        scan.blocks.len(),
        scan.bytes_read >> 20,
        if params.encrypted {
            0
        } else {
            scan.zero_blocks
        }
    );
    let journal = Journal::new(identity, params.clone(), &scan.blocks);
    journal.save(journal_path)?;
    Ok((journal, scan.blocks, scan.bytes_read))
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
                        "imgforge: resuming snapshot {id}: {confirmed} of {} blocks already confirmed",
                        journal.blocks.len()
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
                let all: BTreeSet<u64> = journal.blocks.iter().map(|b| b.0).collect();
                journal.set_confirmed(&all);
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

/// Sends every unconfirmed block, completes the snapshot, waits for it.
pub async fn write_snapshot(
    req: &UploadRequest,
    clients: &Clients,
    journal_path: &Path,
    journal: &mut Journal,
    block_list: &[BlockRecord],
    file: &Arc<File>,
    size: u64,
) -> Result<SnapshotOutcome, UploadError> {
    let snapshot_id = journal.snapshot_id.clone().expect("snapshot started");
    let mut confirmed: BTreeSet<u64> = journal.confirmed_set();
    let already = block_list
        .iter()
        .filter(|b| confirmed.contains(&b.index))
        .count() as u64;
    let todo: Vec<BlockRecord> = block_list
        .iter()
        .filter(|b| !confirmed.contains(&b.index))
        .copied()
        .collect();
    let resumed = already > 0 || journal.completed;

    let upload_started = Instant::now();
    let mut sent = 0u64;
    let mut bytes_read = 0u64;
    if !journal.completed {
        let bar = progress_bar(todo.len() as u64 * BLOCK_SIZE, "uploading");
        let zero_digest = blocks::zero_block_digest();
        let zero_block = Bytes::from(vec![0u8; BLOCK_SIZE as usize]);
        let mut puts = futures::stream::iter(todo)
            .map(|record| {
                let file = Arc::clone(file);
                let zero_block = zero_block.clone();
                let snapshot_id = snapshot_id.as_str();
                let image = req.image.as_path();
                async move {
                    let (data, read) = if record.digest == zero_digest {
                        // Only encrypted snapshots get zero blocks; no read needed.
                        (zero_block, 0)
                    } else {
                        read_and_verify(file, record, size, image).await?
                    };
                    snapshot::put_block(clients, snapshot_id, record.index, data, &record.digest)
                        .await?;
                    Ok::<_, UploadError>((record.index, read))
                }
            })
            .buffer_unordered(req.workers as usize);
        let mut last_save = Instant::now();
        loop {
            // Wake up now and then even when no request finishes, so that a
            // Ctrl-C is honoured without waiting for slow requests.
            let put = match tokio::time::timeout(INTERRUPT_POLL, puts.next()).await {
                Ok(Some(put)) => Some(put),
                Ok(None) => break,
                Err(_) => None,
            };
            match put {
                None => {}
                Some(Ok((index, read))) => {
                    confirmed.insert(index);
                    sent += 1;
                    bytes_read += read;
                    bar.inc(BLOCK_SIZE);
                }
                Some(Err(err)) => {
                    drop(puts);
                    bar.abandon();
                    journal.set_confirmed(&confirmed);
                    journal.save(journal_path)?;
                    return Err(interrupted_or(err, &snapshot_id, journal_path));
                }
            }
            if last_save.elapsed() >= JOURNAL_SAVE_INTERVAL {
                journal.set_confirmed(&confirmed);
                journal.save(journal_path)?;
                last_save = Instant::now();
            }
            if interrupt::requested() {
                drop(puts);
                bar.abandon();
                journal.set_confirmed(&confirmed);
                journal.save(journal_path)?;
                return Err(UploadError::Interrupted {
                    snapshot_id,
                    journal: journal_path.to_path_buf(),
                });
            }
        }
        bar.finish_and_clear();
        // Everything confirmed is on disk before CompleteSnapshot, so the
        // journal never says "incomplete" about a completed snapshot's blocks.
        journal.set_confirmed(&confirmed);
        journal.save(journal_path)?;

        let aggregate = blocks::linear_checksum(block_list.iter().map(|b| &b.digest));
        snapshot::complete(clients, &snapshot_id, block_list.len() as u64, &aggregate)
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
    Ok(SnapshotOutcome {
        snapshot_id,
        resumed,
        blocks_total: block_list.len() as u64,
        blocks_sent: sent,
        blocks_already_confirmed: already,
        bytes_read,
        upload_seconds,
    })
}

/// Reads one block on the blocking pool and checks it against the digest
/// of the first read: the checksum EBS gets must describe the data sent.
async fn read_and_verify(
    file: Arc<File>,
    record: BlockRecord,
    size: u64,
    image: &Path,
) -> Result<(Bytes, u64), UploadError> {
    let read = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; BLOCK_SIZE as usize];
        blocks::read_block(&file, record.index, size, &mut buf)?;
        let matches = blocks::sha256(&buf) == record.digest;
        Ok::<_, std::io::Error>((buf, matches))
    })
    .await
    .expect("block read task panicked");
    let (buf, matches) = read.map_err(BlocksError::Io)?;
    if !matches {
        return Err(UploadError::ImageChanged {
            path: image.to_path_buf(),
            index: record.index,
        });
    }
    let read = size
        .saturating_sub(record.index * BLOCK_SIZE)
        .min(BLOCK_SIZE);
    Ok((Bytes::from(buf), read))
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
