//! Tags in each region: the family and name tags (which `ami prune` and the
//! SSM family check read) on the AMI and its snapshots, `--tag` on copies
//! (CopyImageTags is asked for, but tagging again costs nothing and does not
//! depend on it), `--snapshot-tag` on every snapshot.

use aws_sdk_ec2::types::Tag;

use super::copy::RegionImage;
use super::{PublishError, PublishPlan};
use crate::aws::ami::names::{AMI_NAME_TAG, FAMILY_TAG};
use crate::aws::client::Clients;
use crate::aws::retry::with_retries;

pub async fn apply(
    clients: &Clients,
    image: &RegionImage,
    snapshot_ids: &[String],
    family: &str,
    plan: &PublishPlan,
) -> Result<(), PublishError> {
    let family_tag = (FAMILY_TAG.to_string(), family.to_string());
    let mut image_tags = vec![family_tag.clone()];
    if image.copied || image.origin == "reused" {
        image_tags.extend(plan.tags.iter().cloned());
    }
    create_tags(clients, std::slice::from_ref(&image.image_id), &image_tags).await?;
    if !snapshot_ids.is_empty() {
        let name = name_of(clients, &image.image_id).await?;
        let mut snapshot_tags = plan.tags.clone();
        snapshot_tags.extend(plan.snapshot_tags.iter().cloned());
        snapshot_tags.push(family_tag);
        snapshot_tags.push((AMI_NAME_TAG.to_string(), name));
        create_tags(clients, snapshot_ids, &snapshot_tags).await?;
    }
    Ok(())
}

async fn name_of(clients: &Clients, image_id: &str) -> Result<String, PublishError> {
    Ok(super::list::by_id(clients, image_id)
        .await?
        .map(|i| i.name)
        .unwrap_or_default())
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
