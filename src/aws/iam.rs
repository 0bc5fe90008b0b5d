//! `--print-iam-policy`: the IAM policy document (least privilege) for
//! exactly what `upload` or `ami` would call with the given flags, in every
//! region it would touch, built from the request alone (no AWS call).
//!
//! Each statement is scoped to those regions (`aws:RequestedRegion`, or the
//! region field of resource ARNs). The KMS permissions that EBS and EC2 use
//! on the caller's behalf for encrypted snapshots and copies (which never
//! show on the wire) are granted only through those services
//! (`kms:ViaService`).

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::ami::names::ShareTarget;
use super::request::UploadRequest;

/// One Allow statement.
#[derive(Debug, Clone)]
struct Statement {
    sid: String,
    actions: BTreeSet<String>,
    resources: Vec<String>,
    condition: Option<Value>,
}

impl Statement {
    fn new(sid: impl Into<String>, actions: &[&str], resources: Vec<String>) -> Self {
        Self {
            sid: sid.into(),
            actions: actions.iter().map(|a| a.to_string()).collect(),
            resources,
            condition: None,
        }
    }

    fn in_regions(mut self, regions: &[String]) -> Self {
        // StringLike: a region not known offline is `*`.
        self.condition = Some(json!({"StringLike": {"aws:RequestedRegion": regions}}));
        self
    }

    fn to_json(&self) -> Value {
        let mut statement = json!({
            "Sid": self.sid,
            "Effect": "Allow",
            "Action": self.actions.iter().collect::<Vec<_>>(),
            "Resource": self.resources,
        });
        if let Some(condition) = &self.condition {
            statement["Condition"] = condition.clone();
        }
        statement
    }
}

fn document(statements: Vec<Statement>) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": statements
            .iter()
            .filter(|s| !s.actions.is_empty())
            .map(Statement::to_json)
            .collect::<Vec<_>>(),
    })
}

/// The regions an upload touches: the source region first, then the copies.
pub fn upload_regions(req: &UploadRequest, source_region: &str) -> Vec<String> {
    let mut regions = vec![source_region.to_string()];
    for region in &req.publish.copy_to {
        if !regions.contains(region) {
            regions.push(region.clone());
        }
    }
    regions
}

/// The policy for `upload` with this request; `source_region` is the
/// connection's region (`*` when it is not known without asking AWS).
pub fn for_upload(req: &UploadRequest, source_region: &str) -> Value {
    let regions = upload_regions(req, source_region);
    let copies: Vec<String> = regions[1..].to_vec();
    let plan = &req.publish;
    let mut read = vec!["ec2:DescribeImages", "ec2:DescribeSnapshots"];
    if !copies.is_empty() {
        read.push("ec2:DescribeRegions");
    }
    if !req.instance_types.is_empty() {
        read.push("ec2:DescribeInstanceTypes");
    }
    let mut write = vec!["ec2:CreateTags", "ec2:DeleteSnapshot"];
    if !req.no_register {
        write.push("ec2:RegisterImage");
    }
    if req.force_deregister {
        write.push("ec2:DeregisterImage");
    }
    if !copies.is_empty() && !plan.copy_by_upload {
        write.push("ec2:CopyImage");
    }
    if !plan.share_with.is_empty() {
        write.push("ec2:ModifyImageAttribute");
        if plan
            .share_with
            .iter()
            .any(|t| matches!(t, ShareTarget::Account(_)))
        {
            write.push("ec2:ModifySnapshotAttribute");
        }
    }
    if plan.deprecate.is_some() {
        write.push("ec2:EnableImageDeprecation");
    }
    if plan.deregistration_protection {
        write.push("ec2:EnableImageDeregistrationProtection");
    }
    let encrypted = req.encrypted || req.kms_key_id.is_some() || !plan.copy_kms_keys.is_empty();
    if req.encrypted && !plan.share_with.is_empty() {
        write.push("ec2:GetEbsDefaultKmsKeyId");
    }
    // --copy-method upload writes a snapshot in every region.
    let written = if plan.copy_by_upload {
        regions.clone()
    } else {
        vec![source_region.to_string()]
    };
    let mut statements = vec![
        Statement::new("ImgforgeDescribe", &read, vec!["*".into()]).in_regions(&regions),
        Statement::new(
            "ImgforgeEbsDirectWrite",
            &[
                "ebs:StartSnapshot",
                "ebs:PutSnapshotBlock",
                "ebs:CompleteSnapshot",
            ],
            written
                .iter()
                .map(|r| format!("arn:aws:ec2:{r}::snapshot/*"))
                .collect(),
        ),
        Statement::new("ImgforgePublish", &write, vec!["*".into()]).in_regions(&regions),
    ];
    if let Some(template) = &plan.ssm_parameter {
        statements.push(Statement::new(
            "ImgforgeSsmParameter",
            &["ssm:GetParameter", "ssm:PutParameter"],
            ssm_resources(template, &regions),
        ));
    }
    if encrypted {
        statements.extend(kms_statements(req, source_region, &regions));
    }
    document(statements)
}

/// `arn:aws:ssm:REGION:*:parameter/PATH` for each region; `{name}` is any.
fn ssm_resources(template: &str, regions: &[String]) -> Vec<String> {
    regions
        .iter()
        .map(|region| {
            let name = template.replace("{name}", "*").replace("{region}", region);
            format!(
                "arn:aws:ssm:{region}:*:parameter/{}",
                name.trim_start_matches('/')
            )
        })
        .collect()
}

