//! Publishing (`upload --copy-to/--share-with/--deprecate-*/--ssm-parameter`)
//! and `imgforge ami list|prune|promote` against moto's server, through the
//! recording proxy (tests/support/aws_proxy.py). What moto does not keep
//! (CopyImage's ClientToken and CopyImageTags, EnableImageDeprecation, which
//! moto 5.2 does not implement and the proxy answers, PutParameter's
//! DataType) is asserted on the wire; what it keeps is read back with boto3.
//!
//! One moto for the file (`common::aws::moto()`), shared by tests running
//! in parallel: each test has a proxy of its own, and AMI names, families
//! and SSM parameters no other test of the file uses (`ami prune
//! --name-prefix fleet-` deregisters whatever is named fleet-*), and looks
//! at listings only for its own names.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

const ORG: &str = "arn:aws:organizations::123456789012:organization/o-abc123def4";
const OU: &str = "arn:aws:organizations::123456789012:ou/o-abc123def4/ou-ab12-cdef3456";

/// A small image whose content depends on `seed`.
fn small_image(dir: &Path, seed: u64) -> PathBuf {
    let path = dir.join(format!("image-{seed}.raw"));
    make_image(&path, 4 * MIB, &[(MIB, pattern(seed, 300_000))]);
    path
}

fn upload(dir: &Path, url: &str, image: &Path, name: &str, extra: &[&str]) -> Output {
    run(imgforge(dir)
        .arg("upload")
        .arg(image)
        .args(["--endpoint-url", url, "--name", name])
        // The test images are blocks of data, not disks: nothing to read
        // the architecture from.
        .args(["--boot-mode", "legacy-bios", "--architecture", "x86_64"])
        .args(["--workers", "4"])
        .args(extra))
}

