//! Publishing an AMI once it exists in one region: one job per step, run
//! per region.
//!
//! For every target region (the source region and each `--copy-to`), at
//! most [`PublishPlan::copies_in_flight`] at a time:
//! 1. copy ([`copy`]) — the AMI of the name in that region, reused or copied
//!    (CopyImage with a derived ClientToken), waited on until `available`;
//! 2. tags ([`tags`]) — family and name tags on the AMI and its snapshots;
//! 3. share ([`share`]) — launch permission, createVolumePermission for accounts;
//! 4. protect ([`protect`]) — EnableImageDeregistrationProtection;
//!    deprecate ([`deprecate`]) — EnableImageDeprecation;
//! 5. ssm ([`ssm`]) — the "latest" parameter, guarded by image family.
//!
//! A failure in one region does not stop the others: the report says which
//! regions succeeded and which failed, and a rerun redoes only what is
//! missing (copies are found by name, the parameter is compared first).

pub mod copy;
pub mod deprecate;
pub mod encryption;
pub mod in_use;
pub mod list;
pub mod protect;
pub mod prune;
pub mod share;
pub mod ssm;
pub mod tags;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use serde::Serialize;

use super::ami::names::{REGIONS_TAG, ShareTarget, family_of, format_rfc3339};
use super::client::Clients;
use super::retry::{ApiError, RetryError, with_retries};
use crate::sys::interrupt::Interrupted;

/// What to do with the AMI after it is registered; plain values.
#[derive(Debug, Clone, Default)]
pub struct PublishPlan {
    /// Regions to copy the AMI to (the source region is ignored here).
    pub copy_to: Vec<String>,
    pub share_with: Vec<ShareTarget>,
    pub deprecate: Option<Deprecation>,
    /// SSM parameter name template with `{name}` and `{region}`.
    pub ssm_parameter: Option<String>,
    /// Overwrite a parameter that names an AMI of another image family.
    pub ssm_overwrite: bool,
    /// The image family; None: from the AMI name ([`family_of`]).
    pub family: Option<String>,
    /// Tags for the copies (the source AMI got them at RegisterImage).
    pub tags: Vec<(String, String)>,
    /// Tags for the snapshots in every region.
    pub snapshot_tags: Vec<(String, String)>,
    /// How long to wait for each copy to become `available`.
    pub copy_timeout: Duration,
    /// Regions worked on at once (CopyImage calls in flight); 4 if 0.
    pub copies_in_flight: usize,
    /// The image's sha256: tagged on every AMI and snapshot; an AMI of the
    /// name in a copy region is reused only when it holds this image.
    pub image_sha256: Option<String>,
    /// More tags naming what the image holds (the SBOM digests), on every
    /// AMI and snapshot like the sha256.
    pub identity_tags: Vec<(String, String)>,
    /// Replace an AMI of the name that holds another image (`--replace`).
    pub replace: bool,
    /// `--copy-kms-key REGION=KEY`, as given (alias, key ID or ARN).
    pub copy_kms_keys: Vec<(String, String)>,
    /// `--copy-method upload`: each copy region's AMI was written there by
    /// this run (found by name, reported as `uploaded`), not copied.
    pub copy_by_upload: bool,
    /// EnableImageDeregistrationProtection on the AMI in every region.
    pub deregistration_protection: bool,
    /// The copy keys resolved to ARNs by [`encryption::preflight`], by region:
    /// CopyImage Encrypted + KmsKeyId.
    pub copy_key_arns: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deprecation {
    /// From now.
    In(Duration),
    /// Seconds since the epoch.
    At(i64),
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
    #[error(
        "unknown region {region:?}: EC2 knows {known} (check the spelling; a region must also be \
enabled for the account)"
    )]
    UnknownRegion { region: String, known: String },
    #[error("the deprecation time {at} is in the past; give a future time or a duration")]
    DeprecationInPast { at: String },
    #[error("{0}")]
    Refused(String),
    #[error("AMI {image_id} in {region} is in state `{state}`{}", reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    ImageFailed {
        image_id: String,
        region: String,
        state: String,
        reason: Option<String>,
    },
    #[error(
        "AMI {image_id} in {region} is still `{state}` after {seconds} s (--copy-timeout); \
rerun the same command later to finish"
    )]
    WaitTimedOut {
        image_id: String,
        region: String,
        state: String,
        seconds: u64,
    },
}

impl From<RetryError> for PublishError {
    fn from(err: RetryError) -> Self {
        match err {
            RetryError::Api(api) => Self::Api(api),
            RetryError::Interrupted(i) => Self::Interrupted(i),
        }
    }
}

/// The AMI that publishing starts from.
#[derive(Debug, Clone)]
pub struct SourceImage {
    pub image_id: String,
    pub name: String,
    pub region: String,
    /// The snapshot the upload wrote (also tagged, whatever EC2 reports).
    pub snapshot_id: Option<String>,
}

/// One region's outcome (`--json`: `regions`).
#[derive(Debug, Clone, Serialize)]
pub struct RegionResult {
    pub region: String,
    pub ami_id: Option<String>,
    /// `source` (registered or reused here), `copied` (CopyImage by this
    /// run) or `reused` (an AMI of the name was there already).
    pub origin: String,
    pub state: Option<String>,
    pub snapshot_ids: Vec<String>,
    pub shared_with: Vec<ShareTarget>,
    pub deprecate_at: Option<String>,
    /// EnableImageDeregistrationProtection was called for it.
    pub deregistration_protection: bool,
    pub ssm_parameter: Option<String>,
    /// The parameter's value before this run, when it was changed.
    pub ssm_previous_value: Option<String>,
    pub error: Option<String>,
}

