//! The upload journal: the only record of a pending snapshot's progress.
//!
//! EBS cannot tell which blocks a pending snapshot holds (ListSnapshotBlocks
//! answers only for completed snapshots), so imgforge writes down, as it
//! goes, the snapshot it started, the parameters and ClientToken it started
//! it with, the digest of every image block it has read, and which blocks
//! EBS confirmed (or were decided not to be written: all-zero, or unchanged
//! from the parent snapshot). A rerun after a crash or `kill -9` reads this
//! file and reads and sends only the rest.
//!
//! The image is read once per upload: block digests are computed while the
//! blocks are sent, so the journal fills in as the upload goes.
//!
//! The file is replaced atomically (write a sibling, fsync, rename, fsync
//! the directory): after a crash it holds either the old or the new state,
//! never half of each. It may lag behind EBS (blocks confirmed since the last
//! save are read and sent again, which is harmless: a block written twice is
//! simply overwritten), but it never claims a block EBS has not confirmed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::blocks::{BlockRecord, Digest};
use crate::image::manifest::Manifest;

/// Bumped when the format changes; an older journal is then ignored.
/// 2: digests fill in during the upload (one read); token basis; parent.
const FORMAT_VERSION: u32 = 2;

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
    /// The snapshot this one is incremental to (StartSnapshot
    /// ParentSnapshotId): blocks not written are inherited from it.
    #[serde(default)]
    pub parent_snapshot_id: Option<String>,
}

/// What StartSnapshot's ClientToken is derived from. The token makes a
/// rerun of StartSnapshot (after a crash before the journal recorded the
/// answer) return the same snapshot, so it must be fixed before the first
/// call and be the same on every rerun: it is kept here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenBasis {
    /// The image's sha256 from its build manifest (`IMAGE.json`), trusted
    /// because the image's size and modification time agree with it: the
    /// same image and parameters give the same token from any journal.
    Manifest { sha256: String },
    /// A digest of a pass over the image's blocks (an image without a
    /// manifest that needs a default name, which is its content hash).
    Blocks { sha256: String },
    /// The sha256 of a pass over the whole image (no trusted manifest): the
    /// same digest the manifest would give, tagged on the snapshot.
    Image { sha256: String },
    /// Random, drawn once per journal: the image was not hashed before the
    /// upload (its digests are computed while it is sent).
    Random { nonce: String },
}

impl TokenBasis {
    pub fn random() -> Self {
        let mut nonce = [0u8; 32];
        rand::fill(&mut nonce[..]);
        Self::Random {
            nonce: hex::encode(nonce),
        }
    }

