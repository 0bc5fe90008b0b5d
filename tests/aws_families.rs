//! Families and a safe prune (issue 22, item 2) against moto, through the
//! recording proxy: `upload --family` tags the AMI and its snapshot; `ami
//! list|prune|promote --family` select by that tag (a family sharing a name
//! prefix with another is never matched); prune never deletes what an SSM
//! parameter of data type aws:ec2:image names, what has deregistration
//! protection (moto lacks it: the proxy answers and reports it as EC2 does)
//! or what a launch template's default or latest version uses; --keep >= 1;
//! a dry run unless --yes; every region the family was copied to.
//!
//! One moto for the file; each test uses families of its own.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn upload(dir: &Path, url: &str, seed: u64, name: &str, extra: &[&str]) -> String {
    let image = pattern_image(dir, &format!("fam-{seed}.raw"), seed);
    let out = upload_pattern(dir, url, &image, &[&["--name", name], extra].concat());
    let result = json_stdout(&out);
    // moto's creation times have whole seconds: keep the order unambiguous.
    std::thread::sleep(Duration::from_millis(1100));
    result["ami_id"].as_str().unwrap().to_string()
}

fn ami(dir: &Path, url: &str, args: &[&str]) -> Output {
    run(imgforge(dir)
        .arg("ami")
        .args(args)
        .args(["--endpoint-url", url]))
}

fn deregistered(requests: &[Value]) -> Vec<String> {
    Proxy::operations(requests, "DeregisterImage")
        .iter()
        .map(|r| r["params"]["ImageId"].as_str().unwrap().to_string())
        .collect()
}

/// The first story: `ami promote` rolls the fleet back to an older
/// AMI, then `prune --keep N` must not delete it; nor an AMI with
/// deregistration protection, nor one a launch template launches.
#[test]
fn prune_spares_what_production_launches_from() {
    let dir = tempfile::tempdir().unwrap();
    let moto = moto();
    let proxy = Proxy::start(moto, dir.path(), &[]);
    let url = proxy.url();
    let family = ["--family", "roll", "--ssm-parameter", "/roll/latest"];
    let ids: Vec<String> = (1..=6)
        .map(|n| upload(dir.path(), &url, 40 + n, &format!("roll-v{n}"), &family))
        .collect();
    // The fleet rolls back to v1.
    let promoted = json_stdout(&ami(
        dir.path(),
        &url,
        &[
            "promote",
            "--ssm-parameter",
            "/roll/latest",
            "--name",
            "roll-v1",
            "--family",
            "roll",
            "--json",
        ],
    ));
    assert_eq!(promoted[0]["ami_id"], ids[0].as_str());
    // v2 is protected (through the proxy, which answers for moto); a launch
    // template's default version launches v3.
    boto(
        &url,
        &format!(
            "client('ec2').enable_image_deregistration_protection(ImageId='{}')\n\
             client('ec2').create_launch_template(LaunchTemplateName='roll-fleet', \
             LaunchTemplateData={{'ImageId': '{}'}})\nprint('null')",
            ids[1], ids[2]
        ),
    );

    let bad = ami(
        dir.path(),
        &url,
        &["prune", "--family", "roll", "--keep", "0"],
    );
    assert_eq!(bad.status.code(), Some(2), "--keep 0 is bad input");
    assert!(stderr(&bad).contains("at least 1"), "{}", stderr(&bad));

    let before = proxy.requests().len();
    let dry = ami(
        dir.path(),
        &url,
        &["prune", "--family", "roll", "--keep", "1"],
    );
    assert!(dry.status.success(), "{}", stderr(&dry));
    let text = String::from_utf8_lossy(&dry.stdout).into_owned();
    for (id, reason) in [
        (&ids[0], "SSM parameter /roll/latest names it"),
        (
            &ids[1],
            "deregistration protection is enabled-without-cooldown",
        ),
        (&ids[2], "launch template roll-fleet version 1 uses it"),
    ] {
        assert!(
            text.contains(&format!("(in use: {reason})")) && text.contains(id.as_str()),
            "{id} {reason}: {text}"
        );
    }
    assert!(text.contains(&format!("keep {} roll-v6", ids[5])), "{text}");
    for going in [&ids[3], &ids[4]] {
        assert!(
            text.contains(&format!("would deregister {going}")),
            "{text}"
        );
    }
    assert!(
        deregistered(&proxy.requests()[before..]).is_empty(),
        "a dry run"
    );

    let done = json_stdout(&ami(
        dir.path(),
        &url,
        &[
            "prune", "--family", "roll", "--keep", "1", "--yes", "--json",
        ],
    ));
    let mut gone = deregistered(&proxy.requests()[before..]);
    gone.sort();
    let mut expected = vec![ids[3].clone(), ids[4].clone()];
    expected.sort();
    assert_eq!(gone, expected);
    assert_eq!(done[0]["in_use"].as_array().unwrap().len(), 3);
}

