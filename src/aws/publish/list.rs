//! What EC2 says about AMIs: one [`ImageInfo`] per AMI, by id, by name or
//! by name prefix and tags (`imgforge ami list`, and the other jobs).

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{Filter, Image};
use serde::Serialize;

use super::PublishError;
use crate::aws::client::Clients;
use crate::aws::retry::{RetryError, with_retries};

/// One AMI in one region.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ImageInfo {
    pub region: String,
    pub image_id: String,
    pub name: String,
    pub state: String,
    pub creation_date: Option<String>,
    pub deprecation_time: Option<String>,
    pub snapshot_ids: Vec<String>,
    pub tags: BTreeMap<String, String>,
    /// EC2's DeregistrationProtection (`disabled`, `enabled-with-cooldown`,
    /// `disabled-until ...`), when it says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deregistration_protection: Option<String>,
}

impl ImageInfo {
    fn from_ec2(region: &str, image: &Image) -> Option<Self> {
        Some(Self {
            region: region.to_string(),
            image_id: image.image_id()?.to_string(),
            name: image.name().unwrap_or_default().to_string(),
            state: image
                .state()
                .map(|s| s.as_str().to_string())
                .unwrap_or_else(|| "unknown".into()),
            creation_date: image.creation_date().map(str::to_string),
            deprecation_time: image.deprecation_time().map(str::to_string),
            snapshot_ids: image
                .block_device_mappings()
                .iter()
                .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()).map(str::to_string))
                .collect(),
            tags: image
                .tags()
                .iter()
                .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
                .collect(),
            deregistration_protection: image.deregistration_protection().map(str::to_string),
        })
    }
}

/// The AMI with this id, or None when EC2 does not know it.
pub async fn by_id(clients: &Clients, image_id: &str) -> Result<Option<ImageInfo>, PublishError> {
    let result = with_retries(&clients.retry, "DescribeImages", "DescribeImages", || {
        clients.ec2.describe_images().image_ids(image_id).send()
    })
    .await;
    let output = match result {
        Ok(output) => output,
        Err(RetryError::Api(api)) if api.is_not_found() || api.code.contains("Malformed") => {
            return Ok(None);
        }
        Err(err) => return Err(err.into()),
    };
    Ok(output
        .images()
        .iter()
        .filter_map(|i| ImageInfo::from_ec2(&clients.region, i))
        .find(|i| i.image_id == image_id))
}

/// This account's AMIs whose name starts with `prefix` (exactly `prefix`
/// with `exact`) and that carry every tag in `tags`, oldest first.
pub async fn owned(
    clients: &Clients,
    prefix: &str,
    exact: bool,
    tags: &[(String, String)],
) -> Result<Vec<ImageInfo>, PublishError> {
    let pattern = if exact {
        prefix.to_string()
    } else {
        format!("{prefix}*")
    };
    let mut filters = vec![Filter::builder().name("name").values(pattern).build()];
    for (key, value) in tags {
        filters.push(
            Filter::builder()
                .name(format!("tag:{key}"))
                .values(value)
                .build(),
        );
    }
    let mut images = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let output = with_retries(&clients.retry, "DescribeImages", "DescribeImages", || {
            clients
                .ec2
                .describe_images()
                .owners("self")
                .set_filters(Some(filters.clone()))
                .set_next_token(next.clone())
                .send()
        })
        .await?;
        images.extend(
            output
                .images()
                .iter()
                .filter_map(|i| ImageInfo::from_ec2(&clients.region, i)),
        );
        next = output.next_token().map(str::to_string);
        if next.is_none() {
            break;
        }
    }
    // A filter the server ignores must not widen the match.
    images.retain(|i| {
        (if exact {
            i.name == prefix
        } else {
            i.name.starts_with(prefix)
        }) && tags
            .iter()
            .all(|(k, v)| i.tags.get(k).is_some_and(|t| t == v))
    });
    images.sort_by(|a, b| {
        (a.creation_date.as_deref(), &a.image_id).cmp(&(b.creation_date.as_deref(), &b.image_id))
    });
    Ok(images)
}

/// The tags of a snapshot (empty when it is gone).
pub async fn snapshot_tags(
    clients: &Clients,
    snapshot_id: &str,
) -> Result<BTreeMap<String, String>, PublishError> {
    let snapshot = crate::aws::ebs::snapshot::describe(clients, snapshot_id).await?;
    Ok(snapshot
        .iter()
        .flat_map(|s| s.tags())
        .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
        .collect())
}
