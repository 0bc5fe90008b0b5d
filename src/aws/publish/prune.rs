//! `ami prune`: the AMIs of a family (its `imgforge:family` tag) or a name
//! prefix beyond the newest N (and older than a bound), per region; a dry
//! run unless asked to delete. An AMI that production may launch from is
//! never deleted ([`super::in_use`]: SSM parameters, deregistration
//! protection, launch templates) and does not count towards N. Snapshots are
//! deleted only when imgforge tagged them ([`AMI_NAME_TAG`]) and no AMI that
//! stays uses them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;

use super::PublishError;
use super::in_use::{self, InUse};
use super::list::{self, ImageInfo};
use crate::aws::ami::names::{AMI_NAME_TAG, FAMILY_TAG, parse_rfc3339};
use crate::aws::client::Clients;
use crate::aws::ebs::snapshot;
use crate::aws::retry::with_retries;

#[derive(Debug, Clone)]
pub struct PruneRequest {
    /// "" with a family: every name.
    pub name_prefix: String,
    /// Only AMIs tagged `imgforge:family` with this.
    pub family: Option<String>,
    /// At least 1 (the command line refuses 0).
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
    /// Kept whatever --keep says: something launches from them.
    pub in_use: Vec<InUseImage>,
    pub pruned: Vec<PrunedImage>,
    /// Checks the API did not answer (the prune went on without them).
    pub unchecked: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InUseImage {
    #[serde(flatten)]
    pub image: ImageInfo,
    pub reason: String,
}

fn is_older(image: &ImageInfo, bound: Option<Duration>, now: i64) -> bool {
    let Some(bound) = bound else { return true };
    match image.creation_date.as_deref().map(parse_rfc3339) {
        Some(Ok(created)) => created < now - bound.as_secs() as i64,
        // Without a creation time the age is unknown: keep it.
        _ => false,
    }
}

/// A snapshot of an AMI that goes, and why it must stay (None: it may go
/// if imgforge made it).
pub type SnapshotFate = (String, Option<String>);

/// What to do in one region, before the snapshots' tags are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Newest first.
    pub kept: Vec<ImageInfo>,
    /// In use (never pruned, not counted in `keep`), with the reason.
    pub in_use: Vec<(ImageInfo, String)>,
    /// Each AMI to deregister, with each of its snapshots and, when the
    /// snapshot must stay whatever its tags, why.
    pub going: Vec<(ImageInfo, Vec<SnapshotFate>)>,
}

/// Keeps what is in use, the newest `keep` of the rest of `matching`
/// (oldest first) and anything not older than the bound; a snapshot that an
/// AMI outside the pruned set (from `all`, every AMI of the account in the
/// region) uses is kept.
pub fn decide(
    matching: &[ImageInfo],
    all: &[ImageInfo],
    keep: usize,
    older_than: Option<Duration>,
    now: i64,
    in_use: &InUse,
) -> Decision {
    let (used, candidates): (Vec<ImageInfo>, Vec<ImageInfo>) = matching
        .iter()
        .cloned()
        .partition(|i| in_use.reason(&i.image_id).is_some());
    let in_use: Vec<(ImageInfo, String)> = used
        .into_iter()
        .rev()
        .map(|i| {
            let reason = in_use.reason(&i.image_id).unwrap_or_default();
            (i, reason)
        })
        .collect();
    let (kept, going): (Vec<_>, Vec<_>) = candidates
        .into_iter()
        .rev()
        .enumerate()
        .partition(|(i, image)| *i < keep || !is_older(image, older_than, now));
    let kept: Vec<ImageInfo> = kept.into_iter().map(|(_, i)| i).collect();
    let staying = kept.iter().chain(in_use.iter().map(|(i, _)| i));
    let going_ids: BTreeSet<&str> = going.iter().map(|(_, i)| i.image_id.as_str()).collect();
    let mut users: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for image in all.iter().chain(staying) {
        for snap in &image.snapshot_ids {
            let list = users.entry(snap).or_default();
            if !list.contains(&image.image_id.as_str()) {
                list.push(&image.image_id);
            }
        }
    }
    let going = going
        .iter()
        .map(|(_, image)| {
            let snaps = image
                .snapshot_ids
                .iter()
                .map(|snap| {
                    let staying: Vec<&str> = users
                        .get(snap.as_str())
                        .map(|u| {
                            u.iter()
                                .copied()
                                .filter(|id| !going_ids.contains(id))
                                .collect()
                        })
                        .unwrap_or_default();
                    let reason = (!staying.is_empty())
                        .then(|| format!("still used by {}", staying.join(", ")));
                    (snap.clone(), reason)
                })
                .collect();
            (image.clone(), snaps)
        })
        .collect();
    Decision {
        kept,
        in_use,
        going,
    }
}

