//! Names by content (issue 22, item 1) against moto's server, through the
//! recording proxy: every snapshot and AMI carries the image's sha256
//! (`imgforge:image-sha256`); an AMI of the name is reused only when it
//! holds the same image; another image is refused before any snapshot is
//! started (exit 2, both digests named) unless `--replace`; `{date}` in a
//! name comes from the image's manifest, not the clock.
//!
//! One moto for the file; each test uses names and images of its own.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

/// An image of `seed`'s content, with (or without) its build manifest.
fn image(dir: &Path, file: &str, seed: u64, manifest: bool) -> PathBuf {
    let path = dir.join(file);
    make_image(&path, 4 * MIB, &[(MIB, pattern(seed, 200_000))]);
    if manifest {
        write_build_manifest(&path);
    }
    path
}

/// The tags of an AMI and of its snapshots, as moto keeps them.
fn tags_of(moto: &Moto, region: &str, ami: &str) -> (Value, Value) {
    let both = boto(
        &moto.url(),
        &format!(
            "ec2 = client('ec2', '{region}')\n\
             img = ec2.describe_images(ImageIds=['{ami}'])['Images'][0]\n\
             tags = {{t['Key']: t['Value'] for t in img.get('Tags', [])}}\n\
             snaps = [m['Ebs']['SnapshotId'] for m in img['BlockDeviceMappings'] if 'Ebs' in m]\n\
             st = ec2.describe_snapshots(SnapshotIds=snaps)['Snapshots']\n\
             print(json.dumps([tags, [{{t['Key']: t['Value'] for t in s.get('Tags', [])}} \
             for s in st]]))"
        ),
    );
    (both[0].clone(), both[1].clone())
}

fn count(proxy: &Proxy, op: &str) -> usize {
    Proxy::operations(&proxy.requests(), op).len()
}

fn position(requests: &[Value], op: &str) -> usize {
    requests
        .iter()
        .position(|r| r["operation"] == op)
        .unwrap_or_else(|| panic!("no {op}"))
}

#[test]
fn an_ami_name_is_reused_only_for_the_same_image() {
    let dir = tempfile::tempdir().unwrap();
    let moto = moto();
    let proxy = Proxy::start(moto, dir.path(), &[]);
    let first_image = image(dir.path(), "names-a.raw", 1, true);
    let sha_a = sha256_file(&first_image);
    let name = ["--name", "names-same-v1"];

    let first = json_stdout(&upload_pattern(
        dir.path(),
        &proxy.url(),
        &first_image,
        &name,
    ));
    let first_ami = first["ami_id"].as_str().unwrap().to_string();
    assert_eq!(first["image_sha256"], sha_a.as_str());
    let requests = proxy.requests();
    let start = &Proxy::operations(&requests, "StartSnapshot")[0];
    assert!(
        start.to_string().contains(&sha_a),
        "StartSnapshot tags the snapshot with the digest: {start}"
    );
    let (ami_tags, snapshot_tags) = tags_of(moto, "us-east-1", &first_ami);
    assert_eq!(ami_tags["imgforge:image-sha256"], sha_a.as_str());
    assert_eq!(ami_tags["imgforge:family"], "names-same");
    for tags in snapshot_tags.as_array().unwrap() {
        assert_eq!(tags["imgforge:image-sha256"], sha_a.as_str(), "{tags}");
    }

    // The same image again: a no-op that prints the AMI (its manifest
    // gives the digest: the image is not even read).
    let starts = count(&proxy, "StartSnapshot");
    let again_out = upload_pattern(dir.path(), &proxy.url(), &first_image, &name);
    let again = json_stdout(&again_out);
    assert_eq!(again["ami_id"], first_ami.as_str());
    assert_eq!(again["reused_existing_ami"], true);
    assert_eq!(again["bytes_read"], 0);
    assert!(stderr(&again_out).contains("holds this image already"));
    assert_eq!(count(&proxy, "StartSnapshot"), starts);

    // Another image under the name: refused before any snapshot starts,
    // naming the AMI and both digests.
    let other_image = image(dir.path(), "names-b.raw", 2, false);
    let sha_b = sha256_file(&other_image);
    let refused = upload_pattern(dir.path(), &proxy.url(), &other_image, &name);
    assert_eq!(refused.status.code(), Some(2), "bad input");
    let text = stderr(&refused);
    for needle in [&first_ami, &sha_a, &sha_b, &"--replace".to_string()] {
        assert!(text.contains(needle.as_str()), "{needle} in {text}");
    }
    assert_eq!(count(&proxy, "StartSnapshot"), starts, "nothing started");
    assert_eq!(count(&proxy, "DeregisterImage"), 0);

    // --replace: the new snapshot is written first, then the old AMI is
    // deregistered and its snapshots deleted, then the new one registered.
    let log_before = proxy.requests().len();
    let replaced = json_stdout(&upload_pattern(
        dir.path(),
        &proxy.url(),
        &other_image,
        &[name[0], name[1], "--replace"],
    ));
    assert_eq!(replaced["replaced_ami_id"], first_ami.as_str());
    assert_eq!(replaced["image_sha256"], sha_b.as_str());
    assert!(
        replaced["bytes_read"].as_u64() > first["bytes_read"].as_u64(),
        "no manifest: the image is hashed for its digest, then uploaded"
    );
    let requests = proxy.requests()[log_before..].to_vec();
    let complete = position(&requests, "CompleteSnapshot");
    let deregister = position(&requests, "DeregisterImage");
    let delete = position(&requests, "DeleteSnapshot");
    let register = position(&requests, "RegisterImage");
    assert!(
        complete < deregister && deregister < delete && delete < register,
        "order: complete {complete}, deregister {deregister}, delete {delete}, register {register}"
    );
    assert_eq!(
        requests[deregister]["params"]["ImageId"],
        first_ami.as_str()
    );
    let (ami_tags, _) = tags_of(moto, "us-east-1", replaced["ami_id"].as_str().unwrap());
    assert_eq!(ami_tags["imgforge:image-sha256"], sha_b.as_str());
}

