//! `imgforge upload`: image -> EBS snapshot -> AMI -> published AMIs.
//!
//! [`upload`] lists the steps; each is a job of its own:
//! 1. read the image ([`open_image`]) and connect; check the publish targets
//!    (regions exist) before anything is written;
//! 2. the source AMI ([`source_ami`], itself a list of steps): an AMI of the
//!    name is reused, else the snapshot is written ([`super::ebs::writer`])
//!    and registered ([`super::ami::register`]);
//! 3. publish ([`super::publish`]): copies, tags, sharing, deprecation, SSM;
//! 4. outputs ([`super::output`]): ami-latest.txt, packer-manifest.json.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::ami::digest::{self, ImageDigest};
use super::ami::instance_types;
use super::ami::names::{self, default_ami_name};
use super::ami::platform::{self, Registration};
use super::ami::register::{self, BootMode, ExistingImage, ImageSpec};
use super::ami::same_name::{self, SourceVerdict};
use super::ami::sbom_tags;
use super::client::{self, Clients};
use super::ebs::blocks::{self, BLOCK_SIZE};
use super::ebs::delta::{self, DigestStore, Parent, SnapshotRecord};
use super::ebs::journal::{self, ImageIdentity, Journal, SnapshotParams, TokenBasis};
use super::ebs::start;
use super::ebs::writer::{self, SnapshotOutcome, WriteRequest};
use super::output::{self, UploadResult};
use super::publish::{self, PublishPlan, encryption};
use super::regional;
pub use super::request::{
    MAX_VOLUME_GIB, UploadError, UploadRequest, check, open_image, render_template, requested_gib,
    snapshot_timeout_minutes, volume_size_gib,
};