/// The second story: `trading-large-` also matches
/// `trading-large-arm64-...` as a name prefix; by family it never does. And
/// a family is found in every region it was copied to.
#[test]
fn a_family_never_matches_another_that_shares_its_name_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let moto = moto();
    let proxy = Proxy::start(moto, dir.path(), &[]);
    let url = proxy.url();
    let copy = ["--copy-to", "eu-west-2"];
    let large: Vec<String> = (1..=2)
        .map(|n| {
            let name = format!("trading-large-2026120{n}");
            upload(
                dir.path(),
                &url,
                60 + n,
                &name,
                &[&["--family", "trading-large"][..], &copy[..]].concat(),
            )
        })
        .collect();
    let arm: Vec<String> = (1..=2)
        .map(|n| {
            let name = format!("trading-large-arm64-2026120{n}");
            upload(
                dir.path(),
                &url,
                70 + n,
                &name,
                &["--family", "trading-large-arm64"],
            )
        })
        .collect();

    let by_prefix = json_stdout(&ami(
        dir.path(),
        &url,
        &["list", "--name-prefix", "trading-large-", "--json"],
    ));
    assert_eq!(by_prefix.as_array().unwrap().len(), 4, "the prefix's trap");

    // --family, without --region: the default region and every region the
    // family was copied to.
    let listed = json_stdout(&ami(
        dir.path(),
        &url,
        &["list", "--family", "trading-large", "--json"],
    ));
    let listed: Vec<(String, String)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["region"].as_str().unwrap().to_string(),
                i["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(listed.len(), 4, "two AMIs in two regions: {listed:?}");
    assert!(
        listed.iter().all(|(_, name)| !name.contains("arm64")),
        "{listed:?}"
    );
    assert_eq!(listed.iter().filter(|(r, _)| r == "eu-west-2").count(), 2);

    let before = proxy.requests().len();
    let done = json_stdout(&ami(
        dir.path(),
        &url,
        &[
            "prune",
            "--family",
            "trading-large",
            "--keep",
            "1",
            "--yes",
            "--json",
        ],
    ));
    let regions: Vec<&str> = done
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["region"].as_str().unwrap())
        .collect();
    assert_eq!(regions, ["us-east-1", "eu-west-2"]);
    let requests = proxy.requests()[before..].to_vec();
    let gone = deregistered(&requests);
    assert_eq!(gone.len(), 2, "the older AMI in each region: {gone:?}");
    assert!(gone.contains(&large[0]));
    assert!(!gone.iter().any(|id| arm.contains(id) || *id == large[1]));
    let left = json_stdout(&ami(
        dir.path(),
        &url,
        &["list", "--family", "trading-large-arm64", "--json"],
    ));
    assert_eq!(
        left.as_array().unwrap().len(),
        2,
        "the other family is untouched"
    );
}
