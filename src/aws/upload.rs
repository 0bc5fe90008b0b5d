//! `imgforge upload`: image -> EBS snapshot -> AMI.
//!
//! The steps, in order:
//! 1. check the image and the flags; connect (region, credentials);
//! 2. read the image's data once: which blocks to write and their digests
//!    (or take them from a matching journal, which makes this a resume);
//! 3. if an AMI of this name exists: reuse it (or replace it later with
//!    --force-deregister);
//! 4. StartSnapshot (or resume the journal's snapshot), PutSnapshotBlock for
//!    every block not yet confirmed, CompleteSnapshot, wait for `completed`;
//! 5. RegisterImage, then write the outputs.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

use super::blocks::{self, BLOCK_SIZE, BlockRecord, BlocksError};
use super::client::{self, ClientError, Clients, ConnectionArgs};
use super::journal::{self, ImageIdentity, Journal, JournalError, SnapshotParams};
use super::output::{self, OutputError, UploadResult};
use super::register::{self, Architecture, BootMode, ExistingImage, ImageSpec, RegisterError};
use super::snapshot::{self, SnapshotError, State};
use crate::sys::interrupt;

const GIB: u64 = 1 << 30;
/// EBS's largest volume.
const MAX_VOLUME_GIB: u64 = 65_536;
/// How often confirmed blocks are written to the journal. Blocks confirmed
/// after the last save are sent again on resume, nothing worse.
const JOURNAL_SAVE_INTERVAL: Duration = Duration::from_secs(1);
/// How often the upload loop checks for Ctrl-C while requests are in flight.
const INTERRUPT_POLL: Duration = Duration::from_millis(200);

#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "How it works: the image's blocks are written straight into a new EBS \
snapshot through the EBS direct APIs (StartSnapshot, PutSnapshotBlock, CompleteSnapshot), then \
registered as an AMI with EC2 RegisterImage (hvm, /dev/xvda, gp3, ENA, IMDSv2).\n\n\
Only the image's data is read: holes (SEEK_DATA/SEEK_HOLE) and all-zero blocks are skipped on \
an unencrypted snapshot. The upload is resumable: a journal beside the image \
(IMAGE.upload-journal.json) records the snapshot and every block EBS confirmed, so rerunning the \
same command after a crash, kill -9 or Ctrl-C continues the same snapshot and sends only the \
missing blocks.\n\n\
Credentials and region come from the standard AWS chain (AWS_ACCESS_KEY_ID and \
AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws/config including SSO, instance roles). Prints the AMI \
ID on stdout, and writes ami-latest.txt and packer-manifest.json (appended) in --output-dir.\n\n\
Examples:\n  imgforge upload image.raw --name web-small-v1 --tag team=infra\n  \
imgforge upload image.raw --name web-small-v1 --force-deregister --boot-mode uefi\n  \
imgforge upload image.raw --no-register --json\n  \
imgforge upload image.raw --endpoint-url http://127.0.0.1:5000 --region us-east-1",
    after_help = "Examples:\n  imgforge upload image.raw --name web-small-v1 --tag team=infra\n  \
imgforge upload image.raw --no-register --json"
)]
pub struct UploadArgs {
    /// The raw disk image to upload (a regular file; sparse files upload fastest).
    pub image: PathBuf,

    #[command(flatten)]
    pub connection: ConnectionArgs,

    /// AMI name (3-128 characters: letters, digits, ( ) [ ] . / - ' @ _ and spaces).
    /// Default: the image's file name and the start of its content hash. If an AMI
    /// of this name exists it is reused (see --force-deregister).
    #[arg(long, value_parser = parse_ami_name)]
    pub name: Option<String>,

    /// Description of the snapshot and the AMI. Default: "imgforge upload of FILE".
    #[arg(long)]
    pub description: Option<String>,

    /// A tag for the snapshot and the AMI; repeat for more.
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,

    /// Size of the volume the snapshot describes, in GiB (at least the image's size
    /// rounded up to a GiB, which is the default; at most 65536).
    #[arg(long, value_name = "GIB")]
    pub volume_size: Option<u64>,

    /// Concurrent PutSnapshotBlock requests (EBS accepts about 1000 blocks/s per snapshot).
    #[arg(long, default_value_t = 64, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: u32,

    /// Firmware the AMI boots with. Default: read from the image (both bootloaders:
    /// uefi-preferred; only UEFI: uefi; only BIOS or unreadable: legacy-bios).
    #[arg(long, value_enum)]
    pub boot_mode: Option<BootMode>,

