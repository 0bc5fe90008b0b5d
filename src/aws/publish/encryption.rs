//! The keys of an encrypted upload and its copies, settled before anything
//! is written: the source key resolved to its ARN (StartSnapshot takes only
//! an ARN), each `--copy-kms-key` resolved in its own region (CopyImage
//! Encrypted + KmsKeyId), and, when the AMI is shared, a check that no
//! region's key is AWS-managed (other accounts can never use it) plus the
//! grant a customer key's policy must give them.

use std::collections::BTreeMap;

use super::PublishPlan;
use crate::aws::client::Clients;
use crate::aws::kms::{self, KmsError, KmsKey};

/// What the encryption preflight settled.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    /// The source key's ARN, when one was named (else EBS's default).
    pub source_arn: Option<String>,
    /// Each copy region's key ARN (`--copy-kms-key`).
    pub copy_arns: BTreeMap<String, String>,
    /// For each region under a customer key shared with others: the grant
    /// the other accounts need (printed, and in the log).
    pub share_notes: Vec<String>,
}

/// Resolves the keys; refuses sharing an AMI that would be encrypted with
/// an AWS-managed key in any region.
pub async fn preflight(
    clients: &Clients,
    encrypted: bool,
    kms_key_id: Option<&str>,
    plan: &PublishPlan,
) -> Result<Keys, KmsError> {
    let mut keys = Keys::default();
    let source = match (encrypted, kms_key_id) {
        (_, Some(key)) => Some(kms::resolve(clients, key).await?),
        (true, None) if !plan.share_with.is_empty() => Some(kms::default_ebs_key(clients).await?),
        _ => None,
    };
    if let (Some(key), Some(_)) = (&source, kms_key_id) {
        keys.source_arn = Some(key.arn.clone());
    }
    let mut region_keys: Vec<KmsKey> = source.into_iter().collect();
    for region in plan.copy_to.iter().filter(|r| **r != clients.region) {
        let regional = clients.for_region(region);
        let named = plan
            .copy_kms_keys
            .iter()
            .find(|(r, _)| r == region)
            .map(|(_, key)| key);
        let key = match named {
            Some(key) => {
                let key = kms::resolve(&regional, key).await?;
                keys.copy_arns.insert(region.clone(), key.arn.clone());
                key
            }
            None if encrypted && !plan.share_with.is_empty() => {
                kms::default_ebs_key(&regional).await?
            }
            None if encrypted => {
                eprintln!(
                    "imgforge: warning: the copy to {region} is encrypted with that region's \
default EBS key (aws/ebs unless the account changed it); pass --copy-kms-key {region}=KEY to \
choose it"
                );
                continue;
            }
            None => continue,
        };
        region_keys.push(key);
    }
    for key in &region_keys {
        if let Some(note) = kms::check_share(key, &plan.share_with)? {
            keys.share_notes.push(note);
        }
    }
    Ok(keys)
}