/// A key as a resource: its ARN as given, else any key of the region that
/// carries the alias (`kms:ResourceAliases`), else (a bare key ID) that key.
fn key_statement(sid: String, actions: &[&str], key: &str, region: &str) -> Statement {
    if key.starts_with("arn:") {
        return Statement::new(sid, actions, vec![key.to_string()]);
    }
    if key.starts_with("alias/") {
        let mut statement =
            Statement::new(sid, actions, vec![format!("arn:aws:kms:{region}:*:key/*")]);
        statement.condition = Some(json!({
            "ForAnyValue:StringEquals": {"kms:ResourceAliases": key}
        }));
        return statement;
    }
    Statement::new(
        sid,
        actions,
        vec![format!("arn:aws:kms:{region}:*:key/{key}")],
    )
}

/// DescribeKey (imgforge resolves the keys), and what EBS and EC2 do with
/// the keys on the caller's behalf, only through those services.
fn kms_statements(req: &UploadRequest, source_region: &str, regions: &[String]) -> Vec<Statement> {
    const ON_BEHALF: &[&str] = &[
        "kms:CreateGrant",
        "kms:Decrypt",
        "kms:DescribeKey",
        "kms:GenerateDataKey",
        "kms:GenerateDataKeyWithoutPlaintext",
        "kms:ReEncryptFrom",
        "kms:ReEncryptTo",
    ];
    let mut keys: Vec<(String, String)> = Vec::new();
    let source_key = req
        .kms_key_id
        .clone()
        .unwrap_or_else(|| super::kms::DEFAULT_EBS_KEY.to_string());
    if req.encrypted {
        keys.push((source_region.to_string(), source_key));
    }
    for (region, key) in &req.publish.copy_kms_keys {
        keys.push((region.clone(), key.clone()));
    }
    if req.encrypted {
        for region in regions.iter().skip(1) {
            if !keys.iter().any(|(r, _)| r == region) {
                keys.push((region.clone(), super::kms::DEFAULT_EBS_KEY.to_string()));
            }
        }
    }
    let mut out = Vec::new();
    for (n, (region, key)) in keys.iter().enumerate() {
        out.push(key_statement(
            format!("ImgforgeKmsDescribe{n}"),
            &["kms:DescribeKey"],
            key,
            region,
        ));
        let sid = format!("ImgforgeKmsViaEbsAndEc2{n}");
        let mut via = key_statement(sid, ON_BEHALF, key, region);
        let services = json!([
            format!("ec2.{region}.amazonaws.com"),
            format!("ebs.{region}.amazonaws.com")
        ]);
        let mut condition = via.condition.take().unwrap_or_else(|| json!({}));
        // StringLike: where the source region is not known offline it is
        // `*`, and StringEquals would compare the `*` literally.
        condition["StringLike"]["kms:ViaService"] = services;
        via.condition = Some(condition);
        out.push(via);
    }
    out
}

/// What an `ami` subcommand calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmiCommand {
    List,
    Prune { execute: bool },
    Promote,
}

/// The policy for `ami list|prune|promote` in `regions`.
pub fn for_ami(command: AmiCommand, regions: &[String], ssm_template: Option<&str>) -> Value {
    let mut read = vec!["ec2:DescribeImages", "ec2:DescribeRegions"];
    let mut statements = Vec::new();
    match command {
        AmiCommand::List => {}
        AmiCommand::Prune { execute } => {
            read.extend([
                "ec2:DescribeSnapshots",
                "ec2:DescribeLaunchTemplates",
                "ec2:DescribeLaunchTemplateVersions",
                "ssm:DescribeParameters",
                "ssm:GetParameters",
            ]);
            if execute {
                statements.push(
                    Statement::new(
                        "ImgforgePrune",
                        &["ec2:DeregisterImage", "ec2:DeleteSnapshot"],
                        vec!["*".into()],
                    )
                    .in_regions(regions),
                );
            }
        }
        AmiCommand::Promote => {
            statements.push(Statement::new(
                "ImgforgeSsmParameter",
                &["ssm:GetParameter", "ssm:PutParameter"],
                ssm_resources(ssm_template.unwrap_or("/*"), regions),
            ));
        }
    }
    statements.insert(
        0,
        Statement::new("ImgforgeDescribe", &read, vec!["*".into()]).in_regions(regions),
    );
    document(statements)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssm_and_key_resources() {
        let regions = vec!["us-east-1".to_string(), "eu-west-1".to_string()];
        assert_eq!(
            ssm_resources("/images/{name}/{region}", &regions),
            [
                "arn:aws:ssm:us-east-1:*:parameter/images/*/us-east-1",
                "arn:aws:ssm:eu-west-1:*:parameter/images/*/eu-west-1"
            ]
        );
        let alias = key_statement(
            "s".into(),
            &["kms:DescribeKey"],
            "alias/images",
            "eu-west-1",
        );
        assert_eq!(alias.resources, ["arn:aws:kms:eu-west-1:*:key/*"]);
        assert!(
            alias
                .condition
                .unwrap()
                .to_string()
                .contains("alias/images")
        );
        let prune = for_ami(AmiCommand::Prune { execute: false }, &regions, None).to_string();
        assert!(prune.contains("ssm:DescribeParameters") && !prune.contains("DeregisterImage"));
        let prune = for_ami(AmiCommand::Prune { execute: true }, &regions, None).to_string();
        assert!(prune.contains("ec2:DeregisterImage"));
    }
}