    /// CPU architecture of the image.
    #[arg(long, value_enum, default_value = "x86_64")]
    pub architecture: Architecture,

    /// Register the AMI with NitroTPM (TpmSupport v2.0; needs --boot-mode uefi or uefi-preferred).
    #[arg(long)]
    pub tpm: bool,

    /// Make an encrypted snapshot (with the account's default EBS key unless
    /// --kms-key-id). Every block is written, zeros included.
    #[arg(long)]
    pub encrypted: bool,

    /// KMS key ARN for --encrypted.
    #[arg(long, requires = "encrypted", value_name = "ARN")]
    pub kms_key_id: Option<String>,

    /// Stop after the snapshot is completed: no RegisterImage; prints the snapshot ID.
    #[arg(long, conflicts_with_all = ["force_deregister", "tpm"])]
    pub no_register: bool,

    /// If an AMI of this name exists, deregister it and delete its snapshot after the
    /// new snapshot is complete, then register the new AMI under the name.
    #[arg(long)]
    pub force_deregister: bool,

    /// When the upload fails after the snapshot was started, keep the snapshot and the
    /// journal (a rerun resumes) instead of deleting them.
    #[arg(long)]
    pub keep_snapshot: bool,

    /// Print the whole result as JSON on stdout instead of the AMI ID.
    #[arg(long)]
    pub json: bool,

    /// Where ami-latest.txt and packer-manifest.json are written.
    #[arg(long, default_value = ".", value_name = "DIR")]
    pub output_dir: PathBuf,

    /// The resume journal. Default: IMAGE.upload-journal.json beside the image.
    #[arg(long, value_name = "PATH")]
    pub journal: Option<PathBuf>,

    /// Minutes without a written block after which EBS gives up on the pending
    /// snapshot (StartSnapshot Timeout, 10-4320). A later rerun notices and starts over.
    #[arg(long, default_value_t = 240, value_name = "MINUTES",
          value_parser = clap::value_parser!(u32).range(10..=4320))]
    pub snapshot_timeout: u32,

    /// Minutes to wait for the snapshot to become `completed` after CompleteSnapshot.
    #[arg(long, default_value_t = 60, value_name = "MINUTES")]
    pub wait_timeout: u64,

    /// Benchmark only: read, zero-check and SHA-256 the image's data as an upload
    /// would, print the throughput (GB/s) and exit. Needs no AWS access.
    #[arg(long)]
    pub hash_only: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("{path}: {reason}")]
    BadImage { path: PathBuf, reason: String },
    #[error(
        "--volume-size {given} GiB is smaller than the image ({size} bytes needs {needed} GiB); \
pass --volume-size {needed} or more, or leave it out"
    )]
    VolumeTooSmall { given: u64, size: u64, needed: u64 },
    #[error("the volume would be {gib} GiB; EBS volumes hold at most {MAX_VOLUME_GIB} GiB")]
    VolumeTooLarge { gib: u64 },
    #[error("--tpm needs UEFI: pass --boot-mode uefi or uefi-preferred")]
    TpmNeedsUefi,
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Blocks(#[from] BlocksError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Register(#[from] RegisterError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error(
        "block {index} of {path} changed while it was being uploaded (its SHA-256 differs from the \
first read); do not modify an image during its upload"
    )]
    ImageChanged { path: PathBuf, index: u64 },
    #[error(
        "interrupted; snapshot {snapshot_id} and the journal {journal} are kept: rerun the same command to resume"
    )]
    Interrupted {
        snapshot_id: String,
        journal: PathBuf,
    },
    #[error("{source}\n{cleanup}")]
    AfterSnapshot {
        #[source]
        source: Box<UploadError>,
        cleanup: String,
    },
    #[error("StartSnapshot kept answering snapshots in state `error`; see the warnings above")]
    StartKeepsFailing,
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

fn parse_tag(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    if key.is_empty() || key.len() > 128 || value.len() > 256 {
        return Err("a tag key has 1-128 characters and a value at most 256".into());
    }
    if key.starts_with("aws:") {
        return Err("tag keys starting with `aws:` are reserved by AWS".into());
    }
    Ok((key.to_string(), value.to_string()))
}

fn is_ami_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "()[] ./-'@_".contains(c)
}

fn parse_ami_name(text: &str) -> Result<String, String> {
    if !(3..=128).contains(&text.len()) {
        return Err("an AMI name has 3 to 128 characters".into());
    }
    if let Some(c) = text.chars().find(|c| !is_ami_name_char(*c)) {
        return Err(format!(
            "{c:?} is not allowed in an AMI name (letters, digits, ( ) [ ] . / - ' @ _ and spaces)"
        ));
    }
    Ok(text.to_string())
}

