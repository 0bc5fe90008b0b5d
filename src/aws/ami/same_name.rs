//! An AMI name never hides other content: before any snapshot is started,
//! the AMI of the name in the source region and in every copy region is
//! compared by the image digest it is tagged with
//! ([`super::digest::IMAGE_SHA256_TAG`]). The same image is reused; another
//! image (or an AMI without the tag) is an error naming both digests,
//! unless `--replace`.

use super::register::{self, ExistingImage, RegisterError};
use crate::aws::client::Clients;

/// What the source region holds under the name.
#[derive(Debug, Clone)]
pub enum SourceVerdict {
    /// No AMI of the name: register one.
    Absent,
    /// The same image: reuse it (nothing to upload).
    Reuse(ExistingImage),
    /// Another image, to replace once the new snapshot is written (--replace).
    Replace(ExistingImage),
}

/// An AMI of the name holds another image (and `--replace` was not given).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "AMI {name:?} in {region} ({image_id}) {holds}, not this image (sha256 {ours}); nothing was \
uploaded. Give another --name, or pass --replace to write the new snapshot, then deregister \
{image_id} and delete its snapshots, then register the new AMI under the name"
)]
pub struct NameTaken {
    pub name: String,
    pub region: String,
    pub image_id: String,
    /// What the existing AMI's tag says it holds (None: no tag).
    pub theirs: Option<String>,
    pub ours: String,
    holds: String,
}

impl NameTaken {
    pub fn new(
        name: &str,
        region: &str,
        existing: &ExistingImage,
        theirs: Option<&str>,
        ours: &str,
    ) -> Self {
        let holds = match theirs {
            Some(sha) => format!("holds the image with sha256 {sha}"),
            None => format!(
                "carries no {} tag (made by another tool or an older imgforge), so what it \
holds is unknown",
                super::digest::IMAGE_SHA256_TAG
            ),
        };
        Self {
            name: name.to_string(),
            region: region.to_string(),
            image_id: existing.image_id.clone(),
            theirs: theirs.map(str::to_string),
            ours: ours.to_string(),
            holds,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SameNameError {
    #[error(transparent)]
    Register(#[from] RegisterError),
    #[error(transparent)]
    Taken(Box<NameTaken>),
}

impl From<NameTaken> for SameNameError {
    fn from(taken: NameTaken) -> Self {
        Self::Taken(Box::new(taken))
    }
}

/// Whether `existing` holds the image of digest `ours`.
pub fn same_image(existing: &ExistingImage, ours: &str) -> bool {
    existing
        .image_sha256
        .as_deref()
        .is_some_and(|theirs| theirs.eq_ignore_ascii_case(ours))
}

/// Looks the name up in the source region and each copy region, before
/// anything is written. A copy region holding another image under the name
/// fails here too (without `replace`): publishing would otherwise leave it
/// serving the old image under the new image's name.
pub async fn check(
    clients: &Clients,
    copy_to: &[String],
    name: &str,
    ours: &str,
    replace: bool,
) -> Result<SourceVerdict, SameNameError> {
    for region in copy_to.iter().filter(|r| **r != clients.region) {
        let regional = clients.for_region(region);
        if let Some(existing) = register::find_by_name(&regional, name).await?
            && !same_image(&existing, ours)
            && !replace
        {
            let theirs = existing.image_sha256.clone();
            return Err(NameTaken::new(name, region, &existing, theirs.as_deref(), ours).into());
        }
    }
    Ok(match register::find_by_name(clients, name).await? {
        None => SourceVerdict::Absent,
        Some(existing) if same_image(&existing, ours) => SourceVerdict::Reuse(existing),
        Some(existing) if replace => {
            log::warn!(
                "AMI {name:?} ({}) holds another image; it is replaced once the new snapshot is \
complete",
                existing.image_id
            );
            SourceVerdict::Replace(existing)
        }
        Some(existing) => {
            let theirs = existing.image_sha256.clone();
            return Err(
                NameTaken::new(name, &clients.region, &existing, theirs.as_deref(), ours).into(),
            );
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn existing(sha: Option<&str>) -> ExistingImage {
        ExistingImage {
            image_id: "ami-1".into(),
            snapshot_ids: vec!["snap-1".into()],
            image_sha256: sha.map(str::to_string),
        }
    }

    #[test]
    fn only_the_same_digest_is_the_same_image() {
        assert!(same_image(&existing(Some("ab")), "AB"));
        assert!(!same_image(&existing(Some("ab")), "cd"));
        assert!(!same_image(&existing(None), "ab"), "no tag: unknown");
        let err = NameTaken::new("n", "us-east-1", &existing(Some("ab")), Some("ab"), "cd");
        let text = err.to_string();
        for needle in ["ami-1", "sha256 ab", "sha256 cd", "--replace", "us-east-1"] {
            assert!(text.contains(needle), "{needle}: {text}");
        }
        let text = NameTaken::new("n", "r", &existing(None), None, "cd").to_string();
        assert!(text.contains("no imgforge:image-sha256 tag"), "{text}");
    }
}
