//! `--print-iam-policy` (issue 22, item 6): an upload with every publishing
//! flag runs against moto through the recording proxy; every API call it
//! made must be allowed by the policy the same command line prints (by
//! action, region and resource region; tag and alias conditions are not
//! evaluated here), and the KMS permissions EBS and EC2 use on the caller's
//! behalf (never on the wire) are granted through those services. The same
//! for `ami prune --yes` and `ami promote`.

mod common;

use std::process::Output;

use common::*;
use serde_json::Value;

fn create_key(moto: &Moto, region: &str, alias: &str) {
    boto(
        &moto.url(),
        &format!(
            "kms = client('kms', '{region}')\n\
             key = kms.create_key()['KeyMetadata']\n\
             kms.create_alias(AliasName='{alias}', TargetKeyId=key['KeyId'])"
        ),
    );
}

fn matches(pattern: &str, text: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => text.starts_with(prefix),
        None => pattern == text,
    }
}

fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .filter_map(|i| i.as_str().map(String::from))
            .collect(),
        _ => Vec::new(),
    }
}

/// Whether `policy` allows `action` in `region` (action, the
/// aws:RequestedRegion condition, the region field of resource ARNs).
fn allows(policy: &Value, action: &str, region: &str) -> bool {
    policy["Statement"].as_array().unwrap().iter().any(|s| {
        let action_ok = strings(&s["Action"]).iter().any(|a| matches(a, action));
        let region_ok = match s["Condition"]["StringLike"].get("aws:RequestedRegion") {
            Some(regions) => strings(regions).iter().any(|r| matches(r, region)),
            None => true,
        };
        let resource_ok = strings(&s["Resource"]).iter().any(|r| {
            r == "*" || {
                let field = r.split(':').nth(3).unwrap_or_default();
                field.is_empty() || matches(field, region)
            }
        });
        s["Effect"] == "Allow" && action_ok && region_ok && resource_ok
    })
}

/// Every call in `requests` is allowed by `policy`; answers the calls.
fn assert_allowed(policy: &Value, requests: &[Value]) -> Vec<String> {
    let mut calls: Vec<String> = requests
        .iter()
        .map(|r| {
            format!(
                "{}:{}@{}",
                r["service"].as_str().unwrap(),
                r["operation"].as_str().unwrap(),
                r["region"].as_str().unwrap()
            )
        })
        .collect();
    calls.sort();
    calls.dedup();
    for call in &calls {
        let (action, region) = call.split_once('@').unwrap();
        assert!(
            allows(policy, action, region),
            "{call} is not allowed by\n{policy:#}"
        );
    }
    calls
}

