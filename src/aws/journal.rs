//! The upload journal: the only record of a pending snapshot's progress.
//!
//! EBS cannot tell which blocks a pending snapshot holds (ListSnapshotBlocks
//! answers only for completed snapshots), so imgforge writes down, as it
//! goes, the snapshot it started, the parameters it started it with, every
//! block's digest, and which blocks EBS confirmed. A rerun after a crash or
//! `kill -9` reads this file and sends only the rest.
//!
//! The file is replaced atomically (write a sibling, fsync, rename, fsync
//! the directory): after a crash it holds either the old or the new state,
//! never half of each. It may lag behind EBS (blocks confirmed since the last
//! save are sent again, which is harmless: a block written twice is simply
//! overwritten), but it never claims a block EBS has not confirmed.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::blocks::{BlockRecord, Digest};

/// Bumped when the format changes; an older journal is then ignored.
const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(
        "cannot write the upload journal {path}: {source} (pass --journal PATH to keep it elsewhere)"
    )]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the upload journal {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Which file the journal belongs to: if any of this changed, the image may
/// have changed, and the journal's digests cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageIdentity {
    pub path: PathBuf,
    pub size: u64,
    pub device: u64,
    pub inode: u64,
    pub mtime_ns: i128,
}

impl ImageIdentity {
    pub fn of(path: &Path, file: &File) -> std::io::Result<Self> {
        let meta = file.metadata()?;
        Ok(Self {
            path: std::fs::canonicalize(path)?,
            size: meta.len(),
            device: meta.dev(),
            inode: meta.ino(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        })
    }
}

/// What StartSnapshot is called with. A rerun with other parameters is a
/// different upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotParams {
    pub volume_size_gib: u64,
    pub description: String,
    pub tags: Vec<(String, String)>,
    pub encrypted: bool,
    pub kms_key_id: Option<String>,
    pub timeout_minutes: u32,
}

/// One block to write: index and hex SHA-256, serialized as `[index, "hex"]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalBlock(pub u64, pub String);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Journal {
    pub format_version: u32,
    pub image: ImageIdentity,
    pub params: SnapshotParams,
    /// SHA-256 over the image size and every block's index and digest.
    pub content_sha256: String,
    /// Starts at 1; a new snapshot (after one that timed out, failed or
    /// vanished) takes the next one, and with it a new ClientToken.
    pub attempt: u32,
    pub client_token: String,
    /// Set right after StartSnapshot answers.
    pub snapshot_id: Option<String>,
    /// Every block the snapshot gets, ascending.
    pub blocks: Vec<JournalBlock>,
    /// Blocks EBS confirmed, as `[first, end)` ranges of block indices.
    pub confirmed: Vec<(u64, u64)>,
    /// CompleteSnapshot answered.
    pub completed: bool,
}

impl Journal {
    pub fn new(image: ImageIdentity, params: SnapshotParams, blocks: &[BlockRecord]) -> Self {
        let content = content_digest(image.size, blocks);
        let mut journal = Self {
            format_version: FORMAT_VERSION,
            image,
            params,
            content_sha256: hex::encode(content),
            attempt: 1,
            client_token: String::new(),
            snapshot_id: None,
            blocks: blocks
                .iter()
                .map(|b| JournalBlock(b.index, hex::encode(b.digest)))
                .collect(),
            confirmed: Vec::new(),
            completed: false,
        };
        journal.client_token = journal.derive_client_token();
        journal
    }

    /// Forgets the current snapshot and prepares a new one (new token).
    pub fn start_over(&mut self) {
        self.attempt += 1;
        self.snapshot_id = None;
        self.confirmed.clear();
        self.completed = false;
        self.client_token = self.derive_client_token();
    }

    /// StartSnapshot's ClientToken: the image's content, the parameters and
    /// the attempt number. A crash between StartSnapshot and the first save
    /// reruns StartSnapshot with the same token, and EBS answers the same
    /// snapshot instead of starting a second one.
    pub fn derive_client_token(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(b"imgforge-upload-v1\0");
        hasher.update(self.content_sha256.as_bytes());
        hasher.update(serde_json::to_vec(&self.params).expect("params serialize"));
        hasher.update(self.attempt.to_le_bytes());
        hex::encode(hasher.finalize())
    }