/// The default AMI name: the file name and the content hash's first digits,
/// so that uploading the same image twice finds the first AMI.
fn default_ami_name(image: &Path, content_sha256: &str) -> String {
    let stem: String = image
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| if is_ami_name_char(c) { c } else { '-' })
        .take(100)
        .collect();
    let stem = if stem.is_empty() {
        "image".into()
    } else {
        stem
    };
    format!("{stem}-{}", &content_sha256[..12])
}

/// Opens the image and checks that it is something we can upload.
fn open_image(path: &Path) -> Result<(File, u64), UploadError> {
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

fn volume_size_gib(args: &UploadArgs, image_size: u64) -> Result<u64, UploadError> {
    let needed = image_size.div_ceil(GIB);
    let gib = match args.volume_size {
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

/// The boot mode from the flag, else from the image's bootloaders.
fn resolve_boot_mode(args: &UploadArgs) -> BootMode {
    if let Some(mode) = args.boot_mode {
        return mode;
    }
    match crate::image::inspect::boot_modes(&args.image) {
        Ok(found) => BootMode::from_bootloaders(found.bios, found.uefi).unwrap_or_else(|| {
            log::warn!(
                "{} has neither a BIOS nor a UEFI bootloader that imgforge recognizes; \
registering it as legacy-bios (pass --boot-mode to choose)",
                args.image.display()
            );
            BootMode::LegacyBios
        }),
        Err(err) => {
            log::warn!(
                "cannot tell which bootloaders the image has ({err}); registering it as \
legacy-bios (pass --boot-mode to choose)"
            );
            BootMode::LegacyBios
        }
    }
}

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

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

pub fn run(args: &UploadArgs) -> Result<(), UploadError> {
    let (file, size) = open_image(&args.image)?;
    if args.hash_only {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let bench = blocks::bench(&file, size, threads)?;
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&bench).expect("serializes")
            );
        } else {
            println!(
                "read+zero-check+sha256 of {} MiB of data ({} blocks, {} all-zero): \
{:.2} GB/s per CPU-second on 1 thread ({:.2} GB/s wall clock; {:.2} GB/s wall clock on {} threads); \
in memory per CPU-second: sha256 {:.2} GB/s, zero check {:.2} GB/s",
                bench.data_bytes >> 20,
                bench.blocks,
                bench.zero_blocks,
                bench.one_thread_gbps_per_cpu_second,
                bench.one_thread_gbps,
                bench.all_threads_gbps,
                bench.threads,
                bench.sha256_gbps,
                bench.zero_check_gbps
            );
        }
        return Ok(());
    }
    let runtime = client::runtime().map_err(UploadError::Runtime)?;
    let result = runtime.block_on(upload(args, file, size))?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&result).expect("result serializes")
        );
    } else if let Some(ami) = &result.ami_id {
        println!("{ami}");
    } else {
        println!("{}", result.snapshot_id);
    }
    Ok(())
}

/// What the snapshot phase produced.
struct SnapshotOutcome {
    snapshot_id: String,
    resumed: bool,
    blocks_total: u64,
    blocks_sent: u64,
    blocks_already_confirmed: u64,
    bytes_read: u64,
    upload_seconds: f64,
}