fn printed_policy(out: &Output) -> Value {
    assert!(out.status.success(), "{}", stderr(out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_printed_policy_allows_every_call_of_an_upload_with_every_publishing_flag() {
    let dir = tempfile::tempdir().unwrap();
    let moto = moto();
    let proxy = Proxy::start(moto, dir.path(), &[]);
    create_key(moto, "us-east-1", "alias/iam-images");
    create_key(moto, "eu-west-1", "alias/iam-images-eu");
    let flags = [
        "--name",
        "iam-all-v1",
        "--family",
        "iam-all",
        "--boot-mode",
        "legacy-bios",
        "--arch",
        "x86_64",
        "--encrypted",
        "--kms-key-id",
        "alias/iam-images",
        "--copy-to",
        "eu-west-1",
        "--copy-kms-key",
        "eu-west-1=alias/iam-images-eu",
        "--share-with",
        "210987654321",
        "--deprecate-in",
        "30d",
        "--ssm-parameter",
        "/iam/{name}/latest",
        "--tag",
        "team=infra",
        "--snapshot-tag",
        "backup=no",
        "--deregistration-protection",
        "--volume-size",
        "20G",
        "--root-volume-iops",
        "6000",
        "--root-volume-throughput",
        "500",
        "--volume",
        "/dev/sdf=10G",
        "--instance-store",
        "1",
        "--replace",
        "--instance-types",
        "c5.large",
        "--workers",
        "4",
    ];
    // An older image under the name, so that --replace deregisters it.
    let older = pattern_image(dir.path(), "iam-1.raw", 1);
    json_stdout(&run(imgforge(dir.path())
        .arg("upload")
        .arg(&older)
        .args([
            "--endpoint-url",
            &proxy.url(),
            "--json",
            "--name",
            "iam-all-v1",
        ])
        .args([
            "--boot-mode",
            "legacy-bios",
            "--arch",
            "x86_64",
            "--family",
            "iam-all",
        ])));
    let before = proxy.requests().len();
    let newer = pattern_image(dir.path(), "iam-2.raw", 2);
    let out = run(imgforge(dir.path())
        .arg("upload")
        .arg(&newer)
        .args(["--endpoint-url", &proxy.url(), "--json"])
        .args(flags));
    json_stdout(&out);
    let requests = proxy.requests()[before..].to_vec();

    let policy = printed_policy(&run(imgforge(dir.path())
        .arg("upload")
        .arg(&newer)
        .arg("--print-iam-policy")
        .args(flags)));
    let calls = assert_allowed(&policy, &requests);
    for expected in [
        "ebs:StartSnapshot@us-east-1",
        "ec2:DescribeInstanceTypes@us-east-1",
        "ec2:CopyImage@eu-west-1",
        "ec2:DeregisterImage@us-east-1",
        "ec2:EnableImageDeregistrationProtection@eu-west-1",
        "kms:DescribeKey@eu-west-1",
        "ssm:PutParameter@eu-west-1",
    ] {
        assert!(
            calls.iter().any(|c| c == expected),
            "{expected} in {calls:?}"
        );
    }
    // What EBS and EC2 do with the keys on the caller's behalf.
    for region in ["us-east-1", "eu-west-1"] {
        let via = policy["Statement"].as_array().unwrap().iter().any(|s| {
            strings(&s["Action"]).contains(&"kms:CreateGrant".to_string())
                && strings(&s["Condition"]["StringLike"]["kms:ViaService"])
                    .contains(&format!("ec2.{region}.amazonaws.com"))
        });
        assert!(via, "kms:CreateGrant via EC2 in {region}: {policy:#}");
    }
    assert!(
        proxy.requests().len() == before + requests.len(),
        "the policy needed no AWS call"
    );

    // Least privilege: a plain upload's policy grants nothing it does not use.
    let plain = printed_policy(&run(imgforge(dir.path()).arg("upload").arg(&newer).args([
        "--print-iam-policy",
        "--region",
        "us-east-1",
    ])));
    let text = plain.to_string();
    for absent in [
        "CopyImage",
        "PutParameter",
        "kms:",
        "ModifyImageAttribute",
        "DeregisterImage",
    ] {
        assert!(!text.contains(absent), "{absent} in {text}");
    }
}

#[test]
fn the_printed_policy_allows_what_ami_prune_and_promote_call() {
    let dir = tempfile::tempdir().unwrap();
    let moto = moto();
    let proxy = Proxy::start(moto, dir.path(), &[]);
    for seed in [3, 4] {
        json_stdout(&run(imgforge(dir.path())
            .arg("upload")
            .arg(pattern_image(dir.path(), &format!("iam-{seed}.raw"), seed))
            .args(["--endpoint-url", &proxy.url(), "--json"])
            .args([
                "--name",
                &format!("iam-prune-v{seed}"),
                "--family",
                "iam-prune",
            ])
            .args(["--boot-mode", "legacy-bios", "--arch", "x86_64"])));
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    for args in [
        &[
            "prune",
            "--family",
            "iam-prune",
            "--keep",
            "1",
            "--yes",
            "--region",
            "us-east-1",
        ][..],
        &[
            "promote",
            "--family",
            "iam-prune",
            "--ssm-parameter",
            "/iam-prune/latest",
            "--region",
            "us-east-1",
        ][..],
    ] {
        let before = proxy.requests().len();
        let out = run(imgforge(dir.path())
            .arg("ami")
            .args(args)
            .args(["--endpoint-url", &proxy.url()]));
        assert!(out.status.success(), "{}", stderr(&out));
        let requests = proxy.requests()[before..].to_vec();
        assert!(!requests.is_empty());
        let policy = printed_policy(&run(imgforge(dir.path())
            .arg("ami")
            .args(args)
            .arg("--print-iam-policy")));
        assert_allowed(&policy, &requests);
    }
}
