//! `imgforge upload`: the command line only. The flags become a plain
//! [`UploadRequest`] for the engine ([`imgforge::aws::upload`]), checked
//! before any work (bad input exits 2); this file parses and prints.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::ValueEnum;
use imgforge::aws::ami::instance_types::InstanceTypeError;
use imgforge::aws::ami::names::{
    ShareTarget, parse_ami_name, parse_region, parse_rfc3339, parse_share_target,
    parse_ssm_template, parse_tag,
};
use imgforge::aws::ami::register::BootMode;
use imgforge::aws::ami::same_name::SameNameError;
use imgforge::aws::ami::storage::{self, ExtraVolume, Storage, VolumeSpec};
use imgforge::aws::client;
use imgforge::aws::ebs::blocks;
use imgforge::aws::ebs::delta::ParentArg;
use imgforge::aws::kms::{KmsError, parse_region_key};
use imgforge::aws::publish::{Deprecation, PublishPlan};
use imgforge::aws::upload::{self, UploadError, UploadRequest};
use imgforge::platform::{self, Architecture};
use imgforge::units::{ByteSize, parse_duration};

use super::BadInput;
use super::aws_options::AwsOptions;
pub use super::upload_values::{Timeout, VolumeSize};

#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "How it works: the image's blocks are written straight into a new EBS \
snapshot through the EBS direct APIs (StartSnapshot, PutSnapshotBlock, CompleteSnapshot), then \
registered as an AMI with EC2 RegisterImage (hvm, /dev/xvda, gp3, ENA, IMDSv2).\n\n\
Only the image's data is read: holes (SEEK_DATA/SEEK_HOLE) and all-zero blocks are skipped on \
an unencrypted snapshot. The upload is resumable: a journal beside the image \
(IMAGE.upload-journal.json) records the snapshot and every block EBS confirmed, so rerunning the \
same command after a crash, kill -9 or Ctrl-C continues the same snapshot and sends only the \
missing blocks. The image is read once: each block is hashed as it is sent (an image without its \
build manifest IMAGE.json, uploaded without --name, is hashed first for its default name).\n\n\
Delta publishing: --parent snap-...|ami-...|auto writes only the blocks that differ from the \
parent snapshot's, compared with the parent's block digests that imgforge keeps for every \
snapshot it publishes (--state-dir).\n\n\
Publishing: once the AMI exists it is published in its region and each --copy-to region (at \
most 4 at a time): copies, tags, --share-with, --deprecate-in/--deprecate-at, --ssm-parameter. \
A region that fails does not stop the others; the command then names the regions that \
succeeded and failed and exits non-zero, and rerunning it does only what is missing. \
packer-manifest.json's artifact_id lists every region (region:ami,..., sorted).\n\n\
Credentials and region come from the standard AWS chain (AWS_ACCESS_KEY_ID and \
AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws/config including SSO, instance roles). Prints the AMI \
ID on stdout, and writes ami-latest.txt and packer-manifest.json (appended) in --output-dir.\n\n\
Examples:\n  imgforge upload image.raw --name web-small-v1 --tag team=infra\n  \
imgforge upload image.raw --name web-small-v1 --replace --boot-mode uefi\n  \
imgforge upload image.raw --no-register --json\n  \
imgforge upload image.raw --name web-small-v2 --parent auto\n  \
imgforge upload image.raw --name app-v2 --copy-to eu-west-1,us-west-2 --share-with 123456789012 \
--deprecate-in 90d --ssm-parameter /images/app/latest\n  \
imgforge upload image.raw --endpoint-url http://127.0.0.1:5000 --region us-east-1",
    after_help = "Examples:\n  imgforge upload image.raw --name web-small-v1 --tag team=infra\n  \
imgforge upload image.raw --no-register --json"
)]
pub struct UploadArgs {
    /// The raw disk image to upload (a regular file; sparse files upload fastest).
    pub image: PathBuf,

    #[command(flatten)]
    pub connection: AwsOptions,

