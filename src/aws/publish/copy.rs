//! The AMI in one region: the source itself, an AMI of the same name found
//! there holding the same image (a rerun; one holding another image is
//! replaced with `--replace`, else refused), or a new CopyImage, then a
//! bounded wait for `available` with progress on stderr.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::list::{self, ImageInfo};
use super::{PublishError, PublishPlan, SourceImage};
use crate::aws::ami::digest::IMAGE_SHA256_TAG;
use crate::aws::ami::register::{self, ExistingImage};
use crate::aws::ami::same_name::NameTaken;
use crate::aws::client::Clients;
use crate::aws::retry::with_retries;
use crate::sys::interrupt::{self, Interrupted};

/// The AMI a region ends up with.
#[derive(Debug, Clone)]
pub struct RegionImage {
    pub image_id: String,
    pub origin: &'static str,
    pub state: String,
    pub snapshot_ids: Vec<String>,
    /// Whether this run made it (copies get the tags CopyImage may not carry).
    pub copied: bool,
}

/// CopyImage's ClientToken: the same source AMI, region and name give the
/// same token, so a rerun after a lost answer does not copy twice (the SDK
/// would otherwise invent a random one). At most 64 ASCII characters.
pub fn client_token(source_image_id: &str, region: &str, name: &str) -> String {
    let digest = Sha256::digest(format!(
        "imgforge-copy\n{source_image_id}\n{region}\n{name}"
    ));
    hex::encode(digest)
}