#[test]
fn an_untagged_ami_of_the_name_is_not_taken_for_this_image() {
    let dir = tempfile::tempdir().unwrap();
    let moto = moto();
    let proxy = Proxy::start(moto, dir.path(), &[]);
    // An AMI another tool registered under the name (no digest tag).
    let foreign = boto(
        &moto.url(),
        "ec2 = client('ec2')\n\
         snap = ec2.create_snapshot(VolumeId=ec2.create_volume(Size=1, \
         AvailabilityZone='us-east-1a')['VolumeId'])['SnapshotId']\n\
         ami = ec2.register_image(Name='names-foreign-v1', RootDeviceName='/dev/xvda', \
         BlockDeviceMappings=[{'DeviceName': '/dev/xvda', 'Ebs': {'SnapshotId': snap}}])\n\
         print(json.dumps(ami['ImageId']))",
    );
    let image = image(dir.path(), "names-foreign.raw", 3, true);
    let out = upload_pattern(
        dir.path(),
        &proxy.url(),
        &image,
        &["--name", "names-foreign-v1"],
    );
    assert_eq!(out.status.code(), Some(2));
    let text = stderr(&out);
    assert!(
        text.contains(foreign.as_str().unwrap()) && text.contains("no imgforge:image-sha256 tag"),
        "{text}"
    );
    assert_eq!(count(&proxy, "StartSnapshot"), 0);
}

#[test]
fn date_in_a_name_is_the_build_date_of_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let moto = moto();
    let proxy = Proxy::start(moto, dir.path(), &[]);
    let image = image(dir.path(), "names-dated.raw", 4, true);
    // The build's date (2025-12-02), not today's.
    let manifest_path = dir.path().join("names-dated.raw.json");
    let mut manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    manifest["build_time"] = 1_764_633_600u64.into();
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    let result = json_stdout(&upload_pattern(
        dir.path(),
        &proxy.url(),
        &image,
        &["--name", "names-dated-{date}"],
    ));
    assert_eq!(result["name"], "names-dated-20251202");

    // The config file's `{image}-{date}` takes the same date, and the
    // variant is the family: a rerun finds the AMI whatever the clock says.
    let config = dir.path().join("imgforge.toml");
    std::fs::write(
        &config,
        "[[image]]\nname = \"names-dated\"\nami_name = \"{image}-{date}\"\n",
    )
    .unwrap();
    let again = json_stdout(&run(imgforge(dir.path())
        .arg("upload")
        .arg(&image)
        .args(["--endpoint-url", &proxy.url(), "--json"])
        .args(["--boot-mode", "legacy-bios", "--arch", "x86_64"])
        .arg("--config")
        .arg(&config)
        .args(["--image", "names-dated"])));
    assert_eq!(again["name"], "names-dated-20251202");
    assert_eq!(again["ami_id"], result["ami_id"]);
    assert_eq!(again["reused_existing_ami"], true);
    assert_eq!(again["family"], "names-dated", "the variant's name");

    // Without a manifest, {date} has nothing to come from: bad input.
    let bare = dir.path().join("names-bare.raw");
    make_image(&bare, 4 * MIB, &[(0, pattern(5, 1000))]);
    let out = upload_pattern(dir.path(), &proxy.url(), &bare, &["--name", "bare-{date}"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("build manifest"), "{}", stderr(&out));
}

