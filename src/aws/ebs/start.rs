//! Which snapshot an upload writes to: the journal's, when it records this
//! image with these parameters and its snapshot can still take blocks; else
//! a new one (StartSnapshot with the journal's ClientToken, so that a crash
//! between the two cannot start a second snapshot). And what happens to the
//! snapshot when the upload fails after starting it.

use std::path::Path;

use super::journal::{ImageIdentity, Journal, SnapshotParams};
use super::snapshot::{self, State};
use super::writer::WriteError;
use crate::aws::client::Clients;

/// The journal of an earlier run of this upload (same image, same
/// parameters), if there is one. A journal of another image or other
/// parameters is dropped, and its pending snapshot deleted.
pub async fn load_journal(
    clients: &Clients,
    journal_path: &Path,
    identity: &ImageIdentity,
    params: &SnapshotParams,
) -> Result<Option<Journal>, WriteError> {
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

/// The journal's snapshot if it can still be written to, else a new one.
pub async fn ensure_snapshot(
    clients: &Clients,
    journal_path: &Path,
    journal: &mut Journal,
    params: &SnapshotParams,
) -> Result<String, WriteError> {
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
    Err(WriteError::StartKeepsFailing)
}

/// After a failure once the snapshot exists: deletes it (unless
/// `keep_snapshot`) and says what happened to it, for the error message.
/// An interruption never comes here: it keeps both for a rerun.
pub async fn clean_up_after_failure(
    clients: &Clients,
    journal_path: &Path,
    snapshot_id: &str,
    keep_snapshot: bool,
) -> String {
    if keep_snapshot {
        return format!(
            "kept snapshot {snapshot_id} and the journal {} (--keep-snapshot): rerun the same \
command to resume",
            journal_path.display()
        );
    }
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
}