pub async fn ensure_image(
    clients: &Clients,
    source: &SourceImage,
    plan: &PublishPlan,
) -> Result<RegionImage, PublishError> {
    let region = clients.region.as_str();
    let (image_id, origin, copied) = if region == source.region {
        (source.image_id.clone(), "source", false)
    } else {
        let existing = list::owned(clients, &source.name, true, &[]).await?;
        match existing.as_slice() {
            // Written and registered in this region by this run, after the
            // same same-name check as the source region's.
            [one] if plan.copy_by_upload => (one.image_id.clone(), "uploaded", false),
            [one] if !holds_the_image(one, plan) => {
                replace_other_image(clients, one, plan).await?;
                (copy(clients, source, plan).await?, "copied", true)
            }
            [one] => {
                eprintln!(
                    "imgforge: {region}: AMI {:?} exists already ({}); reusing it",
                    source.name, one.image_id
                );
                (one.image_id.clone(), "reused", false)
            }
            [] => (copy(clients, source, plan).await?, "copied", true),
            many => {
                return Err(PublishError::Refused(format!(
                    "{region} holds {} AMIs named {:?} ({}); deregister the extra ones first",
                    many.len(),
                    source.name,
                    many.iter()
                        .map(|i| i.image_id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
    };
    let info = wait_available(clients, &image_id, plan.copy_timeout).await?;
    Ok(RegionImage {
        image_id,
        origin,
        state: info.state,
        snapshot_ids: info.snapshot_ids,
        copied,
    })
}

/// Whether an AMI of the name in a copy region holds the image being
/// published (always, when the digest is not known).
fn holds_the_image(image: &ImageInfo, plan: &PublishPlan) -> bool {
    let Some(ours) = &plan.image_sha256 else {
        return true;
    };
    image
        .tags
        .get(IMAGE_SHA256_TAG)
        .is_some_and(|theirs| theirs.eq_ignore_ascii_case(ours))
}

/// Deregisters an AMI of the name that holds another image and deletes its
/// snapshots (`--replace`); refuses without it.
async fn replace_other_image(
    clients: &Clients,
    image: &ImageInfo,
    plan: &PublishPlan,
) -> Result<(), PublishError> {
    let existing = ExistingImage {
        image_id: image.image_id.clone(),
        snapshot_ids: image.snapshot_ids.clone(),
        image_sha256: image.tags.get(IMAGE_SHA256_TAG).cloned(),
    };
    let ours = plan.image_sha256.clone().unwrap_or_default();
    if !plan.replace {
        let taken = NameTaken::new(
            &image.name,
            &clients.region,
            &existing,
            existing.image_sha256.as_deref(),
            &ours,
        );
        return Err(PublishError::Refused(taken.to_string()));
    }
    register::deregister(clients, &existing)
        .await
        .map_err(|e| PublishError::Refused(format!("{}: {e}", clients.region)))?;
    eprintln!(
        "imgforge: {}: deregistered {} (another image under the name) and deleted its snapshots {}",
        clients.region,
        image.image_id,
        image.snapshot_ids.join(", ")
    );
    Ok(())
}

async fn copy(
    clients: &Clients,
    source: &SourceImage,
    plan: &PublishPlan,
) -> Result<String, PublishError> {
    // Without a key EC2 encrypts the copy of an encrypted AMI with the
    // region's default key (aws/ebs), which cannot be shared.
    let key = plan.copy_key_arns.get(&clients.region);
    let token = client_token(&source.image_id, &clients.region, &source.name);
    let output = with_retries(
        &clients.retry,
        "CopyImage",
        format_args!("CopyImage to {}", clients.region),
        || {
            clients
                .ec2
                .copy_image()
                .source_image_id(&source.image_id)
                .source_region(&source.region)
                .name(&source.name)
                .description(format!(
                    "{} (copied from {} in {})",
                    source.name, source.image_id, source.region
                ))
                .copy_image_tags(true)
                .client_token(&token)
                .set_encrypted(key.map(|_| true))
                .set_kms_key_id(key.cloned())
                .send()
        },
    )
    .await?;
    let id = output
        .image_id()
        .map(str::to_string)
        .ok_or_else(|| PublishError::Refused("CopyImage answered without an image id".into()))?;
    eprintln!(
        "imgforge: {}: copying {} from {} as {id}",
        clients.region, source.image_id, source.region
    );
    Ok(id)
}

/// Polls DescribeImages until the AMI is `available`, for at most `timeout`;
/// says on stderr how long it has been waiting.
pub async fn wait_available(
    clients: &Clients,
    image_id: &str,
    timeout: Duration,
) -> Result<ImageInfo, PublishError> {
    let started = Instant::now();
    let mut delay = Duration::from_secs(2);
    loop {
        let info = list::by_id(clients, image_id).await?;
        let state = info
            .as_ref()
            .map(|i| i.state.clone())
            .unwrap_or_else(|| "not visible yet".into());
        match (info, state.as_str()) {
            (Some(info), "available") => return Ok(info),
            (Some(_), "failed" | "invalid" | "deregistered" | "error" | "disabled") => {
                return Err(PublishError::ImageFailed {
                    image_id: image_id.to_string(),
                    region: clients.region.clone(),
                    state,
                    reason: None,
                });
            }
            _ => {}
        }
        if started.elapsed() >= timeout {
            return Err(PublishError::WaitTimedOut {
                image_id: image_id.to_string(),
                region: clients.region.clone(),
                state,
                seconds: started.elapsed().as_secs(),
            });
        }
        if interrupt::requested() {
            return Err(PublishError::Interrupted(Interrupted));
        }
        let delay_now = delay.min(timeout.saturating_sub(started.elapsed()));
        eprintln!(
            "imgforge: {}: {image_id} is {state}, waited {} s of at most {} s; next check in {} s",
            clients.region,
            started.elapsed().as_secs(),
            timeout.as_secs(),
            delay_now.as_secs()
        );
        tokio::time::sleep(delay_now).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_derived_and_fits() {
        let a = client_token("ami-1", "eu-west-1", "n");
        assert_eq!(a, client_token("ami-1", "eu-west-1", "n"));
        assert_ne!(a, client_token("ami-1", "eu-west-2", "n"));
        assert_ne!(a, client_token("ami-2", "eu-west-1", "n"));
        assert_ne!(a, client_token("ami-1", "eu-west-1", "m"));
        assert_eq!(a.len(), 64);
    }
}