fn in_region<'a>(requests: &'a [Value], op: &str, region: &str) -> Vec<&'a Value> {
    Proxy::operations(requests, op)
        .into_iter()
        .filter(|r| r["region"] == region)
        .collect()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn ami_of(result: &Value, region: &str) -> String {
    result["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["region"] == region)
        .unwrap_or_else(|| panic!("no {region} in {result}"))["ami_id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn copies_shares_deprecates_and_points_ssm_in_every_region() {
    let dir = tempfile::tempdir().unwrap();
    let moto = moto();
    let proxy = Proxy::start(moto, dir.path(), &[]);
    let image = small_image(dir.path(), 11);
    let args = [
        "--copy-to",
        "us-west-2,eu-west-1",
        "--share-with",
        "210987654321",
        "--share-with",
        "all",
        "--share-with",
        ORG,
        "--share-with",
        OU,
        "--deprecate-in",
        "30d",
        "--ssm-parameter",
        "/images/{region}/pub-test/latest",
        "--tag",
        "team=infra",
        "--snapshot-tag",
        "backup=no",
        "--json",
    ];
    let out = upload(dir.path(), &proxy.url(), &image, "pub-test-v1", &args);
    let result = json_stdout(&out);
    let regions: Vec<&str> = result["regions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["region"].as_str().unwrap())
        .collect();
    assert_eq!(regions, ["eu-west-1", "us-east-1", "us-west-2"], "sorted");
    for r in result["regions"].as_array().unwrap() {
        assert!(r["error"].is_null(), "{r}");
        assert_eq!(r["state"], "available");
        let expected = if r["region"] == "us-east-1" {
            "source"
        } else {
            "copied"
        };
        assert_eq!(r["origin"], expected);
        assert_eq!(r["shared_with"].as_array().unwrap().len(), 4);
    }
    let source = ami_of(&result, "us-east-1");
    assert_eq!(result["ami_id"], source.as_str());
    let requests = proxy.requests();

    // Regions were checked before anything was written.
    let describe_regions = requests
        .iter()
        .position(|r| r["operation"] == "DescribeRegions")
        .expect("DescribeRegions");
    let start = requests
        .iter()
        .position(|r| r["operation"] == "StartSnapshot")
        .unwrap();
    assert!(describe_regions < start);

    // CopyImage: one per target region, signed for that region, with
    // CopyImageTags and the derived ClientToken (moto keeps neither).
    let copies = Proxy::operations(&requests, "CopyImage");
    assert_eq!(copies.len(), 2);
    for region in ["eu-west-1", "us-west-2"] {
        let copy = in_region(&requests, "CopyImage", region);
        assert_eq!(copy.len(), 1, "{region}");
        let p = &copy[0]["params"];
        assert_eq!(p["SourceImageId"], source.as_str());
        assert_eq!(p["SourceRegion"], "us-east-1");
        assert_eq!(p["Name"], "pub-test-v1");
        assert_eq!(p["CopyImageTags"], "true");
        let token = hex::encode(Sha256::digest(format!(
            "imgforge-copy\n{source}\n{region}\npub-test-v1"
        )));
        assert_eq!(p["ClientToken"], token.as_str(), "derived, not random");
    }

    for region in ["eu-west-1", "us-east-1", "us-west-2"] {
        let ami = ami_of(&result, region);
        // Launch permission in the structured form, all four kinds at once.
        let modify = in_region(&requests, "ModifyImageAttribute", region);
        assert_eq!(modify.len(), 1, "{region}");
        let p = &modify[0]["params"];
        assert_eq!(p["ImageId"], ami.as_str());
        let values: Vec<&str> = p
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with("LaunchPermission.Add."))
            .map(|(_, v)| v.as_str().unwrap())
            .collect();
        for wanted in ["210987654321", "all", ORG, OU] {
            assert!(values.contains(&wanted), "{region}: {wanted} in {p}");
        }
        assert!(
            p.as_object()
                .unwrap()
                .keys()
                .any(|k| k.starts_with("LaunchPermission.Add.")
                    && k.ends_with(".OrganizationalUnitArn")),
            "structured form: {p}"
        );
        // createVolumePermission for the account, on the region's snapshots.
        let snaps = in_region(&requests, "ModifySnapshotAttribute", region);
        assert!(!snaps.is_empty(), "{region}");
        for s in &snaps {
            assert_eq!(s["params"]["Attribute"], "createVolumePermission");
            assert_eq!(s["params"]["OperationType"], "add");
            assert_eq!(s["params"]["UserId.1"], "210987654321");
        }
        // Deprecation: answered by the proxy, asserted on the wire.
        let dep = in_region(&requests, "EnableImageDeprecation", region);
        assert_eq!(dep.len(), 1, "{region}");
        assert_eq!(dep[0]["answered_by_proxy"], true);
        assert_eq!(dep[0]["params"]["ImageId"], ami.as_str());
        let at = dep[0]["params"]["DeprecateAt"].as_str().unwrap();
        let at = boto(
            &moto.url(),
            &format!(
                "from datetime import datetime\nprint(int(datetime.fromisoformat({at:?}.replace('Z', '+00:00')).timestamp()))"
            ),
        )
        .as_i64()
        .unwrap();
        assert!((at - (now() + 30 * 86_400)).abs() < 600, "30 days from now");
        // SSM: DataType on the write, in the region, naming the region's AMI.
        let put = in_region(&requests, "PutParameter", region);
        assert_eq!(put.len(), 1, "{region}");
        let body = &put[0]["body"];
        assert_eq!(body["DataType"], "aws:ec2:image");
        assert_eq!(body["Name"], format!("/images/{region}/pub-test/latest"));
        assert_eq!(body["Value"], ami.as_str());
    }

    // What moto keeps: launch permissions, volume permissions, tags, parameters.
    let eu = ami_of(&result, "eu-west-1");
    let kept = boto(
        &moto.url(),
        &format!(
            "ec2 = client('ec2', 'eu-west-1')\n\
             img = ec2.describe_images(ImageIds=['{eu}'])['Images'][0]\n\
             perms = ec2.describe_image_attribute(ImageId='{eu}', Attribute='launchPermission')['LaunchPermissions']\n\
             snap = img['BlockDeviceMappings'][0]['Ebs']['SnapshotId']\n\
             vol = ec2.describe_snapshot_attribute(SnapshotId=snap, Attribute='createVolumePermission')['CreateVolumePermissions']\n\
             stags = ec2.describe_snapshots(SnapshotIds=[snap])['Snapshots'][0].get('Tags', [])\n\
             ssm = client('ssm', 'eu-west-1').get_parameter(Name='/images/eu-west-1/pub-test/latest')['Parameter']\n\
             print(json.dumps({{'perms': perms, 'vol': vol, 'tags': img.get('Tags', []), 'stags': stags, \
             'ssm': [ssm['Value'], ssm['DataType']]}}))"
        ),
    );
    let perms = kept["perms"].to_string();
    for wanted in ["210987654321", "\"all\"", ORG, OU] {
        assert!(perms.contains(wanted), "{wanted} in {perms}");
    }
    assert!(kept["vol"].to_string().contains("210987654321"));
    let tags = kept["tags"].to_string();
    assert!(
        tags.contains("team") && tags.contains("imgforge:family"),
        "{tags}"
    );
    assert!(tags.contains("pub-test"), "family of pub-test-v1: {tags}");
    let stags = kept["stags"].to_string();
    assert!(
        stags.contains("backup") && stags.contains("imgforge:ami-name"),
        "{stags}"
    );
    assert_eq!(kept["ssm"][0], eu.as_str());
    assert_eq!(kept["ssm"][1], "aws:ec2:image");

    // Packer's manifest lists every region, sorted.
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("packer-manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        manifest["builds"][0]["artifact_id"],
        format!(
            "eu-west-1:{eu},us-east-1:{source},us-west-2:{}",
            ami_of(&result, "us-west-2")
        )
    );

    // A rerun finds everything in place: no upload, no copy, no SSM write.
    let before = proxy.requests().len();
    let again = json_stdout(&upload(
        dir.path(),
        &proxy.url(),
        &image,
        "pub-test-v1",
        &args,
    ));
    let rerun: Vec<Value> = proxy.requests()[before..].to_vec();
    assert_eq!(again["reused_existing_ami"], true);
    for op in [
        "StartSnapshot",
        "CopyImage",
        "PutParameter",
        "RegisterImage",
    ] {
        assert!(Proxy::operations(&rerun, op).is_empty(), "{op} on a rerun");
    }
    for r in again["regions"].as_array().unwrap() {
        assert_eq!(
            r["ami_id"],
            result["regions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["region"] == r["region"])
                .unwrap()["ami_id"]
        );
        if r["region"] != "us-east-1" {
            assert_eq!(r["origin"], "reused");
        }
    }
}

#[test]
fn a_failed_region_is_named_and_a_rerun_completes_only_that_region() {
    let dir = tempfile::tempdir().unwrap();
    let moto = moto();
    let image = small_image(dir.path(), 12);
    let args = ["--copy-to", "eu-west-1,us-west-2", "--json"];
    let failing = Proxy::start(moto, dir.path(), &["--fail", "CopyImage@us-west-2"]);
    let out = upload(dir.path(), &failing.url(), &image, "partial-v1", &args);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("published in eu-west-1, us-east-1; failed in us-west-2"),
        "{err}"
    );
    assert!(err.contains("UnauthorizedOperation"), "{err}");
    let partial: Value = serde_json::from_slice(&out.stdout).expect("--json even on failure");
    let west = partial["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["region"] == "us-west-2")
        .unwrap();
    assert!(west["error"].as_str().unwrap().contains("CopyImage"));
    assert!(
        !dir.path().join("packer-manifest.json").exists(),
        "no manifest for a partial publish"
    );
    let eu = ami_of(&partial, "eu-west-1");

    let proxy = Proxy::start(moto, dir.path(), &[]);
    let result = json_stdout(&upload(
        dir.path(),
        &proxy.url(),
        &image,
        "partial-v1",
        &args,
    ));
    let requests = proxy.requests();
    let copies = Proxy::operations(&requests, "CopyImage");
    assert_eq!(copies.len(), 1, "only the missing region is copied");
    assert_eq!(copies[0]["region"], "us-west-2");
    assert!(Proxy::operations(&requests, "StartSnapshot").is_empty());
    assert_eq!(
        ami_of(&result, "eu-west-1"),
        eu,
        "the earlier copy is reused"
    );
    let manifest = std::fs::read_to_string(dir.path().join("packer-manifest.json")).unwrap();
    assert_eq!(manifest.matches("us-west-2:ami-").count(), 1);
}

#[test]
fn ssm_parameter_of_another_family_is_kept_unless_ssm_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let moto = moto();
    let proxy = Proxy::start(moto, dir.path(), &[]);
    let param = ["--ssm-parameter", "/images/shared/latest", "--json"];
    let alpha = json_stdout(&upload(
        dir.path(),
        &proxy.url(),
        &small_image(dir.path(), 21),
        "alpha-v1",
        &param,
    ));
    let beta_image = small_image(dir.path(), 22);
    let refused = upload(dir.path(), &proxy.url(), &beta_image, "beta-v1", &param);
    assert!(!refused.status.success());
    let err = stderr(&refused);
    assert!(
        err.contains("image family \"alpha\"") && err.contains("--ssm-overwrite"),
        "{err}"
    );
    let puts = Proxy::operations(&proxy.requests(), "PutParameter").len();
    assert_eq!(puts, 1, "the refused write was not sent");

    // Same family, next version: no refusal.
    let alpha2 = json_stdout(&upload(
        dir.path(),
        &proxy.url(),
        &small_image(dir.path(), 23),
        "alpha-v2",
        &param,
    ));
    assert_eq!(alpha2["regions"][0]["ssm_previous_value"], alpha["ami_id"]);

    let mut forced = param.to_vec();
    forced.push("--ssm-overwrite");
    let beta = json_stdout(&upload(
        dir.path(),
        &proxy.url(),
        &beta_image,
        "beta-v1",
        &forced,
    ));
    let value = boto(
        &moto.url(),
        "p = client('ssm', 'us-east-1').get_parameter(Name='/images/shared/latest')['Parameter']\n\
         print(json.dumps([p['Value'], p['DataType']]))",
    );
    assert_eq!(value[0], beta["ami_id"]);
    assert_eq!(value[1], "aws:ec2:image");
    for put in Proxy::operations(&proxy.requests(), "PutParameter") {
        assert_eq!(put["body"]["DataType"], "aws:ec2:image", "every write");
    }

    // A parameter that holds something else than an AMI id is not taken over,
    // and --deprecate-at sends the time as given.
    boto(
        &moto.url(),
        "client('ssm', 'us-east-1').put_parameter(Name='/config/text', Value='hello', Type='String')\n\
         print('null')",
    );
    let out = upload(
        dir.path(),
        &proxy.url(),
        &small_image(dir.path(), 24),
        "gamma-v1",
        &[
            "--ssm-parameter",
            "/config/text",
            "--deprecate-at",
            "2030-01-31T12:00:00Z",
        ],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("holds \"hello\", which is not an AMI id"),
        "{}",
        stderr(&out)
    );
    let requests = proxy.requests();
    let dep = Proxy::operations(&requests, "EnableImageDeprecation");
    assert_eq!(
        dep.last().unwrap()["params"]["DeprecateAt"],
        "2030-01-31T12:00:00Z"
    );
}

#[test]
fn ami_list_prune_and_promote() {
    let dir = tempfile::tempdir().unwrap();
    let moto = moto();
    let proxy = Proxy::start(moto, dir.path(), &[]);
    let url = proxy.url();
    let mut ids = Vec::new();
    for (seed, name) in [(31, "fleet-v1"), (32, "fleet-v2"), (33, "fleet-v3")] {
        let result = json_stdout(&upload(
            dir.path(),
            &url,
            &small_image(dir.path(), seed),
            name,
            &[
                "--ssm-parameter",
                "/images/fleet/latest",
                "--copy-to",
                "eu-west-1",
                "--json",
            ],
        ));
        ids.push(result["ami_id"].as_str().unwrap().to_string());
        // moto's creation times have whole seconds; keep the order unambiguous.
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let other = json_stdout(&upload(
        dir.path(),
        &url,
        &small_image(dir.path(), 34),
        "other-v1",
        &["--json"],
    ));

    // list: name prefix, regions, snapshots, state, creation time.
    let out = run(imgforge(dir.path()).args([
        "ami",
        "list",
        "--name-prefix",
        "fleet-",
        "--region",
        "us-east-1",
        "--region",
        "eu-west-1",
        "--endpoint-url",
        &url,
        "--json",
    ]));
    let listed = json_stdout(&out);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 6, "three AMIs in two regions");
    for image in listed {
        assert!(image["name"].as_str().unwrap().starts_with("fleet-"));
        assert_eq!(image["state"], "available");
        assert!(image["creation_date"].is_string());
        assert!(!image["snapshot_ids"].as_array().unwrap().is_empty());
        assert!(image.get("deprecation_time").is_some());
    }
    let tagged = json_stdout(&run(imgforge(dir.path()).args([
        "ami",
        "list",
        "--name-prefix",
        "",
        "--tag",
        "imgforge:family=other",
        "--endpoint-url",
        &url,
        "--json",
    ])));
    assert_eq!(tagged.as_array().unwrap().len(), 1);
    assert_eq!(tagged[0]["image_id"], other["ami_id"]);

    // promote: roll the parameter back to v1 in both regions.
    let promoted = json_stdout(&run(imgforge(dir.path()).args([
        "ami",
        "promote",
        "--ssm-parameter",
        "/images/fleet/latest",
        "--name",
        "fleet-v1",
        "--region",
        "us-east-1",
        "--region",
        "eu-west-1",
        "--endpoint-url",
        &url,
        "--json",
    ])));
    assert_eq!(promoted[0]["ami_id"], ids[0].as_str());
    assert_eq!(promoted[0]["previous_value"], ids[2].as_str());
    let values = boto(
        &moto.url(),
        "print(json.dumps([client('ssm', r).get_parameter(Name='/images/fleet/latest')['Parameter']['Value'] \
         for r in ['us-east-1', 'eu-west-1']]))",
    );
    assert_eq!(values[0], ids[0].as_str());
    assert_eq!(values[1], promoted[1]["ami_id"]);

    // promote --image: one region, by id (forward again to v3).
    let forward = json_stdout(&run(imgforge(dir.path()).args([
        "ami",
        "promote",
        "--ssm-parameter",
        "/images/fleet/latest",
        "--image",
        &ids[2],
        "--endpoint-url",
        &url,
        "--json",
    ])));
    assert_eq!(forward.as_array().unwrap().len(), 1);
    assert_eq!(forward[0]["region"], "us-east-1");
    assert_eq!(forward[0]["previous_value"], ids[0].as_str());
    let requests = proxy.requests();
    let puts = Proxy::operations(&requests, "PutParameter");
    assert!(
        puts.iter()
            .all(|p| p["body"]["DataType"] == "aws:ec2:image")
    );

    // prune: a dry run by default.
    let before = proxy.requests().len();
    let dry = run(imgforge(dir.path()).args([
        "ami",
        "prune",
        "--name-prefix",
        "fleet-",
        "--keep",
        "1",
        "--endpoint-url",
        &url,
    ]));
    assert!(dry.status.success(), "{}", stderr(&dry));
    // v3 is what the parameter names: in use, kept, not counted in --keep.
    let text = String::from_utf8_lossy(&dry.stdout);
    assert!(
        text.contains(&format!("would deregister {}", ids[0])),
        "{text}"
    );
    assert!(text.contains(&format!("keep {}", ids[1])), "{text}");
    assert!(
        text.contains(&format!(
            "keep {} fleet-v3 (in use: SSM parameter /images/fleet/latest names it)",
            ids[2]
        )),
        "{text}"
    );
    assert!(stderr(&dry).contains("--yes"));
    let after_dry: Vec<Value> = proxy.requests()[before..].to_vec();
    for op in ["DeregisterImage", "DeleteSnapshot"] {
        assert!(
            Proxy::operations(&after_dry, op).is_empty(),
            "dry run sent {op}"
        );
    }

    // Nothing is older than 30 days.
    let young = json_stdout(&run(imgforge(dir.path()).args([
        "ami",
        "prune",
        "--name-prefix",
        "fleet-",
        "--keep",
        "1",
        "--older-than",
        "30d",
        "--endpoint-url",
        &url,
        "--json",
    ])));
    assert!(young[0]["pruned"].as_array().unwrap().is_empty());

    let before = proxy.requests().len();
    let done = json_stdout(&run(imgforge(dir.path()).args([
        "ami",
        "prune",
        "--name-prefix",
        "fleet-",
        "--keep",
        "1",
        "--endpoint-url",
        &url,
        "--yes",
        "--json",
    ])));
    let requests: Vec<Value> = proxy.requests()[before..].to_vec();
    let deregistered: Vec<&str> = Proxy::operations(&requests, "DeregisterImage")
        .iter()
        .map(|r| r["params"]["ImageId"].as_str().unwrap())
        .collect();
    assert_eq!(deregistered, [ids[0].as_str()]);
    let deleted: Vec<&str> = Proxy::operations(&requests, "DeleteSnapshot")
        .iter()
        .map(|r| r["params"]["SnapshotId"].as_str().unwrap())
        .collect();
    for item in done[0]["pruned"].as_array().unwrap() {
        assert_eq!(item["deregistered"], true);
        for snap in item["delete_snapshots"].as_array().unwrap() {
            assert!(deleted.contains(&snap.as_str().unwrap()), "{snap} deleted");
        }
        assert!(!item["delete_snapshots"].as_array().unwrap().is_empty());
    }
    let left = json_stdout(&run(imgforge(dir.path()).args([
        "ami",
        "list",
        "--name-prefix",
        "",
        "--endpoint-url",
        &url,
        "--json",
    ])));
    // This test's AMIs (fleet-*, other-*): the file's other tests publish
    // on the same moto under names of their own.
    let left: Vec<&str> = left
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| {
            let name = i["name"].as_str().unwrap();
            name.starts_with("fleet-") || name.starts_with("other-")
        })
        .map(|i| i["image_id"].as_str().unwrap())
        .collect();
    assert!(left.contains(&ids[1].as_str()) && left.contains(&ids[2].as_str()));
    assert!(
        left.contains(&other["ami_id"].as_str().unwrap()),
        "another prefix is untouched"
    );
    assert_eq!(left.len(), 3, "{left:?}");
}

fn expect_failure(dir: &Path, args: &[&str], needles: &[&str]) -> Output {
    let out = run(imgforge(dir).args(args));
    assert!(!out.status.success(), "{args:?} should fail");
    let err = stderr(&out);
    for needle in needles {
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
    out
}

#[test]
fn bad_publish_input_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let moto = moto();
    let proxy = Proxy::start(moto, dir.path(), &[]);
    let url = proxy.url();
    let image = small_image(dir.path(), 41);
    let img = image.to_str().unwrap();
    let base = ["upload", img, "--endpoint-url", &url, "--name", "bad-v1"];
    let with = |extra: &[&'static str]| {
        let mut v: Vec<&str> = base.to_vec();
        v.extend_from_slice(extra);
        v
    };
    expect_failure(
        dir.path(),
        &with(&["--copy-to", "eu-nowhere-9"]),
        &["unknown region \"eu-nowhere-9\"", "eu-west-1"],
    );
    expect_failure(
        dir.path(),
        &with(&["--copy-to", "Europe"]),
        &["not an AWS region name"],
    );
    expect_failure(
        dir.path(),
        &with(&["--ssm-parameter", "images/latest"]),
        &["must start with `/`"],
    );
    expect_failure(
        dir.path(),
        &with(&["--ssm-parameter", "/images/{arch}/latest"]),
        &["unknown placeholder {arch}"],
    );
    expect_failure(
        dir.path(),
        &with(&["--share-with", "bob"]),
        &["not a share target", "12-digit account ID", "OU ARN"],
    );
    expect_failure(
        dir.path(),
        &with(&["--share-with", "arn:aws:iam::123456789012:role/x"]),
        &["not a share target"],
    );
    expect_failure(
        dir.path(),
        &with(&["--deprecate-at", "2001-01-01T00:00:00Z"]),
        &["in the past"],
    );
    expect_failure(
        dir.path(),
        &with(&["--deprecate-in", "soon"]),
        &["not a duration"],
    );
    assert!(
        Proxy::operations(&proxy.requests(), "StartSnapshot").is_empty(),
        "nothing was uploaded for bad input"
    );
    expect_failure(
        dir.path(),
        &[
            "ami",
            "prune",
            "--name-prefix",
            "nomatch-",
            "--keep",
            "1",
            "--endpoint-url",
            &url,
        ],
        &["no AMI of this account named nomatch-*"],
    );
    expect_failure(
        dir.path(),
        &[
            "ami",
            "list",
            "--name-prefix",
            "x",
            "--region",
            "xx-nowhere-1",
            "--endpoint-url",
            &url,
        ],
        &["unknown region \"xx-nowhere-1\""],
    );
    expect_failure(
        dir.path(),
        &[
            "ami",
            "promote",
            "--ssm-parameter",
            "/p",
            "--image",
            "ami-12345678",
            "--region",
            "us-east-1",
            "--region",
            "eu-west-1",
            "--endpoint-url",
            &url,
        ],
        &["AMI ids are regional"],
    );
}

#[test]
fn every_publish_flag_names_its_packer_option() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(imgforge(dir.path()).args(["upload", "--help"]));
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for packer in [
        "ami_regions",
        "ami_users",
        "ami_org_arns",
        "ami_ou_arns",
        "deprecate_at",
        "snapshot_tags",
        "Packer: tags",
        "Packer: ami_name",
        "Packer: force_deregister",
    ] {
        assert!(help.contains(packer), "{packer} not in --help");
    }
    let ssm = help.split("--ssm-parameter").nth(1).unwrap();
    assert!(
        ssm.contains("Packer: none"),
        "says there is no Packer option"
    );
    // Every option's text names a Packer option (or says there is none).
    let options = help.split("Options:").nth(1).unwrap();
    let options = options.split("How it works").next().unwrap();
    let mut blocks: Vec<String> = Vec::new();
    for line in options.lines() {
        let trimmed = line.trim_start();
        // Flags start a line at 2 or 6 columns; wrapped text is indented
        // further and may itself begin with a flag's name.
        let indent = line.len() - trimmed.len();
        if indent <= 6
            && (trimmed.starts_with("--")
                || (trimmed.starts_with('-') && trimmed.chars().nth(2) == Some(',')))
        {
            blocks.push(String::new());
        }
        if let Some(block) = blocks.last_mut() {
            block.push_str(line);
            block.push('\n');
        }
    }
    assert!(blocks.len() > 30, "{} options found", blocks.len());
    for block in blocks {
        let flag = block.split_whitespace().next().unwrap().to_string();
        if ["-h,", "-v,", "-V,"].contains(&flag.as_str()) {
            continue;
        }
        assert!(
            block.contains("Packer:"),
            "{flag} does not name a Packer option:\n{block}"
        );
    }
}