    /// AMI name (3-128 characters: letters, digits, ( ) [ ] . / - ' @ _ and spaces).
    /// Default: the image's file name and the start of its sha256. `{date}` is the
    /// image's build date (YYYYMMDD, from its manifest IMAGE.json, not the clock), so a
    /// rerun on another day resumes. An AMI of this name is reused only when it holds
    /// the same image (its imgforge:image-sha256 tag); one holding another image is
    /// refused before anything is uploaded (see --replace). Packer: ami_name.
    #[arg(long, value_parser = parse_ami_name)]
    pub name: Option<String>,

    /// Description of the snapshot and the AMI. Default: "imgforge upload of FILE".
    /// Packer: ami_description.
    #[arg(long)]
    pub description: Option<String>,

    /// A tag for the snapshots and the AMIs, in every region; repeat for more.
    /// Packer: tags.
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,

    /// A tag for the snapshots only, in every region; repeat for more.
    /// Packer: snapshot_tags.
    #[arg(long = "snapshot-tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
    pub snapshot_tags: Vec<(String, String)>,

    /// Size of the volume the snapshot describes, a whole number of GiB (e.g. 8G;
    /// at least the image's size rounded up to a GiB, which is the default; at most
    /// 64T). A bare number is still read as GiB, for now. Packer: volume_size in
    /// ami_block_device_mappings.
    #[arg(long, value_name = "SIZE")]
    pub volume_size: Option<VolumeSize>,

    /// Concurrent PutSnapshotBlock requests (EBS accepts about 1000 blocks/s per snapshot).
    /// Packer: none (Packer has no direct snapshot upload).
    #[arg(long, default_value_t = 64, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: u32,

    /// Firmware the AMI boots with. Default: read from the image (both bootloaders:
    /// uefi-preferred; only UEFI: uefi; only BIOS or unreadable: legacy-bios; an
    /// arm64 image: uefi, and a BIOS mode for it is an error).
    /// Packer: boot_mode.
    #[arg(long, value_enum)]
    pub boot_mode: Option<BootModeArg>,

    /// CPU architecture of the image: x86_64 or arm64 (or an alias: amd64,
    /// aarch64). Default: read from the image (its manifest, else its root partition
    /// type); a value that contradicts the image is an error, and an image that tells
    /// nothing needs it. Packer: ami_architecture.
    #[arg(long = "arch", alias = "architecture", value_name = "ARCH", value_parser = parse_arch)]
    pub architecture: Option<&'static Architecture>,

    /// Register the AMI with NitroTPM (TpmSupport v2.0; needs --boot-mode uefi or
    /// uefi-preferred). Packer: tpm_support.
    #[arg(long)]
    pub tpm: bool,

    #[command(flatten)]
    pub uefi: super::uefi_data::UefiDataArgs,

    /// Make an encrypted snapshot (with the account's default EBS key unless
    /// --kms-key-id). Every block is written, zeros included. Packer: encrypt_boot.
    #[arg(long)]
    pub encrypted: bool,

    /// KMS key for --encrypted: an ARN, key ID or alias (alias/images), resolved to its
    /// ARN with KMS DescribeKey before the upload (EBS takes only ARNs).
    /// Packer: kms_key_id.
    #[arg(long, requires = "encrypted", value_name = "KEY")]
    pub kms_key_id: Option<String>,

    /// Encrypt the copy in REGION (a --copy-to region) with KEY there (ARN, ID or alias);
    /// repeat per region. Without it a copy of an encrypted AMI gets the region's
    /// aws/ebs key, which cannot be shared. Packer: region_kms_key_ids.
    #[arg(long = "copy-kms-key", value_name = "REGION=KEY", value_parser = parse_region_key)]
    pub copy_kms_keys: Vec<(String, String)>,

    /// The root volume's EBS type: gp3 (default), gp2, io1, io2 or standard.
    /// Packer: launch_block_device_mappings volume_type.
    #[arg(long, default_value = "gp3", value_name = "TYPE", value_parser = parse_volume_type)]
    pub root_volume_type: String,

    /// The root volume's IOPS (gp3: 3000-80000, 500/GiB above 3000; io1: 100-64000,
    /// 50/GiB; io2: 100-256000, 1000/GiB). Packer: launch_block_device_mappings iops.
    #[arg(long, value_name = "N")]
    pub root_volume_iops: Option<u32>,

