//! `ami prune`: the AMIs of a name prefix beyond the newest N (and older
//! than a bound), per region; a dry run unless asked to delete. Snapshots
//! are deleted only when imgforge tagged them ([`AMI_NAME_TAG`]) and no AMI
//! that stays uses them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;

use super::PublishError;
use super::list::{self, ImageInfo};
use crate::aws::client::Clients;
use crate::aws::names::{AMI_NAME_TAG, parse_rfc3339};
use crate::aws::retry::with_retries;
use crate::aws::snapshot;

#[derive(Debug, Clone)]
pub struct PruneRequest {
    pub name_prefix: String,
    pub keep: usize,
    pub older_than: Option<Duration>,
    pub tags: Vec<(String, String)>,
    /// Delete; without it, only say what would go.
    pub execute: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PrunedImage {
    #[serde(flatten)]
    pub image: ImageInfo,
    /// Snapshots deleted (or that would be, in a dry run).
    pub delete_snapshots: Vec<String>,
    /// Snapshots kept, with the reason.
    pub keep_snapshots: Vec<(String, String)>,
    /// Done (false in a dry run).
    pub deregistered: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RegionPrune {
    pub region: String,
    pub kept: Vec<ImageInfo>,
    pub pruned: Vec<PrunedImage>,
}

fn is_older(image: &ImageInfo, bound: Option<Duration>, now: i64) -> bool {
    let Some(bound) = bound else { return true };
    match image.creation_date.as_deref().map(parse_rfc3339) {
        Some(Ok(created)) => created < now - bound.as_secs() as i64,
        // Without a creation time the age is unknown: keep it.
        _ => false,
    }
}

/// One region: decide, then (with `execute`) deregister and delete.
pub async fn prune_region(
    clients: &Clients,
    req: &PruneRequest,
    now: i64,
) -> Result<RegionPrune, PublishError> {
    let matching = list::owned(clients, &req.name_prefix, false, &req.tags).await?;
    let all = list::owned(clients, "", false, &[]).await?;
    // Newest first.
    let mut ordered = matching.clone();
    ordered.reverse();
    let (kept, candidates): (Vec<_>, Vec<_>) = ordered
        .into_iter()
        .enumerate()
        .partition(|(i, image)| *i < req.keep || !is_older(image, req.older_than, now));
    let kept: Vec<ImageInfo> = kept.into_iter().map(|(_, i)| i).collect();
    let going: BTreeSet<String> = candidates.iter().map(|(_, i)| i.image_id.clone()).collect();
    let mut users: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for image in &all {
        for snap in &image.snapshot_ids {
            users.entry(snap).or_default().push(&image.image_id);
        }
    }
    let mut pruned = Vec::new();
    for (_, image) in candidates {
        let mut delete = Vec::new();
        let mut keep = Vec::new();
        for snap in &image.snapshot_ids {
            let staying: Vec<&str> = users
                .get(snap.as_str())
                .map(|u| {
                    u.iter()
                        .copied()
                        .filter(|id| !going.contains(*id))
                        .collect()
                })
                .unwrap_or_default();
            if !staying.is_empty() {
                keep.push((
                    snap.clone(),
                    format!("still used by {}", staying.join(", ")),
                ));
                continue;
            }
            let tags = list::snapshot_tags(clients, snap).await?;
            if tags.contains_key(AMI_NAME_TAG) {
                delete.push(snap.clone());
            } else {
                keep.push((
                    snap.clone(),
                    format!("not tagged {AMI_NAME_TAG} (not made by imgforge)"),
                ));
            }
        }
        pruned.push(PrunedImage {
            image,
            delete_snapshots: delete,
            keep_snapshots: keep,
            deregistered: false,
        });
    }
    if req.execute {
        for item in &mut pruned {
            let id = item.image.image_id.clone();
            with_retries(
                &clients.retry,
                "DeregisterImage",
                format_args!("DeregisterImage {id}"),
                || clients.ec2.deregister_image().image_id(&id).send(),
            )
            .await?;
            item.deregistered = true;
            for snap in &item.delete_snapshots {
                snapshot::delete(clients, snap)
                    .await
                    .map_err(|e| PublishError::Refused(format!("{}: {e}", clients.region)))?;
            }
        }
    }
    Ok(RegionPrune {
        region: clients.region.clone(),
        kept,
        pruned,
    })
}
