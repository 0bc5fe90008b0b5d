//! KMS keys for encrypted snapshots and copies, resolved before anything is
//! written.
//!
//! EBS StartSnapshot takes only a key ARN, so an alias (`alias/images`) or a
//! key ID is resolved with KMS DescribeKey in the region it is used in. A
//! copy to another region is encrypted with that region's key
//! (`--copy-kms-key REGION=KEY`); without one it would land under the
//! region's default key (`aws/ebs`, AWS-managed), which no other account can
//! be granted. Sharing an AMI under an AWS-managed key is refused for that
//! reason; under a customer key, the grant the other account needs is named.

use std::fmt;

use aws_sdk_kms::types::KeyManagerType;

use super::ami::names::ShareTarget;
use super::client::Clients;
use super::retry::{ApiError, RetryError, with_retries};
use crate::sys::interrupt::Interrupted;

/// A key as DescribeKey reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsKey {
    /// What the user gave (alias, key ID or ARN), or `alias/aws/ebs`.
    pub given: String,
    pub arn: String,
    pub region: String,
    /// AWS-managed (`aws/ebs`): cannot be shared with another account.
    pub aws_managed: bool,
}

impl fmt::Display for KmsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.given == self.arn {
            write!(f, "{}", self.arn)
        } else {
            write!(f, "{} ({})", self.given, self.arn)
        }
    }
}

/// EBS's key when no key is named: the account's default for the region.
pub const DEFAULT_EBS_KEY: &str = "alias/aws/ebs";

#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    #[error(
        "{region}: KMS key {key:?} cannot be resolved to an ARN ({reason}); give a key ARN, key \
ID or alias (alias/NAME) that exists in {region}"
    )]
    Unknown {
        key: String,
        region: String,
        reason: String,
    },
    #[error(
        "{region}: KMS key {key:?} is {state}; EBS cannot encrypt with it (enable it, or name \
another key)"
    )]
    NotEnabled {
        key: String,
        region: String,
        state: String,
    },
    #[error(
        "cannot share an AMI encrypted with the AWS-managed key {key} in {region} with {target}: \
other accounts can never be granted use of an AWS-managed key, so they could not launch it. \
Encrypt with a customer managed key instead: --kms-key-id KEY (and --copy-kms-key REGION=KEY \
for each --copy-to region), with a key policy that grants the other account"
    )]
    SharedUnderAwsManagedKey {
        key: String,
        region: String,
        target: String,
    },
    #[error(
        "cannot make an encrypted AMI public (--share-with all) in {region}: EC2 refuses it; \
share with accounts or organizations instead"
    )]
    PublicEncrypted { region: String },
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
}

/// Resolves `key` (alias, key ID or ARN) in the clients' region.
pub async fn resolve(clients: &Clients, key: &str) -> Result<KmsKey, KmsError> {
    let region = clients.region.clone();
    let result = with_retries(&clients.retry, "DescribeKey", "DescribeKey", || {
        clients.kms.describe_key().key_id(key).send()
    })
    .await;
    let output = match result {
        Ok(output) => output,
        Err(RetryError::Interrupted(i)) => return Err(i.into()),
        // An AWS-managed alias exists before its key is first used.
        Err(RetryError::Api(_)) if key.starts_with("alias/aws/") => {
            return Ok(KmsKey {
                given: key.to_string(),
                arn: key.to_string(),
                region,
                aws_managed: true,
            });
        }
        Err(RetryError::Api(api)) => {
            return Err(KmsError::Unknown {
                key: key.to_string(),
                region,
                reason: format!("{}: {}", api.code, api.message),
            });
        }
    };
    let meta = output.key_metadata();
    let arn = meta.and_then(|m| m.arn()).unwrap_or(key).to_string();
    if let Some(state) = meta.and_then(|m| m.key_state())
        && state.as_str() != "Enabled"
    {
        return Err(KmsError::NotEnabled {
            key: key.to_string(),
            region,
            state: state.as_str().to_string(),
        });
    }
    Ok(KmsKey {
        given: key.to_string(),
        arn,
        region,
        aws_managed: meta.and_then(|m| m.key_manager()) == Some(&KeyManagerType::Aws)
            || key.starts_with("alias/aws/"),
    })
}