    /// The root volume's MiB/s (gp3: 125-2000, 0.25 per IOPS); like the IOPS, checked
    /// before any upload. Packer: launch_block_device_mappings throughput.
    #[arg(long, value_name = "MIBPS")]
    pub root_volume_throughput: Option<u32>,

    /// An extra EBS volume, deleted with the instance (repeat for more), e.g.
    /// /dev/sdf=100G,type=gp3,iops=4000. Packer: launch_block_device_mappings.
    #[arg(long = "volume", value_name = "DEVICE=SIZE[,type=T][,iops=N][,throughput=N]", value_parser = ExtraVolume::parse)]
    pub volumes: Vec<ExtraVolume>,

    /// Map N instance-store volumes (ephemeral0..N-1, on the first free /dev/sdX); used
    /// on instance types that have them. Packer: ephemeral block devices.
    #[arg(long, value_name = "N", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=24))]
    pub instance_store: u32,

    /// Deregistration protection on the AMI in every region: nobody (`ami prune`
    /// included) deregisters it until it is disabled. Packer: deregistration_protection.
    #[arg(long)]
    pub deregistration_protection: bool,

    /// Stop after the snapshot is completed: no RegisterImage; prints the snapshot ID.
    /// Packer: skip_create_ami.
    #[arg(long, conflicts_with_all = ["replace", "tpm", "copy_to", "share_with",
          "deprecate_in", "deprecate_at", "ssm_parameter"])]
    pub no_register: bool,

    /// If an AMI of this name holds another image (here or in a --copy-to region),
    /// replace it: the new snapshot is written first, then the old AMI is deregistered
    /// and its snapshots deleted, then the new AMI is registered under the name. An AMI
    /// holding the same image is reused either way. (Old spelling: --force-deregister.)
    /// Packer: force_deregister and force_delete_snapshot.
    #[arg(long, alias = "force-deregister")]
    pub replace: bool,

    /// When the upload fails after the snapshot was started, keep the snapshot and the
    /// journal (a rerun resumes) instead of deleting them. Packer: none.
    #[arg(long)]
    pub keep_snapshot: bool,

    /// Copy the AMI to these regions (comma-separated or repeated), at most 4 at a
    /// time, with its tags; a region that already holds an AMI of the name keeps it.
    /// Packer: ami_regions.
    #[arg(long, value_delimiter = ',', value_name = "REGION,...", value_parser = parse_region)]
    pub copy_to: Vec<String>,

    /// How the AMI gets to each --copy-to region: `copy` (CopyImage) or `upload` (the
    /// image written into each region's own snapshot, all regions at once, registered
    /// there: available everywhere in about one upload's time). Packer: none.
    #[arg(long, value_enum, default_value = "copy")]
    pub copy_method: CopyMethod,

    /// How long to wait for each copy to become `available` (e.g. 90m, 2h).
    /// Packer: aws_polling (max_attempts x delay_seconds).
    #[arg(long, default_value = "60m", value_name = "DURATION", value_parser = parse_duration)]
    pub copy_timeout: Duration,

    /// Share the AMI in every region: a 12-digit account ID (which also gets
    /// createVolumePermission on the snapshots, so it can copy the AMI), `all`
    /// (public), an organization ARN or an OU ARN; repeat for more.
    /// Packer: ami_users / ami_groups / ami_org_arns / ami_ou_arns (and snapshot_users).
    #[arg(long, value_name = "ACCOUNT|all|ORG_ARN|OU_ARN", value_parser = parse_share_target)]
    pub share_with: Vec<ShareTarget>,

    /// Deprecate the AMI this long from now, in every region (e.g. 30d, 12w).
    /// Packer: deprecate_at (given as a duration).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration,
          conflicts_with = "deprecate_at")]
    pub deprecate_in: Option<Duration>,

    /// Deprecate the AMI at this RFC 3339 time, in every region (e.g. 2027-01-31T00:00:00Z).
    /// Packer: deprecate_at.
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339)]
    pub deprecate_at: Option<i64>,

    /// Point this SSM parameter at the AMI, in every region (DataType aws:ec2:image).
    /// Placeholders: {name} (the AMI name), {region}. e.g. /images/trading-large/latest.
    /// Refuses to overwrite a parameter naming an AMI of another image family.
    /// Packer: none (usually a shell-local post-processor running `aws ssm put-parameter`).
    #[arg(long, value_name = "TEMPLATE", value_parser = parse_ssm_template)]
    pub ssm_parameter: Option<String>,

    /// Overwrite the --ssm-parameter even when it names an AMI of another image family.
    /// Packer: none.
    #[arg(long, requires = "ssm_parameter")]
    pub ssm_overwrite: bool,

    /// The image family (tagged imgforge:family on every AMI and snapshot; `ami
    /// list|prune|promote --family` select by it; checked by --ssm-parameter).
    /// Default: the imgforge.toml variant's name (--config --image), else the AMI name
    /// without its trailing version (trading-large-v3 -> trading-large). Packer: none.
    #[arg(long)]
    pub family: Option<String>,

    /// Print the whole result as JSON on stdout (with one entry per region) instead
    /// of the AMI ID. Packer: none (see packer-manifest.json).
    #[arg(long)]
    pub json: bool,

    /// Where ami-latest.txt and packer-manifest.json are written.
    /// Packer: the manifest post-processor's output.
    #[arg(long, default_value = ".", value_name = "DIR")]
    pub output_dir: PathBuf,

    /// The resume journal. Default: IMAGE.upload-journal.json beside the image.
    /// Packer: none.
    #[arg(long, value_name = "PATH")]
    pub journal: Option<PathBuf>,

    /// Make the snapshot incremental to a parent: `snap-...`, `ami-...` (its root
    /// snapshot) or `auto` (the last snapshot of the same image family published from
    /// this machine). Only the 512 KiB blocks whose content differs from the parent's
    /// (and those that became zeros) are sent; the rest are inherited. Needs the
    /// parent's block digests, which imgforge keeps for every snapshot it publishes
    /// (see --state-dir). An encrypted parent gives an encrypted snapshot; an
    /// unencrypted one cannot take --encrypted. Packer: none.
    #[arg(long, value_name = "snap-ID|ami-ID|auto", value_parser = ParentArg::parse)]
    pub parent: Option<ParentArg>,

    /// Where the block digests of published snapshots are kept (for --parent):
    /// DIR/snapshots/REGION/SNAPSHOT.json. Default: $XDG_STATE_HOME/imgforge, else
    /// ~/.local/state/imgforge. Packer: none.
    #[arg(long, value_name = "DIR", env = "IMGFORGE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// How long without a written block before EBS gives up on the pending
    /// snapshot (StartSnapshot Timeout: 10m to 72h, whole minutes; e.g. 4h). A later
    /// rerun notices and starts over. A bare number is seconds. Packer: none.
    #[arg(long, default_value = "4h", value_name = "DURATION")]
    pub snapshot_timeout: Timeout,

    /// How long to wait for the snapshot to become `completed` after
    /// CompleteSnapshot (e.g. 60m, 2h; a bare number is seconds). Packer: aws_polling.
    #[arg(long, default_value = "60m", value_name = "DURATION")]
    pub wait_timeout: Timeout,

    /// Instance types the AMI is for: before any upload, DescribeInstanceTypes says if
    /// each can run the image (architecture; boot modes: UEFI-only on a BIOS-only type
    /// is refused, hybrid is fine; NitroTPM for --tpm; ENA). A table on stderr,
    /// `instance_types` in --json; a refused type exits 2. Packer: none.
    #[arg(long, value_delimiter = ',', value_name = "TYPE,...")]
    pub instance_types: Vec<String>,

    /// Print the least-privilege IAM policy this upload with these flags needs, in
    /// every region it touches (with the KMS permissions EBS and EC2 use on your
    /// behalf), and exit: no AWS call. Packer: none.
    #[arg(long)]
    pub print_iam_policy: bool,

    /// Benchmark only: read, zero-check and SHA-256 the image's data as an upload
    /// would, print the throughput (GB/s) and exit. Needs no AWS access.
    /// Packer: none.
    #[arg(long)]
    pub hash_only: bool,
}

