//! `imgforge upload`: image -> EBS snapshot -> AMI -> published AMIs.
//!
//! [`upload`] lists the steps; each is a job of its own:
//! 1. read the image ([`open_image`]) and connect; check the publish targets
//!    (regions exist) before anything is written;
//! 2. the source AMI ([`source_ami`]): an AMI of the name is reused, else
//!    the snapshot is written ([`super::writer`]) and registered
//!    ([`super::register`]);
//! 3. publish ([`super::publish`]): copies, tags, sharing, deprecation, SSM;
//! 4. outputs ([`super::output`]): ami-latest.txt, packer-manifest.json.

use std::fs::File;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::ami::names::{self, default_ami_name};
use super::ami::platform::{self, Registration};
use super::ami::register::{self, BootMode, ExistingImage, ImageSpec};
use super::client::{self, Clients};
use super::ebs::blocks::BLOCK_SIZE;
use super::ebs::delta::{self, DigestStore, SnapshotRecord};
use super::ebs::journal::{self, ImageIdentity, Journal, SnapshotParams, TokenBasis};
use super::ebs::writer;
use super::output::{self, UploadResult};
use super::publish;
pub use super::request::{MAX_VOLUME_GIB, UploadError, UploadRequest};
use crate::image::manifest::Manifest;

const GIB: u64 = 1 << 30;

/// The whole upload, step by step.
pub async fn upload(req: &UploadRequest) -> Result<UploadResult, UploadError> {
    let started = Instant::now();
    let (file, size) = open_image(&req.image)?;
    let clients = client::connect(&req.connection).await?;
    publish::preflight(&clients, &req.publish).await?;
    let mut result = source_ami(req, &clients, file, size, started).await?;
    if let Some(source) = result.source_image() {
        let report = publish::publish(&clients, &source, &req.publish).await;
        result.regions = report.regions;
    }
    result.elapsed_seconds = started.elapsed().as_secs_f64();
    let (succeeded, failed) = result.succeeded_and_failed();
    if !failed.is_empty() {
        return Err(UploadError::PartialPublish {
            succeeded,
            failed,
            result: Box::new(result),
        });
    }
    write_outputs(req, &result)?;
    Ok(result)
}

/// Opens the image and checks that it is something we can upload.
pub fn open_image(path: &Path) -> Result<(File, u64), UploadError> {
    let bad = |reason: String| UploadError::BadImage {
        path: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_block_device() {
            "a block device"
        } else {
            "not a regular file"
        };
        return Err(bad(format!(
            "is {what}; upload takes a raw disk image file (e.g. from `imgforge build -o image.raw`)"
        )));
    }
    let file = File::open(path).map_err(|e| bad(format!("cannot open it: {e}")))?;
    let size = meta.len();
    if size == 0 {
        return Err(bad("is empty; there is nothing to upload".into()));
    }
    if size % 512 != 0 {
        log::warn!(
            "{}: {size} bytes is not a multiple of 512; the last block is padded with zeros",
            path.display()
        );
    }
    Ok((file, size))
}