/// One region: decide, then (with `execute`) deregister and delete.
pub async fn prune_region(
    clients: &Clients,
    req: &PruneRequest,
    now: i64,
) -> Result<RegionPrune, PublishError> {
    let mut tags = req.tags.clone();
    if let Some(family) = &req.family {
        tags.push((FAMILY_TAG.to_string(), family.clone()));
    }
    let matching = list::owned(clients, &req.name_prefix, false, &tags).await?;
    let all = list::owned(clients, "", false, &[]).await?;
    let used = in_use::find(clients, &matching).await?;
    let decision = decide(&matching, &all, req.keep, req.older_than, now, &used);
    let mut pruned = Vec::new();
    for (image, snaps) in decision.going {
        let mut delete = Vec::new();
        let mut keep = Vec::new();
        for (snap, reason) in snaps {
            if let Some(reason) = reason {
                keep.push((snap, reason));
            } else if list::snapshot_tags(clients, &snap)
                .await?
                .contains_key(AMI_NAME_TAG)
            {
                delete.push(snap);
            } else {
                keep.push((
                    snap,
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
    let kept = decision.kept;
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
        in_use: decision
            .in_use
            .into_iter()
            .map(|(image, reason)| InUseImage { image, reason })
            .collect(),
        pruned,
        unchecked: used.unchecked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::ami::names::{format_rfc3339, parse_rfc3339};

    fn image(id: &str, created: &str, snaps: &[&str]) -> ImageInfo {
        ImageInfo {
            region: "r".into(),
            image_id: id.into(),
            name: format!("fleet-{id}"),
            state: "available".into(),
            creation_date: Some(created.into()),
            deprecation_time: None,
            snapshot_ids: snaps.iter().map(|s| s.to_string()).collect(),
            tags: Default::default(),
            deregistration_protection: None,
        }
    }

    #[test]
    fn keeps_the_newest_and_snapshots_still_in_use() {
        let v1 = image(
            "ami-1",
            "2026-01-01T00:00:00.000Z",
            &["snap-1", "snap-shared"],
        );
        let v2 = image(
            "ami-2",
            "2026-02-01T00:00:00.000Z",
            &["snap-2", "snap-both"],
        );
        let v3 = image(
            "ami-3",
            "2026-03-01T00:00:00.000Z",
            &["snap-3", "snap-shared"],
        );
        let v4 = image("ami-4", "2026-04-01T00:00:00.000Z", &["snap-4"]);
        // Another family's AMI registered from v2's snapshot.
        let other = image("ami-9", "2026-01-15T00:00:00.000Z", &["snap-both"]);
        let matching = vec![v1.clone(), v2.clone(), v3.clone(), v4.clone()];
        let mut all = matching.clone();
        all.push(other);
        let now = parse_rfc3339("2026-05-01T00:00:00Z").unwrap();

        let d = decide(&matching, &all, 2, None, now, &InUse::default());
        let kept: Vec<&str> = d.kept.iter().map(|i| i.image_id.as_str()).collect();
        assert_eq!(kept, ["ami-4", "ami-3"], "the newest two, newest first");
        let going: Vec<&str> = d.going.iter().map(|(i, _)| i.image_id.as_str()).collect();
        assert_eq!(going, ["ami-2", "ami-1"]);
        let snaps = |id: &str| {
            d.going
                .iter()
                .find(|(i, _)| i.image_id == id)
                .unwrap()
                .1
                .clone()
        };
        assert_eq!(snaps("ami-1")[0], ("snap-1".into(), None));
        assert_eq!(
            snaps("ami-1")[1],
            ("snap-shared".into(), Some("still used by ami-3".into())),
            "a kept AMI uses it"
        );
        assert_eq!(
            snaps("ami-2")[1],
            ("snap-both".into(), Some("still used by ami-9".into())),
            "an AMI outside the prefix uses it"
        );

        // --older-than: only what is older than the bound goes.
        let bound = Duration::from_secs(100 * 86_400);
        let d = decide(&matching, &all, 1, Some(bound), now, &InUse::default());
        let going: Vec<&str> = d.going.iter().map(|(i, _)| i.image_id.as_str()).collect();
        assert_eq!(
            going,
            ["ami-1"],
            "created {}",
            format_rfc3339(now - bound.as_secs() as i64)
        );
        // Both users of a snapshot go: it goes too.
        let d = decide(&matching, &all, 1, None, now, &InUse::default());
        let shared = d
            .going
            .iter()
            .find(|(i, _)| i.image_id == "ami-1")
            .unwrap()
            .1[1]
            .clone();
        assert_eq!(shared, ("snap-shared".into(), None));
    }

    #[test]
    fn an_image_in_use_stays_and_does_not_count_towards_keep() {
        let images: Vec<ImageInfo> = (1..=5)
            .map(|n| {
                image(
                    &format!("ami-{n}"),
                    &format!("2026-0{n}-01T00:00:00.000Z"),
                    &[&format!("snap-{n}")],
                )
            })
            .collect();
        let mut in_use = InUse::default();
        in_use
            .reasons
            .insert("ami-1".into(), vec!["SSM parameter /p names it".into()]);
        let now = parse_rfc3339("2026-12-01T00:00:00Z").unwrap();
        let d = decide(&images, &images, 2, None, now, &in_use);
        let ids = |list: Vec<&ImageInfo>| -> Vec<String> {
            list.iter().map(|i| i.image_id.clone()).collect()
        };
        assert_eq!(ids(d.kept.iter().collect()), ["ami-5", "ami-4"]);
        assert_eq!(ids(d.in_use.iter().map(|(i, _)| i).collect()), ["ami-1"]);
        assert_eq!(
            ids(d.going.iter().map(|(i, _)| i).collect()),
            ["ami-3", "ami-2"]
        );
    }
}