/// `--copy-method`'s values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CopyMethod {
    /// CopyImage to each region.
    Copy,
    /// Write the image into each region's own snapshot (EBS direct APIs).
    Upload,
}

/// `--boot-mode`'s values, for clap; the engine's [`BootMode`] has no clap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BootModeArg {
    /// UEFI where the instance type supports it, else legacy BIOS (needs both bootloaders).
    UefiPreferred,
    /// UEFI only (required on Graviton, and for NitroTPM).
    Uefi,
    /// Legacy BIOS only.
    LegacyBios,
}

impl From<BootModeArg> for BootMode {
    fn from(arg: BootModeArg) -> Self {
        match arg {
            BootModeArg::UefiPreferred => BootMode::UefiPreferred,
            BootModeArg::Uefi => BootMode::Uefi,
            BootModeArg::LegacyBios => BootMode::LegacyBios,
        }
    }
}

fn parse_volume_type(text: &str) -> Result<String, String> {
    storage::limits(text).map(|t| t.name.to_string())
}

/// An architecture of boot/architectures.toml, by name or alias.
fn parse_arch(text: &str) -> Result<&'static Architecture, String> {
    platform::lookup(text).map_err(|e| e.to_string())
}

impl UploadArgs {
    /// The plain request the engine takes, and the one-line warnings for
    /// old spellings. Bad values are [`BadInput`].
    pub fn to_request(&self) -> Result<UploadRequest, BadInput> {
        self.warn_old_spellings();
        if let Some((region, _)) = self
            .copy_kms_keys
            .iter()
            .find(|(region, _)| !self.copy_to.contains(region))
        {
            return Err(BadInput::new(format!(
                "--copy-kms-key {region}=...: {region} is not a --copy-to region; add --copy-to {region} or drop the key"
            )));
        }
        let deprecate = match (self.deprecate_in, self.deprecate_at) {
            (Some(after), _) => Some(Deprecation::In(after)),
            (None, Some(at)) => Some(Deprecation::At(at)),
            (None, None) => None,
        };
        Ok(UploadRequest {
            image: self.image.clone(),
            connection: self.connection.to_connection()?,
            name: self.name.clone(),
            description: self.description.clone(),
            tags: self.tags.clone(),
            snapshot_tags: self.snapshot_tags.clone(),
            volume_size: self.volume_size.map(|v| v.size),
            workers: self.workers as usize,
            boot_mode: self.boot_mode.map(BootMode::from),
            architecture: self.architecture,
            tpm: self.tpm,
            uefi_data: None,
            encrypted: self.encrypted,
            kms_key_id: self.kms_key_id.clone(),
            no_register: self.no_register,
            force_deregister: self.replace,
            keep_snapshot: self.keep_snapshot,
            output_dir: self.output_dir.clone(),
            journal: self.journal.clone(),
            parent: self.parent.clone(),
            state_dir: self.state_dir.clone(),
            snapshot_timeout: self.snapshot_timeout.duration,
            wait_timeout: self.wait_timeout.duration,
            publish: PublishPlan {
                copy_to: self.copy_to.clone(),
                share_with: self.share_with.clone(),
                deprecate,
                ssm_parameter: self.ssm_parameter.clone(),
                ssm_overwrite: self.ssm_overwrite,
                family: self.family.clone(),
                tags: self.tags.clone(),
                snapshot_tags: self.snapshot_tags.clone(),
                copy_timeout: self.copy_timeout,
                copies_in_flight: 4,
                replace: self.replace,
                copy_kms_keys: self.copy_kms_keys.clone(),
                deregistration_protection: self.deregistration_protection,
                copy_by_upload: self.copy_method == CopyMethod::Upload,
                // What the upload finds out: the image's digests, the keys' ARNs.
                ..PublishPlan::default()
            },
            instance_types: self.instance_types.clone(),
            storage: Storage {
                root: VolumeSpec {
                    volume_type: self.root_volume_type.clone(),
                    iops: self.root_volume_iops.map(u64::from),
                    throughput: self.root_volume_throughput.map(u64::from),
                },
                volumes: self.volumes.clone(),
                instance_store: self.instance_store,
            },
        })
    }