impl RegionResult {
    pub fn new(region: &str) -> Self {
        Self {
            region: region.to_string(),
            ami_id: None,
            origin: String::new(),
            state: None,
            snapshot_ids: Vec::new(),
            shared_with: Vec::new(),
            deprecate_at: None,
            deregistration_protection: false,
            ssm_parameter: None,
            ssm_previous_value: None,
            error: None,
        }
    }
}

/// Every region's outcome, sorted by region.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PublishReport {
    pub regions: Vec<RegionResult>,
}

/// What [`preflight`] settled: the regions, in order, and the absolute
/// deprecation time.
#[derive(Debug, Clone)]
struct Targets {
    deprecate_at: Option<i64>,
    /// Every region published in, sorted, comma-separated ([`REGIONS_TAG`]).
    regions: String,
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

fn deprecate_at(plan: &PublishPlan) -> Result<Option<i64>, PublishError> {
    match plan.deprecate {
        None => Ok(None),
        Some(Deprecation::In(after)) => Ok(Some(now_secs() + after.as_secs() as i64)),
        Some(Deprecation::At(at)) if at <= now_secs() => Err(PublishError::DeprecationInPast {
            at: format_rfc3339(at),
        }),
        Some(Deprecation::At(at)) => Ok(Some(at)),
    }
}

/// The regions EC2 knows (DescribeRegions, AllRegions).
pub async fn known_regions(clients: &Clients) -> Result<BTreeSet<String>, PublishError> {
    let output = with_retries(&clients.retry, "DescribeRegions", "DescribeRegions", || {
        clients.ec2.describe_regions().all_regions(true).send()
    })
    .await?;
    Ok(output
        .regions()
        .iter()
        .filter_map(|r| r.region_name().map(str::to_string))
        .collect())
}

/// Checks, before anything is written, that every region exists and the
/// deprecation time is in the future.
pub async fn check_regions(clients: &Clients, regions: &[String]) -> Result<(), PublishError> {
    if regions.iter().all(|r| *r == clients.region) {
        return Ok(());
    }
    let known = known_regions(clients).await?;
    for region in regions {
        if !known.contains(region) {
            return Err(PublishError::UnknownRegion {
                region: region.clone(),
                known: known.iter().cloned().collect::<Vec<_>>().join(", "),
            });
        }
    }
    Ok(())
}

pub async fn preflight(clients: &Clients, plan: &PublishPlan) -> Result<(), PublishError> {
    deprecate_at(plan)?;
    check_regions(clients, &plan.copy_to).await
}

/// Publishes `source` in its region and every `--copy-to` region; never
/// fails as a whole: each region's error is in its [`RegionResult`].
pub async fn publish(clients: &Clients, source: &SourceImage, plan: &PublishPlan) -> PublishReport {
    let mut regions: Vec<String> = vec![source.region.clone()];
    for region in &plan.copy_to {
        if !regions.contains(region) {
            regions.push(region.clone());
        }
    }
    let mut sorted = regions.clone();
    sorted.sort();
    let targets = Targets {
        deprecate_at: deprecate_at(plan).ok().flatten(),
        regions: sorted.join(","),
    };
    let in_flight = if plan.copies_in_flight == 0 {
        4
    } else {
        plan.copies_in_flight
    };
    let mut results: Vec<RegionResult> = futures::stream::iter(regions)
        .map(|region| {
            let clients = clients.for_region(&region);
            let targets = &targets;
            async move {
                let mut result = RegionResult::new(&region);
                if let Err(err) = publish_region(&clients, source, plan, targets, &mut result).await
                {
                    eprintln!("imgforge: {region}: {err}");
                    result.error = Some(err.to_string());
                }
                result
            }
        })
        .buffer_unordered(in_flight)
        .collect()
        .await;
    results.sort_by(|a, b| a.region.cmp(&b.region));
    PublishReport { regions: results }
}

/// The steps in one region, in order.
async fn publish_region(
    clients: &Clients,
    source: &SourceImage,
    plan: &PublishPlan,
    targets: &Targets,
    result: &mut RegionResult,
) -> Result<(), PublishError> {
    let family = plan
        .family
        .clone()
        .unwrap_or_else(|| family_of(&source.name));
    let image = copy::ensure_image(clients, source, plan).await?;
    result.ami_id = Some(image.image_id.clone());
    result.origin = image.origin.to_string();
    result.state = Some(image.state.clone());
    let mut snapshot_ids = image.snapshot_ids.clone();
    if clients.region == source.region
        && let Some(id) = &source.snapshot_id
        && !snapshot_ids.contains(id)
    {
        snapshot_ids.push(id.clone());
    }
    result.snapshot_ids = snapshot_ids.clone();
    let regions_tag = (REGIONS_TAG.to_string(), targets.regions.clone());
    tags::apply(clients, &image, &snapshot_ids, &family, plan, regions_tag).await?;
    if !plan.share_with.is_empty() {
        share::apply(clients, &image.image_id, &snapshot_ids, &plan.share_with).await?;
        result.shared_with = plan.share_with.clone();
    }
    if plan.deregistration_protection {
        protect::apply(clients, &image.image_id).await?;
        result.deregistration_protection = true;
    }
    if let Some(at) = targets.deprecate_at {
        deprecate::apply(clients, &image.image_id, at).await?;
        result.deprecate_at = Some(format_rfc3339(at));
    }
    if let Some(template) = &plan.ssm_parameter {
        let name = super::ami::names::render_ssm_name(template, &source.name, &clients.region);
        let previous =
            ssm::point(clients, &name, &image.image_id, &family, plan.ssm_overwrite).await?;
        result.ssm_parameter = Some(name);
        result.ssm_previous_value = previous;
    }
    Ok(())
}