async fn upload(args: &UploadArgs, file: File, size: u64) -> Result<UploadResult, UploadError> {
    let started = Instant::now();
    let volume_gib = volume_size_gib(args, size)?;
    if args.tpm && args.boot_mode == Some(BootMode::LegacyBios) {
        return Err(UploadError::TpmNeedsUefi);
    }
    let clients = client::connect(&args.connection).await?;

    let file_name = args
        .image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let params = SnapshotParams {
        volume_size_gib: volume_gib,
        description: args
            .description
            .clone()
            .unwrap_or_else(|| format!("imgforge upload of {file_name}")),
        tags: args.tags.clone(),
        encrypted: args.encrypted,
        kms_key_id: args.kms_key_id.clone(),
        timeout_minutes: args.snapshot_timeout,
    };
    let journal_path = args
        .journal
        .clone()
        .unwrap_or_else(|| journal::default_path(&args.image));
    let identity = ImageIdentity::of(&args.image, &file).map_err(|e| UploadError::BadImage {
        path: args.image.clone(),
        reason: format!("cannot read its metadata: {e}"),
    })?;
    // Idempotent by name: an AMI that exists is the answer, unless it is to
    // be replaced. With --name this is known before the image is read.
    let mut lookup: Option<Option<ExistingImage>> = None;
    if let (Some(name), false) = (&args.name, args.no_register) {
        let existing = register::find_by_name(&clients, name).await?;
        if let Some(existing) = &existing
            && !args.force_deregister
        {
            return reuse_existing(args, &clients, name, existing, size, volume_gib, 0, started);
        }
        lookup = Some(existing);
    }

    let (mut journal, block_list, scan_bytes) =
        load_or_scan(&clients, &journal_path, &file, identity, &params).await?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| default_ami_name(&args.image, &journal.content_sha256));
    if lookup.is_none() && !args.no_register {
        lookup = Some(register::find_by_name(&clients, &name).await?);
    }
    let mut to_replace: Option<ExistingImage> = None;
    if let Some(Some(existing)) = lookup {
        if !args.force_deregister {
            return reuse_existing(
                args, &clients, &name, &existing, size, volume_gib, scan_bytes, started,
            );
        }
        log::warn!(
            "AMI {name:?} exists ({}); it is replaced once the new snapshot is complete",
            existing.image_id
        );
        to_replace = Some(existing);
    }
    let boot_mode = (!args.no_register).then(|| resolve_boot_mode(args));
    if args.tpm && boot_mode == Some(BootMode::LegacyBios) {
        return Err(UploadError::TpmNeedsUefi);
    }

    let snapshot_id = ensure_snapshot(&clients, &journal_path, &mut journal, &params).await?;
    let file = Arc::new(file);
    let after_start = async {
        let outcome = write_snapshot(
            args,
            &clients,
            &journal_path,
            &mut journal,
            &block_list,
            &file,
            size,
        )
        .await?;
        let ami_id = if let Some(boot_mode) = boot_mode {
            if let Some(old) = &to_replace {
                register::deregister(&clients, old).await?;
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
                architecture: args.architecture,
                boot_mode,
                tpm: args.tpm,
                tags: args.tags.clone(),
            };
            Some(register::register(&clients, &spec).await?)
        } else {
            None
        };
        Ok::<_, UploadError>((outcome, ami_id))
    }
    .await;

    let (outcome, ami_id) = match after_start {
        Ok(done) => done,
        Err(err) => {
            return Err(
                clean_up_after_failure(args, &clients, &journal_path, &snapshot_id, err).await,
            );
        }
    };
    Journal::remove(&journal_path);

    let sent_bytes = outcome.blocks_sent * BLOCK_SIZE;
    let result = UploadResult {
        ami_id,
        name: (!args.no_register).then_some(name),
        region: clients.region.clone(),
        snapshot_id: outcome.snapshot_id,
        reused_existing_ami: false,
        replaced_ami_id: to_replace.map(|old| old.image_id),
        resumed: outcome.resumed,
        image: args.image.clone(),
        image_size_bytes: size,
        volume_size_gib: volume_gib,
        encrypted: args.encrypted,
        architecture: args.architecture.as_str().into(),
        boot_mode: boot_mode.map(|m| m.as_str().into()),
        blocks_total: outcome.blocks_total,
        blocks_sent: outcome.blocks_sent,
        blocks_already_confirmed: outcome.blocks_already_confirmed,
        bytes_read: scan_bytes + outcome.bytes_read,
        elapsed_seconds: started.elapsed().as_secs_f64(),
        upload_mib_per_second: sent_bytes as f64
            / (1 << 20) as f64
            / outcome.upload_seconds.max(1e-6),
    };
    log::info!(
        "snapshot {}: {} blocks, {} sent by this run ({:.1} MiB/s), {} already confirmed",
        result.snapshot_id,
        result.blocks_total,
        result.blocks_sent,
        result.upload_mib_per_second,
        result.blocks_already_confirmed
    );
    if result.ami_id.is_some() {
        write_outputs(args, &result)?;
    }
    Ok(result)
}