#[test]
fn a_copy_region_holding_another_image_is_refused_or_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let moto = moto();
    let proxy = Proxy::start(moto, dir.path(), &[]);
    let name = "names-copies-v1";
    let old = image(dir.path(), "names-copies-old.raw", 6, true);
    let new = image(dir.path(), "names-copies-new.raw", 7, true);
    let copy = ["--name", name, "--copy-to", "eu-west-1"];
    let first = json_stdout(&upload_pattern(dir.path(), &proxy.url(), &old, &copy));
    let old_copy = first["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["region"] == "eu-west-1")
        .unwrap()["ami_id"]
        .clone();
    // Only the source region's AMI is gone (say, deregistered by hand): the
    // copy region still serves the old image under the name.
    boto(
        &moto.url(),
        &format!(
            "client('ec2').deregister_image(ImageId='{}')\nprint('null')",
            first["ami_id"].as_str().unwrap()
        ),
    );
    let starts = count(&proxy, "StartSnapshot");
    let out = upload_pattern(dir.path(), &proxy.url(), &new, &copy);
    assert_eq!(out.status.code(), Some(2));
    let text = stderr(&out);
    assert!(
        text.contains("eu-west-1") && text.contains(old_copy.as_str().unwrap()),
        "{text}"
    );
    assert_eq!(count(&proxy, "StartSnapshot"), starts, "refused first");

    let replaced = json_stdout(&upload_pattern(
        dir.path(),
        &proxy.url(),
        &new,
        &[copy[0], copy[1], copy[2], copy[3], "--replace"],
    ));
    let region = replaced["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["region"] == "eu-west-1")
        .unwrap()
        .clone();
    assert_eq!(region["origin"], "copied", "{region}");
    assert_ne!(region["ami_id"], old_copy);
    let requests = proxy.requests();
    assert!(
        Proxy::operations(&requests, "DeregisterImage")
            .iter()
            .any(|r| r["region"] == "eu-west-1" && r["params"]["ImageId"] == old_copy),
        "the old copy is deregistered"
    );
    let (tags, _) = tags_of(moto, "eu-west-1", region["ami_id"].as_str().unwrap());
    assert_eq!(tags["imgforge:image-sha256"], sha256_file(&new).as_str());

    // The same image again: nothing uploaded, the copies completed as for
    // a fresh upload (here: a new region).
    let starts = count(&proxy, "StartSnapshot");
    let more = json_stdout(&upload_pattern(
        dir.path(),
        &proxy.url(),
        &new,
        &["--name", name, "--copy-to", "eu-west-1,us-west-2"],
    ));
    assert_eq!(more["reused_existing_ami"], true);
    assert_eq!(count(&proxy, "StartSnapshot"), starts);
    let origins: Vec<(&str, &str)> = more["regions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["region"].as_str().unwrap(), r["origin"].as_str().unwrap()))
        .collect();
    assert_eq!(
        origins,
        [
            ("eu-west-1", "reused"),
            ("us-east-1", "source"),
            ("us-west-2", "copied")
        ]
    );
}

/// `--copy-method upload` (item 7): each copy region gets the image written
/// into its own snapshot (no CopyImage), registered under the name, holding
/// the same image.
#[test]
fn copy_method_upload_writes_every_region_itself() {
    let dir = tempfile::tempdir().unwrap();
    let moto = moto();
    let proxy = Proxy::start(moto, dir.path(), &[]);
    let image = image(dir.path(), "names-regional.raw", 8, true);
    let result = json_stdout(&upload_pattern(
        dir.path(),
        &proxy.url(),
        &image,
        &[
            "--name",
            "names-regional-v1",
            "--copy-to",
            "eu-west-1,us-west-2",
            "--copy-method",
            "upload",
        ],
    ));
    let requests = proxy.requests();
    assert!(Proxy::operations(&requests, "CopyImage").is_empty());
    let mut started: Vec<&str> = Proxy::operations(&requests, "StartSnapshot")
        .iter()
        .map(|r| r["region"].as_str().unwrap())
        .collect();
    started.sort();
    assert_eq!(started, ["eu-west-1", "us-east-1", "us-west-2"]);
    let sha = sha256_file(&image);
    for region in result["regions"].as_array().unwrap() {
        let name = region["region"].as_str().unwrap();
        let expected = if name == "us-east-1" {
            "source"
        } else {
            "uploaded"
        };
        assert_eq!(region["origin"], expected, "{region}");
        let (tags, snapshot_tags) = tags_of(moto, name, region["ami_id"].as_str().unwrap());
        assert_eq!(tags["imgforge:image-sha256"], sha.as_str());
        assert_eq!(snapshot_tags[0]["imgforge:image-sha256"], sha.as_str());
    }
}