    fn warn_old_spellings(&self) {
        super::warn_renamed_flag("--architecture", "--arch");
        super::warn_renamed_flag("--force-deregister", "--replace");
        if let Some(v) = self.volume_size.filter(|v| v.bare) {
            eprintln!(
                "imgforge: warning: --volume-size {n} is read as {n}G; write {n}G (a bare number \
will mean bytes, as for every size)",
                n = v.size.bytes() / ByteSize::GIB
            );
        }
        for (flag, timeout) in [
            ("snapshot-timeout", self.snapshot_timeout),
            ("wait-timeout", self.wait_timeout),
        ] {
            if timeout.bare {
                let secs = timeout.duration.as_secs();
                eprintln!(
                    "imgforge: warning: --{flag} {secs} is {secs} seconds (it used to mean \
minutes); write {secs}m for minutes"
                );
            }
        }
    }
}

pub fn run(args: &UploadArgs) -> anyhow::Result<()> {
    if args.hash_only {
        return hash_only(args);
    }
    let mut request = args.to_request()?;
    if args.print_iam_policy {
        let region = super::aws_options::offline_region(request.connection.region.as_deref());
        let policy = imgforge::aws::iam::for_upload(&request, &region);
        println!("{}", serde_json::to_string_pretty(&policy)?);
        return Ok(());
    }
    upload::check(&request).map_err(BadInput::from_error)?;
    args.uefi
        .apply(args.family.as_deref(), args.name.as_deref(), &mut request)?;
    let runtime = client::runtime().context("cannot start the async runtime")?;
    let result = match runtime.block_on(upload::upload(&request)) {
        Ok(result) => result,
        Err(UploadError::PartialPublish {
            succeeded,
            failed,
            result,
        }) => {
            // The regions that worked are worth printing: a rerun finishes the rest.
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&result).expect("result serializes")
                );
            }
            let err = UploadError::PartialPublish {
                succeeded,
                failed,
                result,
            };
            return super::after_json_document(Err(err.into()), args.json);
        }
        // The image and the flags disagree (architecture, boot mode): found
        // before any snapshot was started, so it is bad input.
        Err(err @ UploadError::Platform(_)) => return Err(BadInput::from_error(err).into()),
        // An AMI of the name holds another image: refused before any
        // snapshot was started.
        Err(err @ UploadError::SameName(SameNameError::Taken(_))) => {
            return Err(BadInput::from_error(err).into());
        }
        // An instance type that cannot run the image, or does not exist.
        Err(
            err @ UploadError::InstanceTypes(
                InstanceTypeError::Refused { .. } | InstanceTypeError::Unknown { .. },
            ),
        ) => {
            return Err(BadInput::from_error(err).into());
        }
        // A key that does not resolve, or sharing that its key forbids:
        // found before anything was written.
        Err(UploadError::Kms(err))
            if !matches!(err, KmsError::Api(_) | KmsError::Interrupted(_)) =>
        {
            return Err(BadInput::from_error(UploadError::Kms(err)).into());
        }
        Err(err) => return Err(err.into()),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&result).expect("result serializes")
        );
    } else if let Some(ami) = &result.ami_id {
        println!("{ami}");
        for region in result.regions.iter().filter(|r| r.region != result.region) {
            if let Some(id) = &region.ami_id {
                eprintln!("{}: {id}", region.region);
            }
        }
    } else {
        println!("{}", result.snapshot_id);
    }
    Ok(())
}