    /// Whether this journal describes the same image and parameters.
    pub fn matches(&self, image: &ImageIdentity, params: &SnapshotParams) -> bool {
        self.format_version == FORMAT_VERSION && &self.image == image && &self.params == params
    }

    pub fn block_records(&self) -> Result<Vec<BlockRecord>, String> {
        self.blocks
            .iter()
            .map(|JournalBlock(index, digest)| {
                let bytes = hex::decode(digest).map_err(|e| e.to_string())?;
                let digest: Digest = bytes
                    .try_into()
                    .map_err(|_| format!("block {index}: digest is not 32 bytes"))?;
                Ok(BlockRecord {
                    index: *index,
                    digest,
                })
            })
            .collect()
    }

    pub fn confirmed_set(&self) -> BTreeSet<u64> {
        self.confirmed.iter().flat_map(|&(a, b)| a..b).collect()
    }

    pub fn set_confirmed(&mut self, confirmed: &BTreeSet<u64>) {
        self.confirmed = to_ranges(confirmed);
    }

    pub fn load(path: &Path) -> Result<Option<Self>, JournalError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(JournalError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        match Self::parse(&text) {
            Ok(journal) => Ok(Some(journal)),
            Err(err) => {
                // Cannot happen through atomic saves; an edited or foreign
                // file must not stop an upload, only be reported.
                log::warn!(
                    "ignoring the upload journal {}: it is not valid ({err})",
                    path.display()
                );
                Ok(None)
            }
        }
    }

    /// A journal from its JSON text, checked for what a resumed upload
    /// relies on: confirmed ranges that are ascending, disjoint and cover
    /// no more indices than there are blocks (`confirmed_set` expands
    /// them; `[0, 2^64)` would never finish), and an attempt number that
    /// `start_over` can still raise.
    pub fn parse(text: &str) -> Result<Self, String> {
        let journal: Self = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let mut covered = 0u64;
        let mut previous_end = 0u64;
        for (i, &(first, end)) in journal.confirmed.iter().enumerate() {
            if first >= end || (i > 0 && first < previous_end) {
                return Err(format!(
                    "confirmed range [{first}, {end}) is empty or out of order"
                ));
            }
            covered = covered.saturating_add(end - first);
            if covered > journal.blocks.len() as u64 {
                return Err(format!(
                    "the confirmed ranges cover more than its {} blocks",
                    journal.blocks.len()
                ));
            }
            previous_end = end;
        }
        if journal.attempt == u32::MAX {
            return Err(format!("attempt {} cannot be retried", journal.attempt));
        }
        Ok(journal)
    }

    /// Replaces the journal file atomically and durably.
    pub fn save(&self, path: &Path) -> Result<(), JournalError> {
        let err = |source| JournalError::Write {
            path: path.to_path_buf(),
            source,
        };
        let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(".tmp");
        let tmp = path.with_file_name(tmp_name);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(err)?;
        let text = serde_json::to_vec(self).expect("journal serializes");
        file.write_all(&text).map_err(err)?;
        file.sync_all().map_err(err)?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(err)?;
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
        Ok(())
    }

    pub fn remove(path: &Path) {
        if let Err(err) = std::fs::remove_file(path)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            log::warn!("cannot remove the upload journal {}: {err}", path.display());
        }
    }
}

/// Identifies the image's content as the snapshot will hold it.
pub fn content_digest(size: u64, blocks: &[BlockRecord]) -> Digest {
    let mut hasher = Sha256::new();
    hasher.update(size.to_le_bytes());
    for block in blocks {
        hasher.update(block.index.to_le_bytes());
        hasher.update(block.digest);
    }
    hasher.finalize().into()
}

/// `{1,2,3,7}` -> `[(1,4),(7,8)]`.
pub fn to_ranges(set: &BTreeSet<u64>) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for &i in set {
        match ranges.last_mut() {
            Some((_, end)) if *end == i => *end = i + 1,
            _ => ranges.push((i, i + 1)),
        }
    }
    ranges
}