/// The answer when an AMI of this name exists and is not to be replaced.
#[allow(clippy::too_many_arguments)]
fn reuse_existing(
    args: &UploadArgs,
    clients: &Clients,
    name: &str,
    existing: &ExistingImage,
    size: u64,
    volume_gib: u64,
    bytes_read: u64,
    started: Instant,
) -> Result<UploadResult, UploadError> {
    log::warn!(
        "AMI {name:?} exists already ({}); reusing it, nothing uploaded \
(pass --force-deregister to replace it)",
        existing.image_id
    );
    let result = UploadResult {
        ami_id: Some(existing.image_id.clone()),
        name: Some(name.to_string()),
        region: clients.region.clone(),
        snapshot_id: existing.snapshot_ids.first().cloned().unwrap_or_default(),
        reused_existing_ami: true,
        replaced_ami_id: None,
        resumed: false,
        image: args.image.clone(),
        image_size_bytes: size,
        volume_size_gib: volume_gib,
        encrypted: args.encrypted,
        architecture: args.architecture.as_str().into(),
        boot_mode: args.boot_mode.map(|m| m.as_str().into()),
        blocks_total: 0,
        blocks_sent: 0,
        blocks_already_confirmed: 0,
        bytes_read,
        elapsed_seconds: started.elapsed().as_secs_f64(),
        upload_mib_per_second: 0.0,
    };
    write_outputs(args, &result)?;
    Ok(result)
}

fn write_outputs(args: &UploadArgs, result: &UploadResult) -> Result<(), UploadError> {
    let Some(ami_id) = &result.ami_id else {
        return Ok(());
    };
    output::write_ami_latest(&args.output_dir, ami_id)?;
    output::append_packer_manifest(&args.output_dir, result, now_unix())?;
    Ok(())
}

/// A journal that matches this image and these parameters, or a fresh one
/// from reading the image. Also answers the bytes read doing so.
async fn load_or_scan(
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
async fn ensure_snapshot(
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
async fn write_snapshot(
    args: &UploadArgs,
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
                let image = args.image.as_path();
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
            .buffer_unordered(args.workers as usize);
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
        Duration::from_secs(args.wait_timeout.saturating_mul(60)),
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
fn interrupted_or(err: UploadError, snapshot_id: &str, journal_path: &Path) -> UploadError {
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
async fn clean_up_after_failure(
    args: &UploadArgs,
    clients: &Clients,
    journal_path: &Path,
    snapshot_id: &str,
    err: UploadError,
) -> UploadError {
    let err = interrupted_or(err, snapshot_id, journal_path);
    if matches!(err, UploadError::Interrupted { .. }) {
        return err;
    }
    let cleanup = if args.keep_snapshot {
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: UploadArgs,
    }

    fn parse(extra: &[&str]) -> Result<UploadArgs, clap::Error> {
        let mut argv = vec!["imgforge", "image.raw"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).map(|cli| cli.args)
    }

    #[test]
    fn flags_parse_and_validate() {
        let args = parse(&[
            "--tag",
            "a=b",
            "--tag",
            "c=d=e",
            "--boot-mode",
            "uefi-preferred",
        ])
        .unwrap();
        assert_eq!(
            args.tags,
            vec![("a".into(), "b".into()), ("c".into(), "d=e".into())]
        );
        assert_eq!(args.workers, 64);
        assert_eq!(args.boot_mode, Some(BootMode::UefiPreferred));
        assert_eq!(args.architecture, Architecture::X86_64);
        assert!(parse(&["--architecture", "arm64"]).is_ok());
        assert!(parse(&["--tag", "novalue"]).is_err());
        assert!(parse(&["--tag", "aws:x=1"]).is_err());
        assert!(parse(&["--kms-key-id", "k"]).is_err(), "needs --encrypted");
        assert!(parse(&["--encrypted", "--kms-key-id", "k"]).is_ok());
        assert!(parse(&["--workers", "0"]).is_err());
        assert!(parse(&["--no-register", "--force-deregister"]).is_err());
        assert!(parse(&["--name", "ab"]).is_err());
        assert!(parse(&["--name", "bad*name"]).is_err());
        assert!(parse(&["--snapshot-timeout", "5"]).is_err());
    }

    #[test]
    fn volume_size_rules() {
        let mut args = parse(&[]).unwrap();
        assert_eq!(volume_size_gib(&args, 1).unwrap(), 1);
        assert_eq!(volume_size_gib(&args, GIB).unwrap(), 1);
        assert_eq!(volume_size_gib(&args, GIB + 1).unwrap(), 2);
        args.volume_size = Some(1);
        assert!(matches!(
            volume_size_gib(&args, GIB + 1),
            Err(UploadError::VolumeTooSmall { needed: 2, .. })
        ));
        args.volume_size = Some(70_000);
        assert!(matches!(
            volume_size_gib(&args, 1),
            Err(UploadError::VolumeTooLarge { .. })
        ));
    }

    #[test]
    fn default_name_is_valid_and_stable() {
        let name = default_ami_name(Path::new("/x/my image+v1.raw"), &"ab".repeat(32));
        assert_eq!(name, "my image-v1-abababababab");
        assert!(parse_ami_name(&name).is_ok());
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