fn hash_only(args: &UploadArgs) -> anyhow::Result<()> {
    let (file, size) = upload::open_image(&args.image).map_err(BadInput::from_error)?;
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
    Ok(())
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
        assert_eq!(args.boot_mode, Some(BootModeArg::UefiPreferred));
        assert!(
            args.architecture.is_none(),
            "read from the image, not assumed"
        );
        assert_eq!(
            parse(&["--arch", "arm64"])
                .unwrap()
                .architecture
                .unwrap()
                .name,
            "arm64"
        );
        assert_eq!(
            parse(&["--architecture", "aarch64"])
                .unwrap()
                .architecture
                .unwrap()
                .name,
            "arm64",
            "the old spelling and the aliases still work"
        );
        assert!(parse(&["--arch", "sparc"]).is_err());
        assert!(parse(&["--tag", "novalue"]).is_err());
        assert!(parse(&["--tag", "aws:x=1"]).is_err());
        assert!(parse(&["--kms-key-id", "k"]).is_err(), "needs --encrypted");
        assert!(parse(&["--encrypted", "--kms-key-id", "k"]).is_ok());
        assert!(parse(&["--workers", "0"]).is_err());
        assert!(parse(&["--no-register", "--force-deregister"]).is_err());
        assert!(parse(&["--replace"]).unwrap().replace);
        assert!(
            parse(&["--force-deregister"]).unwrap().replace,
            "the old spelling"
        );
        assert!(parse(&["--name", "ab"]).is_err());
        assert!(parse(&["--name", "bad*name"]).is_err());
        assert!(parse(&["--snapshot-timeout", "soon"]).is_err());
    }

    #[test]
    fn sizes_and_durations_take_the_one_notation() {
        let args = parse(&[]).unwrap();
        let req = args.to_request().unwrap();
        assert_eq!(req.snapshot_timeout, Duration::from_secs(4 * 3600));
        assert_eq!(req.wait_timeout, Duration::from_secs(3600));
        assert_eq!(req.connection.attempt_timeout, Duration::from_secs(60));
        let args = parse(&[
            "--volume-size",
            "8G",
            "--snapshot-timeout",
            "90m",
            "--wait-timeout",
            "2h",
            "--attempt-timeout",
            "2",
        ])
        .unwrap();
        let req = args.to_request().unwrap();
        assert_eq!(req.volume_size, Some(ByteSize(8 << 30)));
        assert_eq!(req.snapshot_timeout, Duration::from_secs(90 * 60));
        assert_eq!(req.wait_timeout, Duration::from_secs(7200));
        assert_eq!(req.connection.attempt_timeout, Duration::from_secs(2));
        // A bare --volume-size keeps its old unit (GiB), with a warning.
        let bare = parse(&["--volume-size", "2"]).unwrap().volume_size.unwrap();
        assert_eq!((bare.size, bare.bare), (ByteSize(2 << 30), true));
        assert!(parse(&["--volume-size", "lots"]).is_err());
        assert!(
            parse(&["--connect-timeout", "0"])
                .unwrap()
                .to_request()
                .is_err()
        );
        assert!(
            parse(&["--endpoint-url", "localhost:5000"])
                .unwrap()
                .to_request()
                .is_err()
        );
    }

    #[test]
    fn publish_flags_parse_into_the_plan() {
        let args = parse(&[
            "--copy-to",
            "eu-west-1,us-west-2",
            "--share-with",
            "123456789012",
            "--share-with",
            "all",
            "--deprecate-in",
            "30d",
            "--ssm-parameter",
            "/images/{name}/latest",
            "--snapshot-tag",
            "k=v",
        ])
        .unwrap();
        let req = args.to_request().unwrap();
        assert_eq!(req.publish.copy_to, ["eu-west-1", "us-west-2"]);
        assert_eq!(req.publish.share_with.len(), 2);
        assert_eq!(
            req.publish.deprecate,
            Some(Deprecation::In(Duration::from_secs(30 * 86_400)))
        );
        assert_eq!(req.snapshot_tags, vec![("k".into(), "v".into())]);
        assert!(parse(&["--copy-to", "Mars"]).is_err());
        assert!(parse(&["--share-with", "bob"]).is_err());
        assert!(parse(&["--ssm-parameter", "images/latest"]).is_err());
        assert!(
            parse(&[
                "--deprecate-in",
                "1d",
                "--deprecate-at",
                "2030-01-01T00:00:00Z"
            ])
            .is_err()
        );
        assert!(parse(&["--no-register", "--copy-to", "eu-west-1"]).is_err());
        assert!(parse(&["--ssm-overwrite"]).is_err());
    }
}