/// The default journal path: beside the image.
pub fn default_path(image: &Path) -> PathBuf {
    let mut name = image.file_name().unwrap_or_default().to_os_string();
    name.push(".upload-journal.json");
    image.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> SnapshotParams {
        SnapshotParams {
            volume_size_gib: 8,
            description: "d".into(),
            tags: vec![("k".into(), "v".into())],
            encrypted: false,
            kms_key_id: None,
            timeout_minutes: 60,
        }
    }

    fn identity() -> ImageIdentity {
        ImageIdentity {
            path: "/x.raw".into(),
            size: 1 << 30,
            device: 1,
            inode: 2,
            mtime_ns: 3,
        }
    }

    fn blocks() -> Vec<BlockRecord> {
        (0..5)
            .map(|i| BlockRecord {
                index: i * 3,
                digest: [i as u8; 32],
            })
            .collect()
    }

    #[test]
    fn ranges_round_trip() {
        let set: BTreeSet<u64> = [1, 2, 3, 7, 9, 10].into_iter().collect();
        assert_eq!(to_ranges(&set), vec![(1, 4), (7, 8), (9, 11)]);
        let mut j = Journal::new(identity(), params(), &blocks());
        j.set_confirmed(&set);
        assert_eq!(j.confirmed_set(), set);
    }

    #[test]
    fn token_depends_on_content_params_and_attempt() {
        let a = Journal::new(identity(), params(), &blocks());
        let same = Journal::new(identity(), params(), &blocks());
        assert_eq!(a.client_token, same.client_token);
        assert_eq!(a.client_token.len(), 64);

        let mut other_blocks = blocks();
        other_blocks[2].digest[0] ^= 1;
        assert_ne!(
            Journal::new(identity(), params(), &other_blocks).client_token,
            a.client_token
        );
        let mut other_params = params();
        other_params.encrypted = true;
        assert_ne!(
            Journal::new(identity(), other_params, &blocks()).client_token,
            a.client_token
        );
        let mut retried = a.clone();
        retried.snapshot_id = Some("snap-1".into());
        retried.start_over();
        assert_ne!(retried.client_token, a.client_token);
        assert_eq!(retried.attempt, 2);
        assert!(retried.snapshot_id.is_none());
    }

    #[test]
    fn save_load_resume() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img.raw.upload-journal.json");
        assert!(Journal::load(&path).unwrap().is_none());
        let mut j = Journal::new(identity(), params(), &blocks());
        j.snapshot_id = Some("snap-123".into());
        j.set_confirmed(&[0, 3].into_iter().collect());
        j.save(&path).unwrap();
        let loaded = Journal::load(&path).unwrap().unwrap();
        assert!(loaded.matches(&identity(), &params()));
        assert_eq!(loaded.snapshot_id.as_deref(), Some("snap-123"));
        assert_eq!(loaded.block_records().unwrap(), blocks());
        let todo: Vec<u64> = loaded
            .block_records()
            .unwrap()
            .iter()
            .map(|b| b.index)
            .filter(|i| !loaded.confirmed_set().contains(i))
            .collect();
        assert_eq!(todo, vec![6, 9, 12]);

        let mut changed = identity();
        changed.mtime_ns += 1;
        assert!(!loaded.matches(&changed, &params()));
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // A corrupt journal is ignored, not fatal.
        std::fs::write(&path, "{not json").unwrap();
        assert!(Journal::load(&path).unwrap().is_none());
    }

    /// `confirmed_set` expanded `[0, 2^64)` into a set: it never returned
    /// (and `start_over` overflowed the attempt counter). Such a journal is
    /// ignored like a corrupt one.
    #[test]
    fn journal_with_absurd_ranges_or_attempt_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.json");
        let good = serde_json::to_value(Journal::new(identity(), params(), &blocks())).unwrap();
        let bad = [
            ("confirmed", serde_json::json!([[0u64, u64::MAX]])),
            ("confirmed", serde_json::json!([[3, 3]])),
            ("confirmed", serde_json::json!([[5, 9], [0, 1]])),
            ("confirmed", serde_json::json!([[0, 3], [2, 4]])),
            ("attempt", serde_json::json!(u32::MAX)),
        ];
        for (field, value) in bad {
            let mut journal = good.clone();
            journal[field] = value.clone();
            let text = journal.to_string();
            assert!(Journal::parse(&text).is_err(), "{field}: {value}");
            std::fs::write(&path, &text).unwrap();
            assert!(Journal::load(&path).unwrap().is_none(), "{field}: {value}");
        }
        let mut fine = good.clone();
        fine["confirmed"] = serde_json::json!([[0, 1], [3, 7]]);
        let journal = Journal::parse(&fine.to_string()).unwrap();
        assert_eq!(journal.confirmed_set().len(), 5);
    }
}