    /// The content hash, when the token is derived from one.
    pub fn content_sha256(&self) -> Option<&str> {
        match self {
            Self::Manifest { sha256 } | Self::Blocks { sha256 } | Self::Image { sha256 } => {
                Some(sha256)
            }
            Self::Random { .. } => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Journal {
    pub format_version: u32,
    pub image: ImageIdentity,
    pub params: SnapshotParams,
    pub token_basis: TokenBasis,
    /// Starts at 1; a new snapshot (after one that timed out, failed or
    /// vanished) takes the next one, and with it a new ClientToken.
    pub attempt: u32,
    pub client_token: String,
    /// Set right after StartSnapshot answers.
    pub snapshot_id: Option<String>,
    /// SHA-256 (hex) of every image block read so far that is not all
    /// zeros, by block index: the image's content as the snapshot holds it.
    pub digests: BTreeMap<u64, String>,
    /// Blocks EBS confirmed, as `[first, end)` ranges of block indices.
    pub confirmed: Vec<(u64, u64)>,
    /// Blocks read and not to be written (all zeros, or the same as the
    /// parent snapshot's), as ranges.
    #[serde(default)]
    pub skipped: Vec<(u64, u64)>,
    /// CompleteSnapshot answered.
    pub completed: bool,
}

impl Journal {
    pub fn new(image: ImageIdentity, params: SnapshotParams, token_basis: TokenBasis) -> Self {
        let mut journal = Self {
            format_version: FORMAT_VERSION,
            image,
            params,
            token_basis,
            attempt: 1,
            client_token: String::new(),
            snapshot_id: None,
            digests: BTreeMap::new(),
            confirmed: Vec::new(),
            skipped: Vec::new(),
            completed: false,
        };
        journal.client_token = journal.derive_client_token();
        journal
    }

    /// Forgets the current snapshot and prepares a new one (new token).
    /// The digests stay: they describe the image, not the snapshot.
    pub fn start_over(&mut self) {
        self.attempt += 1;
        self.snapshot_id = None;
        self.confirmed.clear();
        self.skipped.clear();
        self.completed = false;
        self.client_token = self.derive_client_token();
    }

    /// StartSnapshot's ClientToken: the token basis (content hash or a
    /// nonce), the parameters (parent included) and the attempt number.
    pub fn derive_client_token(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(b"imgforge-upload-v2\0");
        hasher.update(serde_json::to_vec(&self.token_basis).expect("basis serializes"));
        hasher.update(serde_json::to_vec(&self.params).expect("params serialize"));
        hasher.update(self.attempt.to_le_bytes());
        hex::encode(hasher.finalize())
    }

    /// Whether this journal describes the same image and parameters.
    pub fn matches(&self, image: &ImageIdentity, params: &SnapshotParams) -> bool {
        self.format_version == FORMAT_VERSION && &self.image == image && &self.params == params
    }

    /// The digests read so far, as records in ascending block order.
    pub fn block_records(&self) -> Result<Vec<BlockRecord>, String> {
        self.digests
            .iter()
            .map(|(&index, digest)| {
                Ok(BlockRecord {
                    index,
                    digest: parse_digest(index, digest)?,
                })
            })
            .collect()
    }

    /// The digests read so far, by block index.
    pub fn digest_map(&self) -> Result<BTreeMap<u64, Digest>, String> {
        Ok(self
            .block_records()?
            .into_iter()
            .map(|b| (b.index, b.digest))
            .collect())
    }

    pub fn set_digests(&mut self, digests: &BTreeMap<u64, Digest>) {
        self.digests = digests
            .iter()
            .map(|(&index, digest)| (index, hex::encode(digest)))
            .collect();
    }

    pub fn confirmed_set(&self) -> BTreeSet<u64> {
        self.confirmed.iter().flat_map(|&(a, b)| a..b).collect()
    }

    pub fn set_confirmed(&mut self, confirmed: &BTreeSet<u64>) {
        self.confirmed = to_ranges(confirmed);
    }

    pub fn skipped_set(&self) -> BTreeSet<u64> {
        self.skipped.iter().flat_map(|&(a, b)| a..b).collect()
    }

    pub fn set_skipped(&mut self, skipped: &BTreeSet<u64>) {
        self.skipped = to_ranges(skipped);
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
    /// relies on: confirmed and skipped ranges that are ascending, disjoint
    /// and cover no more indices than the image has blocks (`confirmed_set`
    /// expands them; `[0, 2^64)` would never finish), digests that are
    /// SHA-256s, and an attempt number that `start_over` can still raise.
    pub fn parse(text: &str) -> Result<Self, String> {
        let journal: Self = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let blocks = journal.image.size.div_ceil(super::blocks::BLOCK_SIZE);
        for (what, ranges) in [
            ("confirmed", &journal.confirmed),
            ("skipped", &journal.skipped),
        ] {
            let mut previous_end = 0u64;
            for (i, &(first, end)) in ranges.iter().enumerate() {
                if first >= end || (i > 0 && first < previous_end) {
                    return Err(format!(
                        "{what} range [{first}, {end}) is empty or out of order"
                    ));
                }
                if end > blocks {
                    return Err(format!(
                        "{what} range [{first}, {end}) is past the image's {blocks} blocks"
                    ));
                }
                previous_end = end;
            }
        }
        if let Some((&index, _)) = journal.digests.iter().find(|(i, _)| **i >= blocks) {
            return Err(format!("block {index} is past the image's {blocks} blocks"));
        }
        journal.block_records()?;
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

fn parse_digest(index: u64, hex_digest: &str) -> Result<Digest, String> {
    let bytes = hex::decode(hex_digest).map_err(|e| format!("block {index}: {e}"))?;
    bytes
        .try_into()
        .map_err(|_| format!("block {index}: digest is not 32 bytes"))
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

/// The image's sha256 from its build manifest (`IMAGE.json` beside it),
/// when cheaply checkable facts agree with it: the manifest records the
/// image's size, and the image was not modified after the manifest was
/// written (the build writes the image first). Then the upload needs no
/// pass over the image before it starts.
pub fn trusted_manifest_sha256(image: &Path, identity: &ImageIdentity) -> Option<String> {
    let path = PathBuf::from(format!("{}.json", image.display()));
    let meta = std::fs::metadata(&path).ok()?;
    let manifest = Manifest::from_json(&std::fs::read_to_string(&path).ok()?).ok()?;
    let sha256 = manifest.sha256?;
    let manifest_mtime_ns =
        i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
    if manifest.disk.size_bytes != identity.size {
        log::info!(
            "{} records a size of {} bytes, the image has {}: not using its sha256",
            path.display(),
            manifest.disk.size_bytes,
            identity.size
        );
        return None;
    }
    if identity.mtime_ns > manifest_mtime_ns {
        log::info!(
            "{} was modified after its manifest {} was written: not using the manifest's sha256",
            image.display(),
            path.display()
        );
        return None;
    }
    if sha256.len() != 64 || !sha256.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    Some(sha256)
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
            parent_snapshot_id: None,
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

    fn content() -> TokenBasis {
        TokenBasis::Manifest {
            sha256: "ab".repeat(32),
        }
    }

    fn digests() -> BTreeMap<u64, Digest> {
        (0..5).map(|i| (i * 3, [i as u8; 32])).collect()
    }

    #[test]
    fn ranges_round_trip() {
        let set: BTreeSet<u64> = [1, 2, 3, 7, 9, 10].into_iter().collect();
        assert_eq!(to_ranges(&set), vec![(1, 4), (7, 8), (9, 11)]);
        let mut j = Journal::new(identity(), params(), content());
        j.set_confirmed(&set);
        assert_eq!(j.confirmed_set(), set);
        j.set_skipped(&set);
        assert_eq!(j.skipped_set(), set);
    }

    #[test]
    fn token_depends_on_basis_params_parent_and_attempt() {
        let a = Journal::new(identity(), params(), content());
        let same = Journal::new(identity(), params(), content());
        assert_eq!(a.client_token, same.client_token);
        assert_eq!(a.client_token.len(), 64);

        let other = TokenBasis::Blocks {
            sha256: "cd".repeat(32),
        };
        assert_ne!(
            Journal::new(identity(), params(), other).client_token,
            a.client_token
        );
        let mut other_params = params();
        other_params.encrypted = true;
        assert_ne!(
            Journal::new(identity(), other_params, content()).client_token,
            a.client_token
        );
        let mut with_parent = params();
        with_parent.parent_snapshot_id = Some("snap-1".into());
        assert_ne!(
            Journal::new(identity(), with_parent, content()).client_token,
            a.client_token
        );
        // Random bases differ per journal, and stay with it.
        let r1 = Journal::new(identity(), params(), TokenBasis::random());
        let r2 = Journal::new(identity(), params(), TokenBasis::random());
        assert_ne!(r1.client_token, r2.client_token);
        assert_eq!(r1.client_token, r1.derive_client_token());

        let mut retried = a.clone();
        retried.snapshot_id = Some("snap-1".into());
        retried.set_digests(&digests());
        retried.start_over();
        assert_ne!(retried.client_token, a.client_token);
        assert_eq!(retried.attempt, 2);
        assert!(retried.snapshot_id.is_none());
        assert_eq!(retried.digest_map().unwrap(), digests(), "digests stay");
    }

    #[test]
    fn save_load_resume() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img.raw.upload-journal.json");
        assert!(Journal::load(&path).unwrap().is_none());
        let mut j = Journal::new(identity(), params(), TokenBasis::random());
        j.snapshot_id = Some("snap-123".into());
        j.set_digests(&digests());
        j.set_confirmed(&[0, 3].into_iter().collect());
        j.set_skipped(&[4].into_iter().collect());
        j.save(&path).unwrap();
        let loaded = Journal::load(&path).unwrap().unwrap();
        assert!(loaded.matches(&identity(), &params()));
        assert_eq!(loaded.snapshot_id.as_deref(), Some("snap-123"));
        assert_eq!(loaded.digest_map().unwrap(), digests());
        assert_eq!(loaded.client_token, j.client_token, "the nonce is kept");
        assert_eq!(loaded.skipped_set(), [4].into_iter().collect());

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
    fn journal_with_absurd_ranges_digests_or_attempt_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.json");
        let good = serde_json::to_value(Journal::new(identity(), params(), content())).unwrap();
        let bad = [
            ("confirmed", serde_json::json!([[0u64, u64::MAX]])),
            ("confirmed", serde_json::json!([[3, 3]])),
            ("confirmed", serde_json::json!([[5, 9], [0, 1]])),
            ("skipped", serde_json::json!([[0, 3], [2, 4]])),
            ("skipped", serde_json::json!([[0, 3000]])),
            ("digests", serde_json::json!({"1": "abcd"})),
            ("digests", serde_json::json!({"99999": "00".repeat(32)})),
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
