//! Tags in each region: the family, image digest and name tags (which `ami prune` and the
//! SSM family check read) on the AMI and its snapshots, `--tag` on copies
//! (CopyImageTags is asked for, but tagging again costs nothing and does not
//! depend on it), `--snapshot-tag` on every snapshot.

use aws_sdk_ec2::types::Tag;

use super::copy::RegionImage;
use super::{PublishError, PublishPlan};
use crate::aws::ami::digest::IMAGE_SHA256_TAG;
use crate::aws::ami::names::{AMI_NAME_TAG, FAMILY_TAG};
use crate::aws::client::Clients;
use crate::aws::retry::with_retries;

pub async fn apply(
    clients: &Clients,
    image: &RegionImage,
    snapshot_ids: &[String],
    family: &str,
    plan: &PublishPlan,
    regions_tag: (String, String),
) -> Result<(), PublishError> {
    let family_tag = (FAMILY_TAG.to_string(), family.to_string());
    let mut identity = vec![family_tag];
    if let Some(sha256) = &plan.image_sha256 {
        identity.push((IMAGE_SHA256_TAG.to_string(), sha256.clone()));
    }
    identity.extend(plan.identity_tags.iter().cloned());
    let info = super::list::by_id(clients, &image.image_id).await?;
    let (key, regions) = regions_tag;
    // A rerun publishing to fewer regions must not forget the earlier copies.
    let known = info.as_ref().and_then(|i| i.tags.get(&key)).cloned();
    let mut image_tags = identity.clone();
    image_tags.push((key, merge_regions(known.as_deref(), &regions)));
    if image.copied || image.origin == "reused" {
        image_tags.extend(plan.tags.iter().cloned());
    }
    create_tags(clients, std::slice::from_ref(&image.image_id), &image_tags).await?;
    if !snapshot_ids.is_empty() {
        let name = info.map(|i| i.name).unwrap_or_default();
        let mut snapshot_tags = plan.tags.clone();
        snapshot_tags.extend(plan.snapshot_tags.iter().cloned());
        snapshot_tags.extend(identity);
        snapshot_tags.push((AMI_NAME_TAG.to_string(), name));
        create_tags(clients, snapshot_ids, &snapshot_tags).await?;
    }
    Ok(())
}

/// Two comma-separated region lists as one, sorted, without repeats.
pub fn merge_regions(known: Option<&str>, new: &str) -> String {
    let mut all: Vec<&str> = known
        .unwrap_or_default()
        .split(',')
        .chain(new.split(','))
        .filter(|r| !r.is_empty())
        .collect();
    all.sort();
    all.dedup();
    all.join(",")
}

pub async fn create_tags(
    clients: &Clients,
    resources: &[String],
    tags: &[(String, String)],
) -> Result<(), PublishError> {
    if tags.is_empty() {
        return Ok(());
    }
    let tags: Vec<Tag> = tags
        .iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect();
    with_retries(&clients.retry, "CreateTags", "CreateTags", || {
        clients
            .ec2
            .create_tags()
            .set_resources(Some(resources.to_vec()))
            .set_tags(Some(tags.clone()))
            .send()
    })
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_merge() {
        assert_eq!(
            merge_regions(None, "b,a"),
            "b,a".split(',').rev().collect::<Vec<_>>().join(",")
        );
        assert_eq!(merge_regions(Some("c,a"), "a,b"), "a,b,c");
    }
}
