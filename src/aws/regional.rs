//! `--copy-method upload`: instead of CopyImage, the image is written
//! straight into each copy region's own snapshot through the EBS direct
//! APIs and registered there, all regions at once, each with its own
//! journal (IMAGE.upload-journal.json.REGION) and its own delta parent (the
//! digest store is per region). Publishing then finds the AMI of the name in
//! each region, holding the same image, and completes it as for a copy.

use std::path::PathBuf;

use super::ebs::journal;
use super::request::UploadRequest;

/// One request per copy region (the source region excluded), each an
/// upload of its own with nothing to publish.
pub fn requests(req: &UploadRequest, source_region: &str) -> Vec<(String, UploadRequest)> {
    let mut out: Vec<(String, UploadRequest)> = Vec::new();
    for region in &req.publish.copy_to {
        if region == source_region || out.iter().any(|(r, _)| r == region) {
            continue;
        }
        let base = req
            .journal
            .clone()
            .unwrap_or_else(|| journal::default_path(&req.image));
        let mut regional = req.clone();
        regional.journal = Some(PathBuf::from(format!("{}.{region}", base.display())));
        regional.connection.region = Some(region.clone());
        // That region's key (--copy-kms-key), else EBS's default there.
        regional.kms_key_id = req.publish.copy_key_arns.get(region).cloned();
        regional.encrypted = req.encrypted || regional.kms_key_id.is_some();
        regional.publish.copy_to = Vec::new();
        out.push((region.clone(), regional));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::client::Connection;
    use crate::aws::publish::PublishPlan;

    #[test]
    fn one_request_per_copy_region() {
        let mut publish = PublishPlan {
            copy_to: vec!["eu-west-1".into(), "us-east-1".into(), "eu-west-1".into()],
            ..Default::default()
        };
        publish
            .copy_key_arns
            .insert("eu-west-1".into(), "arn:k".into());
        let req = UploadRequest {
            image: "/i/a.raw".into(),
            connection: Connection::default(),
            name: None,
            description: None,
            tags: vec![],
            snapshot_tags: vec![],
            volume_size: None,
            workers: 1,
            boot_mode: None,
            architecture: None,
            tpm: false,
            uefi_data: None,
            encrypted: false,
            kms_key_id: None,
            no_register: false,
            force_deregister: false,
            keep_snapshot: false,
            output_dir: ".".into(),
            journal: None,
            parent: None,
            state_dir: None,
            snapshot_timeout: std::time::Duration::from_secs(600),
            wait_timeout: std::time::Duration::from_secs(600),
            storage: Default::default(),
            instance_types: vec![],
            publish,
        };
        let regional = requests(&req, "us-east-1");
        assert_eq!(regional.len(), 1);
        let (region, r) = &regional[0];
        assert_eq!(region, "eu-west-1");
        assert_eq!(
            r.journal.as_deref(),
            Some(std::path::Path::new(
                "/i/a.raw.upload-journal.json.eu-west-1"
            ))
        );
        assert_eq!(r.kms_key_id.as_deref(), Some("arn:k"));
        assert!(r.encrypted && r.publish.copy_to.is_empty());
    }
}