/// The key EBS encrypts with when none is named: the account's default for
/// the region (GetEbsDefaultKmsKeyId), `aws/ebs` when EC2 does not say.
pub async fn default_ebs_key(clients: &Clients) -> Result<KmsKey, KmsError> {
    let result = with_retries(
        &clients.retry,
        "GetEbsDefaultKmsKeyId",
        "GetEbsDefaultKmsKeyId",
        || clients.ec2.get_ebs_default_kms_key_id().send(),
    )
    .await;
    let key = match result {
        Ok(output) => output
            .kms_key_id()
            .map(str::to_string)
            .unwrap_or_else(|| DEFAULT_EBS_KEY.to_string()),
        Err(RetryError::Interrupted(i)) => return Err(i.into()),
        Err(RetryError::Api(api)) => {
            log::info!(
                "{}: GetEbsDefaultKmsKeyId: {}; assuming EBS's default key {DEFAULT_EBS_KEY}",
                clients.region,
                api.code
            );
            DEFAULT_EBS_KEY.to_string()
        }
    };
    resolve(clients, &key).await
}

/// Whether an AMI under `key` can be shared with `targets`; for a customer
/// key, the note naming the grant each other account needs.
pub fn check_share(key: &KmsKey, targets: &[ShareTarget]) -> Result<Option<String>, KmsError> {
    if targets.is_empty() {
        return Ok(None);
    }
    if targets.contains(&ShareTarget::All) {
        return Err(KmsError::PublicEncrypted {
            region: key.region.clone(),
        });
    }
    let names: Vec<String> = targets
        .iter()
        .map(|t| match t {
            ShareTarget::Account(id) => id.clone(),
            ShareTarget::Organization(arn) | ShareTarget::OrganizationalUnit(arn) => arn.clone(),
            ShareTarget::All => "all".into(),
        })
        .collect();
    if key.aws_managed {
        return Err(KmsError::SharedUnderAwsManagedKey {
            key: key.to_string(),
            region: key.region.clone(),
            target: names.join(", "),
        });
    }
    Ok(Some(format!(
        "{}: the AMI is encrypted with {}; for {} to launch or copy it, the key policy must allow \
them kms:Decrypt, kms:DescribeKey, kms:CreateGrant, kms:ReEncrypt* and kms:GenerateDataKey* on \
{} (Principal: {{\"AWS\": \"arn:aws:iam::ACCOUNT:root\"}}, or aws:PrincipalOrgID for an \
organization)",
        key.region,
        key,
        names.join(", "),
        key.arn
    )))
}

/// `REGION=KEY` (`--copy-kms-key`).
pub fn parse_region_key(text: &str) -> Result<(String, String), String> {
    let (region, key) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not REGION=KEY (e.g. eu-west-1=alias/images)"))?;
    let region = super::ami::names::parse_region(region)?;
    if key.is_empty() {
        return Err(format!(
            "{text:?}: the key is empty (e.g. eu-west-1=alias/images)"
        ));
    }
    Ok((region, key.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(aws_managed: bool) -> KmsKey {
        KmsKey {
            given: "alias/images".into(),
            arn: "arn:aws:kms:eu-west-1:123456789012:key/k".into(),
            region: "eu-west-1".into(),
            aws_managed,
        }
    }

    #[test]
    fn sharing_checks() {
        let account = [ShareTarget::Account("210987654321".into())];
        assert_eq!(check_share(&key(true), &[]).unwrap(), None);
        let refused = check_share(&key(true), &account).unwrap_err().to_string();
        assert!(refused.contains("AWS-managed") && refused.contains("--kms-key-id"));
        let note = check_share(&key(false), &account).unwrap().unwrap();
        assert!(note.contains("210987654321") && note.contains("kms:CreateGrant"));
        assert!(matches!(
            check_share(&key(false), &[ShareTarget::All]),
            Err(KmsError::PublicEncrypted { .. })
        ));
    }

    #[test]
    fn region_keys_parse() {
        assert_eq!(
            parse_region_key("eu-west-1=alias/x"),
            Ok(("eu-west-1".into(), "alias/x".into()))
        );
        assert!(parse_region_key("eu-west-1").is_err());
        assert!(parse_region_key("mars=alias/x").is_err());
        assert!(parse_region_key("eu-west-1=").is_err());
    }
}