pub fn volume_size_gib(requested: Option<u64>, image_size: u64) -> Result<u64, UploadError> {
    let needed = image_size.div_ceil(GIB);
    let gib = match requested {
        Some(given) if given < needed => {
            return Err(UploadError::VolumeTooSmall {
                given,
                size: image_size,
                needed,
            });
        }
        Some(given) => given,
        None => needed,
    };
    if gib > MAX_VOLUME_GIB {
        return Err(UploadError::VolumeTooLarge { gib });
    }
    Ok(gib)
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
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

/// The AMI in the connection's region: reused by name, or written and
/// registered (replacing the old one with --force-deregister).
async fn source_ami(
    req: &UploadRequest,
    clients: &Clients,
    file: File,
    size: u64,
    started: Instant,
) -> Result<UploadResult, UploadError> {
    let mut volume_gib = volume_size_gib(req.volume_size, size)?;
    if req.tpm && req.boot_mode == Some(BootMode::LegacyBios) {
        return Err(UploadError::TpmNeedsUefi);
    }
    // Architecture and boot mode from the image, checked against the flags
    // before anything is written.
    let registration: Option<Registration> = if req.no_register {
        None
    } else {
        Some(platform::decide_for(
            &req.image,
            req.architecture,
            req.boot_mode,
        )?)
    };
    let file_name = req
        .image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Idempotent by name: an AMI that exists is the answer, unless it is to
    // be replaced. With --name this is known before the image is read.
    let mut lookup: Option<Option<ExistingImage>> = None;
    if let (Some(name), false) = (&req.name, req.no_register) {
        let existing = register::find_by_name(clients, name).await?;
        if let Some(existing) = &existing
            && !req.force_deregister
        {
            return Ok(reuse_existing(
                req, clients, name, existing, size, volume_gib, 0, started,
            ));
        }
        lookup = Some(existing);
    }

    let store = DigestStore::new(req.state_dir.clone());
    let family = names::family_for(
        req.publish.family.as_deref(),
        req.name.as_deref(),
        &req.image,
    );
    let parent = match &req.parent {
        Some(arg) => Some(delta::resolve_parent(clients, &store, arg, &family).await?),
        None => None,
    };
    let mut encrypted = req.encrypted;
    if let Some(parent) = &parent {
        volume_gib = delta::volume_with_parent(req.volume_size, volume_gib, parent)?;
        encrypted = delta::child_encrypted(parent, req.encrypted)?;
    }
    let mut snapshot_tags = req.tags.clone();
    snapshot_tags.extend(req.snapshot_tags.iter().cloned());
    let params = SnapshotParams {
        volume_size_gib: volume_gib,
        description: req
            .description
            .clone()
            .unwrap_or_else(|| format!("imgforge upload of {file_name}")),
        tags: snapshot_tags,
        encrypted,
        kms_key_id: req.kms_key_id.clone(),
        timeout_minutes: req.snapshot_timeout,
        parent_snapshot_id: parent.as_ref().map(|p| p.snapshot_id.clone()),
    };
    let journal_path = req
        .journal
        .clone()
        .unwrap_or_else(|| journal::default_path(&req.image));
    let identity = ImageIdentity::of(&req.image, &file).map_err(|e| UploadError::BadImage {
        path: req.image.clone(),
        reason: format!("cannot read its metadata: {e}"),
    })?;

    // The ClientToken must be fixed before StartSnapshot. The image is read
    // once, during the upload, unless its default name (its content hash)
    // is needed first and no trusted manifest gives it.
    let needs_default_name = req.name.is_none() && !req.no_register;
    let mut hash_pass_bytes = 0u64;
    let mut journal = match writer::load_journal(clients, &journal_path, &identity, &params).await?
    {
        Some(journal) => journal,
        None => {
            let basis = if let Some(sha256) = trusted_manifest_sha256(&req.image, &identity) {
                TokenBasis::Manifest { sha256 }
            } else if needs_default_name {
                let (sha256, read) = writer::content_hash_pass(&file, size)?;
                hash_pass_bytes = read;
                TokenBasis::Blocks { sha256 }
            } else {
                TokenBasis::random()
            };
            let journal = Journal::new(identity, params.clone(), basis);
            journal.save(&journal_path)?;
            journal
        }
    };
    let name = match (&req.name, journal.token_basis.content_sha256()) {
        (_, _) if req.no_register => None,
        (Some(name), _) => Some(name.clone()),
        (None, Some(sha256)) => Some(default_ami_name(&req.image, sha256)),
        (None, None) => {
            // A journal of a --no-register run, resumed to register.
            let (sha256, read) = writer::content_hash_pass(&file, size)?;
            hash_pass_bytes = read;
            Some(default_ami_name(&req.image, &sha256))
        }
    };
    if let (None, Some(name)) = (&lookup, &name) {
        lookup = Some(register::find_by_name(clients, name).await?);
    }
    let mut to_replace: Option<ExistingImage> = None;
    if let (Some(Some(existing)), Some(name)) = (lookup, &name) {
        if !req.force_deregister {
            return Ok(reuse_existing(
                req,
                clients,
                name,
                &existing,
                size,
                volume_gib,
                hash_pass_bytes,
                started,
            ));
        }
        log::warn!(
            "AMI {name:?} exists ({}); it is replaced once the new snapshot is complete",
            existing.image_id
        );
        to_replace = Some(existing);
    }
    let boot_mode = registration.map(|r| r.boot_mode);
    if req.tpm && boot_mode == Some(BootMode::LegacyBios) {
        return Err(UploadError::TpmNeedsUefi);
    }

    let plan = writer::BlockPlan::new(
        &file,
        size,
        encrypted,
        parent.as_ref().map(|p| p.content.clone()),
    )?;
    let snapshot_id =
        writer::ensure_snapshot(clients, &journal_path, &mut journal, &params).await?;
    let file = Arc::new(file);
    let after_start = async {
        let outcome = writer::write_snapshot(
            req,
            clients,
            &journal_path,
            &mut journal,
            &plan,
            &file,
            size,
        )
        .await?;
        let ami_id = match (boot_mode, &name) {
            (Some(boot_mode), Some(name)) => {
                if let Some(old) = &to_replace {
                    register::deregister(clients, old).await?;
                    log::warn!(
                        "deregistered AMI {} and deleted its snapshot(s) {}",
                        old.image_id,
                        old.snapshot_ids.join(", ")
                    );
                }
                let spec = ImageSpec {
                    name: name.clone(),
                    description: params.description.clone(),
                    snapshot_id: outcome.snapshot_id.clone(),
                    volume_size_gib: volume_gib,
                    architecture: registration.expect("decided when registering").architecture,
                    boot_mode,
                    tpm: req.tpm,
                    tags: req.tags.clone(),
                };
                Some(register::register(clients, &spec).await?)
            }
            _ => None,
        };
        Ok::<_, UploadError>((outcome, ami_id))
    }
    .await;

    let (outcome, ami_id) = match after_start {
        Ok(done) => done,
        Err(err) => {
            return Err(writer::clean_up_after_failure(
                req,
                clients,
                &journal_path,
                &snapshot_id,
                err,
            )
            .await);
        }
    };
    Journal::remove(&journal_path);
    let record = SnapshotRecord {
        format_version: delta::RECORD_FORMAT_VERSION,
        snapshot_id: outcome.snapshot_id.clone(),
        region: clients.region.clone(),
        family: Some(family),
        ami_name: name.clone(),
        ami_id: ami_id.clone(),
        image: identity_path(&req.image),
        image_size_bytes: size,
        volume_size_gib: volume_gib,
        encrypted,
        block_count: super::ebs::blocks::block_count(size),
        zero_blocks_written: encrypted,
        parent_snapshot_id: params.parent_snapshot_id.clone(),
        published_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default(),
        digests: outcome
            .digests
            .iter()
            .map(|(&index, digest)| (index, hex::encode(digest)))
            .collect(),
    };
    match store.save(&record) {
        Ok(path) => log::info!(
            "block digests of {} kept in {}",
            record.snapshot_id,
            path.display()
        ),
        // The snapshot is published; only later deltas against it suffer.
        Err(err) => log::warn!("{err}; later uploads cannot use this snapshot as --parent"),
    }

    let sent_bytes = outcome.blocks_sent * BLOCK_SIZE;
    let result = UploadResult {
        ami_id,
        name,
        region: clients.region.clone(),
        snapshot_id: outcome.snapshot_id,
        reused_existing_ami: false,
        replaced_ami_id: to_replace.map(|old| old.image_id),
        resumed: outcome.resumed,
        image: req.image.clone(),
        image_size_bytes: size,
        volume_size_gib: volume_gib,
        encrypted,
        architecture: registration
            .map(|r| r.architecture)
            .or(req.architecture)
            .map_or(String::new(), |a| a.as_str().into()),
        boot_mode: boot_mode.map(|m| m.as_str().into()),
        parent_snapshot_id: params.parent_snapshot_id.clone(),
        data_blocks: outcome.data_blocks,
        blocks_unchanged: outcome.blocks_unchanged,
        blocks_total: outcome.blocks_total,
        blocks_sent: outcome.blocks_sent,
        blocks_already_confirmed: outcome.blocks_already_confirmed,
        bytes_read: hash_pass_bytes + outcome.bytes_read,
        elapsed_seconds: started.elapsed().as_secs_f64(),
        upload_mib_per_second: sent_bytes as f64
            / (1 << 20) as f64
            / outcome.upload_seconds.max(1e-6),
        regions: Vec::new(),
    };
    log::info!(
        "snapshot {}: {} blocks written ({} of the image's {} data blocks unchanged from the \
parent), {} sent by this run ({:.1} MiB/s), {} already confirmed",
        result.snapshot_id,
        result.blocks_total,
        result.blocks_unchanged,
        result.data_blocks,
        result.blocks_sent,
        result.upload_mib_per_second,
        result.blocks_already_confirmed
    );
    Ok(result)
}

/// The image's absolute path for the digest record (as given if that fails).
fn identity_path(image: &Path) -> PathBuf {
    std::fs::canonicalize(image).unwrap_or_else(|_| image.to_path_buf())
}

/// The answer when an AMI of this name exists and is not to be replaced.
#[allow(clippy::too_many_arguments)]
fn reuse_existing(
    req: &UploadRequest,
    clients: &Clients,
    name: &str,
    existing: &ExistingImage,
    size: u64,
    volume_gib: u64,
    bytes_read: u64,
    started: Instant,
) -> UploadResult {
    log::warn!(
        "AMI {name:?} exists already ({}); reusing it, nothing uploaded \
(pass --force-deregister to replace it)",
        existing.image_id
    );
    UploadResult {
        ami_id: Some(existing.image_id.clone()),
        name: Some(name.to_string()),
        region: clients.region.clone(),
        snapshot_id: existing.snapshot_ids.first().cloned().unwrap_or_default(),
        reused_existing_ami: true,
        replaced_ami_id: None,
        resumed: false,
        image: req.image.clone(),
        image_size_bytes: size,
        volume_size_gib: volume_gib,
        encrypted: req.encrypted,
        architecture: req
            .architecture
            .map_or(String::new(), |a| a.as_str().into()),
        boot_mode: req.boot_mode.map(|m| m.as_str().into()),
        parent_snapshot_id: None,
        data_blocks: 0,
        blocks_unchanged: 0,
        blocks_total: 0,
        blocks_sent: 0,
        blocks_already_confirmed: 0,
        bytes_read,
        elapsed_seconds: started.elapsed().as_secs_f64(),
        upload_mib_per_second: 0.0,
        regions: Vec::new(),
    }
}

fn write_outputs(req: &UploadRequest, result: &UploadResult) -> Result<(), UploadError> {
    let Some(ami_id) = &result.ami_id else {
        return Ok(());
    };
    output::write_ami_latest(&req.output_dir, ami_id)?;
    output::append_packer_manifest(&req.output_dir, result, now_unix())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_size_rules() {
        assert_eq!(volume_size_gib(None, 1).unwrap(), 1);
        assert_eq!(volume_size_gib(None, GIB).unwrap(), 1);
        assert_eq!(volume_size_gib(None, GIB + 1).unwrap(), 2);
        assert!(matches!(
            volume_size_gib(Some(1), GIB + 1),
            Err(UploadError::VolumeTooSmall { needed: 2, .. })
        ));
        assert!(matches!(
            volume_size_gib(Some(70_000), 1),
            Err(UploadError::VolumeTooLarge { .. })
        ));
    }

    #[test]
    fn default_name_is_valid_and_stable() {
        let name = default_ami_name(Path::new("/x/my image+v1.raw"), &"ab".repeat(32));
        assert_eq!(name, "my image-v1-abababababab");
        assert!(super::super::ami::names::parse_ami_name(&name).is_ok());
    }

    #[test]
    fn image_checks() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            open_image(dir.path()),
            Err(UploadError::BadImage { .. })
        ));
        let empty = dir.path().join("empty.raw");
        std::fs::write(&empty, b"").unwrap();
        let err = open_image(&empty).unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
        let odd = dir.path().join("odd.raw");
        std::fs::write(&odd, b"abc").unwrap();
        assert_eq!(open_image(&odd).unwrap().1, 3);
    }
}