/// The whole upload, step by step.
pub async fn upload(req: &UploadRequest) -> Result<UploadResult, UploadError> {
    let started = Instant::now();
    let (file, size) = open_image(&req.image)?;
    let clients = client::connect(&req.connection).await?;
    publish::preflight(&clients, &req.publish).await?;
    let keys = encryption::preflight(
        &clients,
        req.encrypted,
        req.kms_key_id.as_deref(),
        &req.publish,
    )
    .await?;
    for note in &keys.share_notes {
        eprintln!("imgforge: note: {note}");
    }
    // StartSnapshot takes only a key ARN; CopyImage gets each region's.
    let req = &UploadRequest {
        kms_key_id: keys.source_arn.clone().or_else(|| req.kms_key_id.clone()),
        publish: PublishPlan {
            copy_key_arns: keys.copy_arns,
            ..req.publish.clone()
        },
        ..req.clone()
    };
    let mut result = if req.publish.copy_by_upload {
        // Every region written at once; publishing then finds each region's AMI.
        let jobs =
            regional::requests(req, &clients.region)
                .into_iter()
                .map(|(region, regional)| {
                    let clients = clients.for_region(&region);
                    async move {
                        let (file, size) = open_image(&regional.image)?;
                        source_ami(&regional, &clients, file, size, started).await
                    }
                });
        let (main, others) = futures::future::join(
            source_ami(req, &clients, file, size, started),
            futures::future::try_join_all(jobs),
        )
        .await;
        others?;
        main?
    } else {
        source_ami(req, &clients, file, size, started).await?
    };
    if let Some(source) = result.source_image() {
        let plan = PublishPlan {
            image_sha256: Some(result.image_sha256.clone()),
            identity_tags: result.sbom_sha256.clone().into_iter().collect(),
            replace: req.force_deregister,
            family: Some(result.family.clone()),
            ..req.publish.clone()
        };
        let report = publish::publish(&clients, &source, &plan).await;
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

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// One upload in its source region: what every step of [`source_ami`] reads.
struct Job<'a> {
    req: &'a UploadRequest,
    clients: &'a Clients,
    file: Arc<File>,
    size: u64,
    started: Instant,
}

/// What the snapshot is to be, once the parent is known.
struct SnapshotPlan {
    volume_gib: u64,
    encrypted: bool,
    family: String,
    /// The image digest, family and SBOM digest tags, on the snapshot and
    /// the AMI.
    identity_tags: Vec<(String, String)>,
    /// The SBOM digest tags alone (also in `identity_tags`).
    sbom_tags: Vec<(String, String)>,
    parent: Option<Parent>,
    params: SnapshotParams,
}

/// The AMI in the connection's region: an AMI of the name holding the same
/// image is reused; else the snapshot is written and registered (replacing
/// an AMI of the name holding another image with --replace).
async fn source_ami(
    req: &UploadRequest,
    clients: &Clients,
    file: File,
    size: u64,
    started: Instant,
) -> Result<UploadResult, UploadError> {
    let job = Job {
        req,
        clients,
        file: Arc::new(file),
        size,
        started,
    };
    let (volume_gib, registration) = job.decide_platform()?;
    let type_checks = match registration {
        Some(registration) if !req.instance_types.is_empty() => {
            instance_types::check(clients, &req.instance_types, registration, req.tpm).await?
        }
        _ => Vec::new(),
    };
    let identity = ImageIdentity::of(&req.image, &job.file).map_err(|e| UploadError::BadImage {
        path: req.image.clone(),
        reason: format!("cannot read its metadata: {e}"),
    })?;
    let digest = digest::of(&req.image, &job.file, size, &identity)?;
    let name = job.ami_name(&digest)?;
    let family = names::family_for(req.publish.family.as_deref(), name.as_deref(), &req.image);
    // Before any snapshot is started: the name either holds this image
    // (reuse), holds another (refused, or replaced with --replace) or is free.
    let mut to_replace = None;
    if let Some(name) = &name {
        match same_name::check(
            clients,
            &req.publish.copy_to,
            name,
            &digest.sha256,
            req.force_deregister,
        )
        .await?
        {
            SourceVerdict::Reuse(existing) => {
                let mut result = job.reuse(name, &existing, volume_gib, &digest, &family);
                result.instance_types = type_checks;
                return Ok(result);
            }
            SourceVerdict::Replace(existing) => to_replace = Some(existing),
            SourceVerdict::Absent => {}
        }
    }
    let store = DigestStore::new(req.state_dir.clone());
    let plan = job
        .plan_snapshot(&store, volume_gib, &digest, family)
        .await?;
    let journal_path = req
        .journal
        .clone()
        .unwrap_or_else(|| journal::default_path(&req.image));
    let mut journal = job
        .open_journal(&journal_path, identity, &plan.params, &digest)
        .await?;
    let (outcome, ami_id) = job
        .write_and_register(
            &journal_path,
            &mut journal,
            &plan,
            registration,
            name.as_deref(),
            to_replace.as_ref(),
        )
        .await?;
    Journal::remove(&journal_path);
    job.keep_digests(&store, &plan, &outcome, name.as_deref(), ami_id.as_deref());
    let mut result = job.result(
        &plan,
        registration,
        outcome,
        Names {
            ami_id,
            name,
            replaced: to_replace.map(|old| old.image_id),
        },
        &digest,
    );
    result.instance_types = type_checks;
    result.log_summary();
    Ok(result)
}

/// What the AMI is called, and what it replaced.
struct Names {
    ami_id: Option<String>,
    name: Option<String>,
    replaced: Option<String>,
}

impl Job<'_> {
    /// The volume size, and the architecture and boot mode from the image
    /// checked against the flags, before anything is written.
    fn decide_platform(&self) -> Result<(u64, Option<Registration>), UploadError> {
        let req = self.req;
        let volume_gib = volume_size_gib(req.volume_size, self.size)?;
        if req.tpm && req.boot_mode == Some(BootMode::LegacyBios) {
            return Err(UploadError::TpmNeedsUefi);
        }
        let registration = if req.no_register {
            None
        } else {
            Some(platform::decide_for(
                &req.image,
                req.architecture,
                req.boot_mode,
            )?)
        };
        // An arm64 image is registered UEFI whatever the flags said.
        if req.tpm && registration.map(|r| r.boot_mode) == Some(BootMode::LegacyBios) {
            return Err(UploadError::TpmNeedsUefi);
        }
        Ok((volume_gib, registration))
    }

    /// The parent (--parent), and with it the volume size and encryption,
    /// then StartSnapshot's parameters.
    async fn plan_snapshot(
        &self,
        store: &DigestStore,
        mut volume_gib: u64,
        digest: &ImageDigest,
        family: String,
    ) -> Result<SnapshotPlan, UploadError> {
        let req = self.req;
        let parent = match &req.parent {
            Some(arg) => Some(delta::resolve_parent(self.clients, store, arg, &family).await?),
            None => None,
        };
        let mut encrypted = req.encrypted;
        if let Some(parent) = &parent {
            let requested = requested_gib(req.volume_size)?;
            volume_gib = delta::volume_with_parent(requested, volume_gib, parent)?;
            encrypted = delta::child_encrypted(parent, req.encrypted)?;
        }
        let file_name = req
            .image
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let sbom_tags = sbom_tags::of(&req.image);
        let identity_tags = [digest::identity_tags(digest, &family), sbom_tags.clone()].concat();
        let mut tags = req.tags.clone();
        tags.extend(req.snapshot_tags.iter().cloned());
        tags.extend(identity_tags.iter().cloned());
        let params = SnapshotParams {
            volume_size_gib: volume_gib,
            description: req
                .description
                .clone()
                .unwrap_or_else(|| format!("imgforge upload of {file_name}")),
            tags,
            encrypted,
            kms_key_id: req.kms_key_id.clone(),
            timeout_minutes: snapshot_timeout_minutes(req)?,
            parent_snapshot_id: parent.as_ref().map(|p| p.snapshot_id.clone()),
        };
        Ok(SnapshotPlan {
            volume_gib,
            encrypted,
            identity_tags,
            sbom_tags,
            family,
            parent,
            params,
        })
    }

    /// The journal of an earlier run of this upload, or a new one, whose
    /// ClientToken derives from the image's sha256 and the parameters.
    async fn open_journal(
        &self,
        journal_path: &Path,
        identity: ImageIdentity,
        params: &SnapshotParams,
        digest: &ImageDigest,
    ) -> Result<Journal, UploadError> {
        if let Some(journal) =
            start::load_journal(self.clients, journal_path, &identity, params).await?
        {
            return Ok(journal);
        }
        let sha256 = digest.sha256.clone();
        let basis = if digest.from_manifest {
            TokenBasis::Manifest { sha256 }
        } else {
            TokenBasis::Image { sha256 }
        };
        let journal = Journal::new(identity, params.clone(), basis);
        journal.save(journal_path)?;
        Ok(journal)
    }

    /// The AMI's name: --name (its `{date}` the image's build date, from its
    /// manifest), else the default from the image's sha256.
    fn ami_name(&self, digest: &ImageDigest) -> Result<Option<String>, UploadError> {
        let req = self.req;
        Ok(match &req.name {
            _ if req.no_register => None,
            Some(template) => Some(render_template(&req.image, template)?),
            None => Some(default_ami_name(&req.image, &digest.sha256)),
        })
    }

    /// Writes the snapshot, then (unless --no-register) replaces the old AMI
    /// and registers the new one. A failure deletes the snapshot (unless
    /// --keep-snapshot); an interruption keeps it and the journal.
    async fn write_and_register(
        &self,
        journal_path: &Path,
        journal: &mut Journal,
        plan: &SnapshotPlan,
        registration: Option<Registration>,
        name: Option<&str>,
        to_replace: Option<&ExistingImage>,
    ) -> Result<(SnapshotOutcome, Option<String>), UploadError> {
        let req = self.req;
        let blocks = writer::BlockPlan::new(
            &self.file,
            self.size,
            plan.encrypted,
            plan.parent.as_ref().map(|p| p.content.clone()),
        )?;
        let snapshot_id =
            start::ensure_snapshot(self.clients, journal_path, journal, &plan.params).await?;
        let write = WriteRequest {
            image: req.image.clone(),
            workers: req.workers,
            wait_timeout: req.wait_timeout,
            keep_snapshot: req.keep_snapshot,
        };
        let after_start = async {
            let outcome = writer::write_snapshot(
                &write,
                self.clients,
                journal_path,
                journal,
                &blocks,
                &self.file,
                self.size,
            )
            .await?;
            let ami_id = match (registration, name) {
                (Some(registration), Some(name)) => {
                    let spec = ImageSpec {
                        name: name.to_string(),
                        description: plan.params.description.clone(),
                        snapshot_id: outcome.snapshot_id.clone(),
                        volume_size_gib: plan.volume_gib,
                        architecture: registration.architecture,
                        boot_mode: registration.boot_mode,
                        tpm: req.tpm,
                        uefi_data: req.uefi_data.clone(),
                        tags: [req.tags.clone(), plan.identity_tags.clone()].concat(),
                        storage: req.storage.clone(),
                    };
                    Some(self.register(&spec, to_replace).await?)
                }
                _ => None,
            };
            Ok::<_, UploadError>((outcome, ami_id))
        }
        .await;
        match after_start {
            Ok(done) => Ok(done),
            Err(err) if err.is_interrupted() => Err(UploadError::KeptForResume {
                snapshot_id,
                journal: journal_path.to_path_buf(),
            }),
            Err(err) => Err(UploadError::AfterSnapshot {
                source: Box::new(err),
                cleanup: start::clean_up_after_failure(
                    self.clients,
                    journal_path,
                    &snapshot_id,
                    req.keep_snapshot,
                )
                .await,
            }),
        }
    }

    /// Deregisters the AMI being replaced, then registers the new one.
    async fn register(
        &self,
        spec: &ImageSpec,
        to_replace: Option<&ExistingImage>,
    ) -> Result<String, UploadError> {
        if let Some(old) = to_replace {
            register::deregister(self.clients, old).await?;
            log::warn!(
                "deregistered AMI {} and deleted its snapshot(s) {}",
                old.image_id,
                old.snapshot_ids.join(", ")
            );
        }
        Ok(register::register(self.clients, spec).await?)
    }

    /// Files the snapshot's block digests, for later deltas against it.
    fn keep_digests(
        &self,
        store: &DigestStore,
        plan: &SnapshotPlan,
        outcome: &SnapshotOutcome,
        name: Option<&str>,
        ami_id: Option<&str>,
    ) {
        let record = SnapshotRecord {
            format_version: delta::RECORD_FORMAT_VERSION,
            snapshot_id: outcome.snapshot_id.clone(),
            region: self.clients.region.clone(),
            family: Some(plan.family.clone()),
            ami_name: name.map(str::to_string),
            ami_id: ami_id.map(str::to_string),
            image: identity_path(&self.req.image),
            image_size_bytes: self.size,
            volume_size_gib: plan.volume_gib,
            encrypted: plan.encrypted,
            block_count: blocks::block_count(self.size),
            zero_blocks_written: plan.encrypted,
            parent_snapshot_id: plan.params.parent_snapshot_id.clone(),
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
    }

    fn result(
        &self,
        plan: &SnapshotPlan,
        registration: Option<Registration>,
        outcome: SnapshotOutcome,
        names: Names,
        digest: &ImageDigest,
    ) -> UploadResult {
        let req = self.req;
        let sent_bytes = outcome.blocks_sent * BLOCK_SIZE;
        UploadResult {
            ami_id: names.ami_id,
            name: names.name,
            region: self.clients.region.clone(),
            snapshot_id: outcome.snapshot_id,
            image_sha256: digest.sha256.clone(),
            family: plan.family.clone(),
            sbom_sha256: plan.sbom_tags.iter().cloned().collect(),
            instance_types: Vec::new(),
            reused_existing_ami: false,
            replaced_ami_id: names.replaced,
            resumed: outcome.resumed,
            image: req.image.clone(),
            image_size_bytes: self.size,
            volume_size_gib: plan.volume_gib,
            encrypted: plan.encrypted,
            architecture: registration
                .map(|r| r.architecture.as_str().to_string())
                .or_else(|| req.architecture.map(|a| a.ec2.clone()))
                .unwrap_or_default(),
            boot_mode: registration.map(|r| r.boot_mode.as_str().into()),
            parent_snapshot_id: plan.params.parent_snapshot_id.clone(),
            data_blocks: outcome.data_blocks,
            blocks_unchanged: outcome.blocks_unchanged,
            blocks_total: outcome.blocks_total,
            blocks_sent: outcome.blocks_sent,
            blocks_already_confirmed: outcome.blocks_already_confirmed,
            bytes_read: digest.bytes_read + outcome.bytes_read,
            elapsed_seconds: self.started.elapsed().as_secs_f64(),
            upload_mib_per_second: sent_bytes as f64
                / (1 << 20) as f64
                / outcome.upload_seconds.max(1e-6),
            regions: Vec::new(),
        }
    }

    /// The answer when an AMI of this name holds this image already.
    fn reuse(
        &self,
        name: &str,
        existing: &ExistingImage,
        volume_gib: u64,
        digest: &ImageDigest,
        family: &str,
    ) -> UploadResult {
        let req = self.req;
        eprintln!(
            "imgforge: AMI {name:?} ({}) holds this image already (sha256 {}); nothing to upload",
            existing.image_id, digest.sha256
        );
        UploadResult {
            ami_id: Some(existing.image_id.clone()),
            name: Some(name.to_string()),
            region: self.clients.region.clone(),
            snapshot_id: existing.snapshot_ids.first().cloned().unwrap_or_default(),
            image_sha256: digest.sha256.clone(),
            family: family.to_string(),
            sbom_sha256: Default::default(),
            instance_types: Vec::new(),
            reused_existing_ami: true,
            replaced_ami_id: None,
            resumed: false,
            image: req.image.clone(),
            image_size_bytes: self.size,
            volume_size_gib: volume_gib,
            encrypted: req.encrypted,
            architecture: req.architecture.map(|a| a.ec2.clone()).unwrap_or_default(),
            boot_mode: req.boot_mode.map(|m| m.as_str().into()),
            parent_snapshot_id: None,
            data_blocks: 0,
            blocks_unchanged: 0,
            blocks_total: 0,
            blocks_sent: 0,
            blocks_already_confirmed: 0,
            bytes_read: digest.bytes_read,
            elapsed_seconds: self.started.elapsed().as_secs_f64(),
            upload_mib_per_second: 0.0,
            regions: Vec::new(),
        }
    }
}

/// The image's absolute path for the digest record (as given if that fails).
fn identity_path(image: &Path) -> PathBuf {
    std::fs::canonicalize(image).unwrap_or_else(|_| image.to_path_buf())
}

fn write_outputs(req: &UploadRequest, result: &UploadResult) -> Result<(), UploadError> {
    let Some(ami_id) = &result.ami_id else {
        return Ok(());
    };
    output::write_ami_latest(&req.output_dir, ami_id)?;
    output::append_packer_manifest(&req.output_dir, result, now_unix())?;
    Ok(())
}
