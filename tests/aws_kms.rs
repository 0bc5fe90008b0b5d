//! KMS that works (issue 22, item 3) against moto (which implements KMS),
//! through the recording proxy: an alias is resolved to its key's ARN
//! (DescribeKey) before StartSnapshot; each copy is encrypted with its
//! region's key (CopyImage Encrypted + KmsKeyId, asserted on the wire:
//! moto ignores them); sharing under the AWS-managed key is refused with
//! the reason and the fix; under a customer key the grant is named.
//!
//! One moto for the file; each test uses names and aliases of its own.

mod common;

use common::*;

/// A customer managed key with `alias` in `region`; answers its ARN.
fn key(moto: &Moto, region: &str, alias: &str) -> String {
    let arn = boto(
        &moto.url(),
        &format!(
            "kms = client('kms', '{region}')\n\
             key = kms.create_key(Description='imgforge test')['KeyMetadata']\n\
             kms.create_alias(AliasName='{alias}', TargetKeyId=key['KeyId'])\n\
             print(json.dumps(key['Arn']))"
        ),
    );
    arn.as_str().unwrap().to_string()
}

#[test]
fn aliases_resolve_to_arns_and_each_copy_gets_its_regions_key() {
    let dir = tempfile::tempdir().unwrap();
    let moto = moto();
    let proxy = Proxy::start(moto, dir.path(), &[]);
    let source_arn = key(moto, "us-east-1", "alias/kms-images");
    let copy_arn = key(moto, "eu-west-1", "alias/kms-images-eu");
    let out = upload_pattern(
        dir.path(),
        &proxy.url(),
        &pattern_image(dir.path(), "kms-1.raw", 1),
        &[
            "--name",
            "kms-copies-v1",
            "--encrypted",
            "--kms-key-id",
            "alias/kms-images",
            "--copy-to",
            "eu-west-1",
            "--copy-kms-key",
            "eu-west-1=alias/kms-images-eu",
        ],
    );
    json_stdout(&out);
    let requests = proxy.requests();
    let position = |op: &str| requests.iter().position(|r| r["operation"] == op);
    let describes = Proxy::operations(&requests, "DescribeKey");
    assert_eq!(describes.len(), 2, "one per region");
    assert!(position("DescribeKey") < position("StartSnapshot"));
    let start = &Proxy::operations(&requests, "StartSnapshot")[0]["body"];
    assert_eq!(start["Encrypted"], true);
    assert_eq!(
        start["KmsKeyArn"],
        source_arn.as_str(),
        "the ARN, not the alias"
    );
    let copy = &Proxy::operations(&requests, "CopyImage")[0];
    assert_eq!(copy["region"], "eu-west-1");
    assert_eq!(copy["params"]["Encrypted"], "true");
    assert_eq!(copy["params"]["KmsKeyId"], copy_arn.as_str());

    // A key that does not exist is bad input, found before anything is written.
    let out = upload_pattern(
        dir.path(),
        &proxy.url(),
        &pattern_image(dir.path(), "kms-2.raw", 2),
        &[
            "--name",
            "kms-missing-v1",
            "--encrypted",
            "--kms-key-id",
            "alias/kms-nowhere",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("alias/kms-nowhere"),
        "{}",
        stderr(&out)
    );
    // A copy key for a region that is not copied to.
    let out = upload_pattern(
        dir.path(),
        &proxy.url(),
        &pattern_image(dir.path(), "kms-2.raw", 2),
        &[
            "--name",
            "kms-missing-v1",
            "--copy-kms-key",
            "eu-west-2=alias/x",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("not a --copy-to region"),
        "{}",
        stderr(&out)
    );
    let starts = Proxy::operations(&proxy.requests(), "StartSnapshot").len();
    assert_eq!(starts, 1, "nothing started for the bad ones");
}

#[test]
fn sharing_under_the_aws_managed_key_is_refused_and_a_customer_key_names_the_grant() {
    let dir = tempfile::tempdir().unwrap();
    let moto = moto();
    let proxy = Proxy::start(moto, dir.path(), &[]);
    let share = ["--share-with", "210987654321"];
    let out = upload_pattern(
        dir.path(),
        &proxy.url(),
        &pattern_image(dir.path(), "kms-3.raw", 3),
        &[&["--name", "kms-share-v1", "--encrypted"][..], &share[..]].concat(),
    );
    assert_eq!(out.status.code(), Some(2));
    let text = stderr(&out);
    for needle in [
        "AWS-managed",
        "210987654321",
        "--kms-key-id",
        "customer managed key",
    ] {
        assert!(text.contains(needle), "{needle} in {text}");
    }
    assert!(Proxy::operations(&proxy.requests(), "StartSnapshot").is_empty());

    let arn = key(moto, "us-east-1", "alias/kms-shared");
    let out = upload_pattern(
        dir.path(),
        &proxy.url(),
        &pattern_image(dir.path(), "kms-3.raw", 3),
        &[
            &[
                "--name",
                "kms-share-v1",
                "--encrypted",
                "--kms-key-id",
                "alias/kms-shared",
            ][..],
            &share[..],
        ]
        .concat(),
    );
    json_stdout(&out);
    let text = stderr(&out);
    for needle in [
        "210987654321",
        "kms:CreateGrant",
        "kms:Decrypt",
        arn.as_str(),
    ] {
        assert!(text.contains(needle), "{needle} in {text}");
    }
}