#[test]
fn upload_takes_its_publish_settings_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let moto = moto();
    let proxy = Proxy::start(moto, dir.path(), &[]);
    let config = dir.path().join("imgforge.toml");
    std::fs::write(
        &config,
        "[defaults]\nregions = [\"eu-west-1\"]\nami_name = \"{image}-v1\"\n\
         ssm_parameter = \"/images/{image}/latest\"\nboot_mode = \"legacy-bios\"\n\
         architecture = \"x86_64\"\n\
         [defaults.tags]\nteam = \"infra\"\n\n\
         [[image]]\nname = \"cfg-large\"\nshare_with = [\"210987654321\"]\n\
         deprecate_in = \"30d\"\n",
    )
    .unwrap();
    let image = small_image(dir.path(), 51);
    let out = run(imgforge(dir.path())
        .arg("upload")
        .arg(&image)
        .args(["--endpoint-url", &proxy.url(), "--workers", "4", "--json"])
        .arg("--config")
        .arg(&config)
        .args(["--image", "cfg-large", "--tag", "extra=flag"]));
    let result = json_stdout(&out);
    assert_eq!(result["name"], "cfg-large-v1", "ami_name from the file");
    let requests = proxy.requests();
    let copies = Proxy::operations(&requests, "CopyImage");
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0]["region"], "eu-west-1");
    let register = &Proxy::operations(&requests, "RegisterImage")[0]["params"];
    assert_eq!(register["BootMode"], "legacy-bios");
    let tags = register.to_string();
    assert!(
        tags.contains("infra") && tags.contains("extra"),
        "file tags and flag tags add up: {tags}"
    );
    for region in ["us-east-1", "eu-west-1"] {
        assert_eq!(
            in_region(&requests, "ModifyImageAttribute", region).len(),
            1
        );
        assert_eq!(
            in_region(&requests, "EnableImageDeprecation", region).len(),
            1
        );
        let put = in_region(&requests, "PutParameter", region);
        assert_eq!(put[0]["body"]["Name"], "/images/cfg-large/latest");
    }
}

#[test]
fn a_copy_that_stays_pending_fails_its_region_after_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let moto = moto();
    let proxy = Proxy::start(moto, dir.path(), &["--image-state", "pending@eu-west-1"]);
    let image = small_image(dir.path(), 61);
    let out = upload(
        dir.path(),
        &proxy.url(),
        &image,
        "slow-v1",
        &["--copy-to", "eu-west-1", "--copy-timeout", "5s", "--json"],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("is still `pending` after 5 s (--copy-timeout)"),
        "{err}"
    );
    assert!(
        err.contains("is pending, waited 0 s of at most 5 s; next check in 2 s"),
        "progress while waiting: {err}"
    );
    assert!(
        err.contains("published in us-east-1; failed in eu-west-1"),
        "{err}"
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    let eu = result["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["region"] == "eu-west-1")
        .unwrap();
    assert!(eu["ami_id"].is_null() || eu["error"].is_string());
    assert!(
        Proxy::operations(&proxy.requests(), "DescribeImages")
            .iter()
            .any(|r| r["rewritten_state"] == "pending"),
        "the proxy made the copy pending"
    );
}
