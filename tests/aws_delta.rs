//! `imgforge upload --parent`: delta publishing against moto's server
//! through the recording proxy, and the one-read upload.
//!
//! moto accepts ParentSnapshotId and ignores it: a child snapshot reads back
//! with only the blocks written to it. So the tests read parent and child
//! back (GetSnapshotBlock, through `imgforge download` and boto3's
//! ListSnapshotBlocks) and compose them as EBS would (the child's written
//! blocks over the parent's), then compare with the new image.
//!
//! One moto for the file (`common::aws::moto()`), shared by tests running
//! in parallel: each test has AMI names (so families) of its own, and
//! `--parent auto` looks only in the test's own digest store (under its
//! HOME).
//!
//! Needs `pip install 'moto[server]'`; without it these tests fail and say so.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use common::*;
use serde_json::Value;

/// 40 MiB: blocks 0-9 of pattern 1, block 20 (pattern 2), block 40-41
/// (pattern 3), the rest holes.
fn parent_image(path: &Path) {
    make_image(
        path,
        40 * MIB,
        &[
            (0, pattern(1, 10 * BLOCK as usize)),
            (20 * BLOCK, pattern(2, BLOCK as usize)),
            (40 * BLOCK + 100, pattern(3, BLOCK as usize)),
        ],
    );
}

/// The parent with block 3 changed, block 20 now zeros (explicitly
/// written), block 41 now a hole (punched), and new data in block 60.
fn child_image(path: &Path) {
    parent_image(path);
    let mut bytes = std::fs::read(path).unwrap();
    bytes[(3 * BLOCK + 77) as usize] ^= 0xff;
    bytes[(20 * BLOCK) as usize..(21 * BLOCK) as usize].fill(0);
    bytes[(60 * BLOCK) as usize..(60 * BLOCK + 5000) as usize].copy_from_slice(&pattern(4, 5000));
    std::fs::write(path, &bytes).unwrap();
    let status = Command::new("fallocate")
        .args(["--punch-hole", "--keep-size", "--offset"])
        .arg((41 * BLOCK).to_string())
        .args(["--length", &BLOCK.to_string()])
        .arg(path)
        .status()
        .expect("fallocate (util-linux)");
    assert!(status.success());
}

fn upload(dir: &Path, url: &str, image: &Path, extra: &[&str]) -> Output {
    run(imgforge(dir)
        .arg("upload")
        .arg(image)
        .args([
            "--endpoint-url",
            url,
            "--boot-mode",
            "legacy-bios",
            // The test images are data only: no manifest, no GPT.
            "--architecture",
            "x86_64",
            "--json",
        ])
        .args(extra))
}

/// Block indices the snapshot holds, from ListSnapshotBlocks (boto3).
fn listed_blocks(moto: &Moto, snapshot: &str) -> BTreeSet<u64> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import boto3,sys,json; ebs=boto3.client('ebs', endpoint_url=sys.argv[1], \
             region_name='us-east-1', aws_access_key_id='test', aws_secret_access_key='test'); \
             print(json.dumps([int(b['BlockIndex']) for b in \
             ebs.list_snapshot_blocks(SnapshotId=sys.argv[2])['Blocks']]))",
            &moto.url(),
            snapshot,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<u64>>(&out.stdout)
        .unwrap()
        .into_iter()
        .collect()
}

fn put_indices(requests: &[Value]) -> BTreeSet<u64> {
    Proxy::operations(requests, "PutSnapshotBlock")
        .iter()
        .map(|p| p["block_index"].as_u64().unwrap())
        .collect()
}

#[test]
fn a_delta_sends_only_changed_blocks_and_parent_plus_child_read_back_as_the_new_image() {
    let dir = tempfile::tempdir().unwrap();
    let moto = moto();
    let proxy = Proxy::start(moto, dir.path(), &[]);
    let parent = dir.path().join("shop.raw");
    parent_image(&parent);
    let first = json_stdout(&upload(
        dir.path(),
        &proxy.url(),
        &parent,
        &["--name", "shop-v1"],
    ));
    let parent_snapshot = first["snapshot_id"].as_str().unwrap().to_string();
    assert_eq!(first["blocks_sent"], 13);
    assert_eq!(first["parent_snapshot_id"], Value::Null);
    // Its digests are kept in the store, keyed by region and snapshot id.
    let record_path = dir
        .path()
        .join(".local/state/imgforge/snapshots/us-east-1")
        .join(format!("{parent_snapshot}.json"));
    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(&record_path).unwrap()).unwrap();
    assert_eq!(record["family"], "shop");
    assert_eq!(record["ami_id"], first["ami_id"]);
    assert_eq!(record["digests"].as_object().unwrap().len(), 13);

    let child = dir.path().join("shop-next.raw");
    child_image(&child);
    let before = proxy.requests().len();
    let out = upload(
        dir.path(),
        &proxy.url(),
        &child,
        &["--name", "shop-v2", "--parent", &parent_snapshot],
    );
    let second = json_stdout(&out);
    let requests = proxy.requests();
    let requests = &requests[before..];
    // Block 3 changed, 20 became zeros, 41 became a hole, 60 is new.
    assert_eq!(put_indices(requests), [3, 20, 41, 60].into_iter().collect());
    assert_eq!(second["blocks_sent"], 4);
    assert_eq!(second["blocks_total"], 4);
    assert_eq!(second["data_blocks"], 12, "0-9, 40, 60");
    assert_eq!(second["blocks_unchanged"], 10, "0-2, 4-9, 40");
    assert_eq!(second["parent_snapshot_id"], parent_snapshot.as_str());
    let start = &Proxy::operations(requests, "StartSnapshot")[0]["body"];
    assert_eq!(start["ParentSnapshotId"], parent_snapshot.as_str());
    assert!(
        start.get("Encrypted").is_none(),
        "EBS refuses Encrypted with a parent"
    );
    let complete = &Proxy::operations(requests, "CompleteSnapshot")[0]["headers"];
    assert_eq!(complete["x-amz-changedblockscount"], "4");
    // Zero blocks go out as zeros with the zero block's checksum.
    let zero_put = Proxy::operations(requests, "PutSnapshotBlock")
        .into_iter()
        .find(|p| p["block_index"] == 20)
        .unwrap();
    assert_eq!(
        zero_put["checksum"].as_str().unwrap(),
        b64_sha256(&vec![0u8; BLOCK as usize])
    );

    // Read back: moto ignores the parent, so compose as EBS would.
    let child_snapshot = second["snapshot_id"].as_str().unwrap();
    let child_written = listed_blocks(moto, child_snapshot);
    assert_eq!(child_written, [3, 20, 41, 60].into_iter().collect());
    let parent_back = download(dir.path(), &moto.url(), &parent_snapshot, 40 * MIB, "p.raw");
    let child_back = download(dir.path(), &moto.url(), child_snapshot, 40 * MIB, "c.raw");
    let mut composed = std::fs::read(&parent_back).unwrap();
    let child_bytes = std::fs::read(&child_back).unwrap();
    for &index in &child_written {
        let range = (index * BLOCK) as usize..((index + 1) * BLOCK) as usize;
        composed[range.clone()].copy_from_slice(&child_bytes[range]);
    }
    assert!(
        composed == std::fs::read(&child).unwrap(),
        "parent + child blocks differ from the new image"
    );

    // The same image again against the child: nothing to send.
    let before = proxy.requests().len();
    let third = json_stdout(&upload(
        dir.path(),
        &proxy.url(),
        &child,
        &["--name", "shop-v3", "--parent", "auto"],
    ));
    assert_eq!(
        third["parent_snapshot_id"], child_snapshot,
        "auto: the family's last"
    );
    assert_eq!(third["blocks_sent"], 0);
    assert_eq!(third["blocks_unchanged"], 12);
    assert!(put_indices(&proxy.requests()[before..]).is_empty());
}

#[test]
fn parent_auto_ami_ids_and_bad_parents() {
    let dir = tempfile::tempdir().unwrap();
    let moto = moto();
    let url = moto.url();
    let image = dir.path().join("img.raw");
    parent_image(&image);
    let web1 = json_stdout(&upload(dir.path(), &url, &image, &["--name", "web-v1"]));
    let db1 = json_stdout(&upload(dir.path(), &url, &image, &["--name", "db-v1"]));
    // --parent auto orders by publication time (milliseconds).
    std::thread::sleep(std::time::Duration::from_millis(20));
    let web2 = json_stdout(&upload(
        dir.path(),
        &url,
        &image,
        &["--name", "web-v2", "--parent", "auto"],
    ));
    assert_eq!(web2["parent_snapshot_id"], web1["snapshot_id"]);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let web3 = json_stdout(&upload(
        dir.path(),
        &url,
        &image,
        &[
            "--family",
            "web",
            "--name",
            "web-canary",
            "--parent",
            "auto",
        ],
    ));
    assert_eq!(web3["parent_snapshot_id"], web2["snapshot_id"], "not db's");
    // An AMI id resolves to the snapshot imgforge registered it with.
    let from_ami = json_stdout(&upload(
        dir.path(),
        &url,
        &image,
        &[
            "--name",
            "db-v2",
            "--parent",
            db1["ami_id"].as_str().unwrap(),
        ],
    ));
    assert_eq!(from_ami["parent_snapshot_id"], db1["snapshot_id"]);
    assert_eq!(from_ami["blocks_sent"], 0);

    let fails = |extra: &[&str], needles: &[&str]| {
        let out = upload(dir.path(), &url, &image, extra);
        assert!(!out.status.success(), "{extra:?} succeeded");
        let log = stderr(&out);
        for needle in needles {
            assert!(log.contains(needle), "{extra:?}: {needle:?} not in {log}");
        }
    };
    let web1_snapshot = web1["snapshot_id"].as_str().unwrap();
    fails(
        &["--name", "x-v1", "--parent", "vol-123"],
        &["snap-...", "ami-...", "auto"],
    );
    fails(
        &["--name", "mail-v1", "--parent", "auto"],
        &["no snapshot of family \"mail\"", "without --parent"],
    );
    fails(
        &["--name", "x-v1", "--parent", "snap-0123456789abcdef0"],
        &["does not exist"],
    );
    fails(
        &["--name", "x-v1", "--parent", "ami-0123456789abcdef0"],
        &["does not exist"],
    );
    fails(
        &["--name", "x-v1", "--parent", web1_snapshot, "--encrypted"],
        &["not encrypted", "drop --encrypted"],
    );
    // Snapshots are 1 GiB here; ask for a smaller child than a 2 GiB parent.
    let big = json_stdout(&upload(
        dir.path(),
        &url,
        &image,
        &["--name", "big-v1", "--volume-size", "2"],
    ));
    fails(
        &[
            "--name",
            "big-v2",
            "--parent",
            big["snapshot_id"].as_str().unwrap(),
            "--volume-size",
            "1",
        ],
        &["smaller than parent snapshot", "--volume-size 2"],
    );
    let grown = json_stdout(&upload(
        dir.path(),
        &url,
        &image,
        &[
            "--name",
            "big-v3",
            "--parent",
            big["snapshot_id"].as_str().unwrap(),
        ],
    ));
    assert_eq!(grown["volume_size_gib"], 2, "the parent's size by default");
    // A snapshot imgforge has no digests of (the store was lost).
    std::fs::remove_dir_all(dir.path().join(".local/state/imgforge")).unwrap();
    fails(
        &["--name", "x-v1", "--parent", web1_snapshot],
        &[
            "no block digests of parent snapshot",
            "Upload without --parent",
        ],
    );
}

/// With a trusted build manifest, even an upload that names its AMI after
/// the content reads the image once; without one it must hash it first.
#[test]
fn the_image_is_read_once_with_its_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let moto = moto();
    let image = dir.path().join("once.raw");
    make_image(&image, 16 * MIB, &[(MIB, pattern(5, 3 * BLOCK as usize))]);
    let data = 3 * BLOCK;
    write_build_manifest(&image);
    let once = json_stdout(&upload(dir.path(), &moto.url(), &image, &[]));
    assert_eq!(once["bytes_read"], data, "the manifest gives the sha256");
    let sha = sha256_file(&image);
    assert_eq!(
        once["name"],
        format!("once-{}", &sha[..12]),
        "the default name carries the image's sha256"
    );
    std::fs::remove_file(format!("{}.json", image.display())).unwrap();
    let twice = json_stdout(&upload(
        dir.path(),
        &moto.url(),
        &image,
        &["--name", "once-named"],
    ));
    assert_eq!(
        twice["bytes_read"],
        2 * data,
        "no manifest: a hash pass over the data (holes are not read), then the upload"
    );
    // Without the manifest the default name is the same: the hash pass finds
    // the AMI, nothing is uploaded.
    let again = json_stdout(&upload(dir.path(), &moto.url(), &image, &[]));
    assert_eq!(again["ami_id"], once["ami_id"]);
    assert_eq!(again["bytes_read"], data);
    assert_reads_back(
        dir.path(),
        &moto.url(),
        once["snapshot_id"].as_str().unwrap(),
        16 * MIB,
        &image,
    );
}

/// A delta that fails halfway keeps its journal (digests, confirmed and
/// skipped blocks); the rerun continues the same snapshot, reads only what
/// the first run did not handle, and sends only the missing changed blocks.
#[test]
fn an_interrupted_delta_resumes_and_sends_only_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let moto = moto();
    let failing = Proxy::start(moto, dir.path(), &["--server-error", "0.5", "--seed", "3"]);
    let parent = dir.path().join("api.raw");
    parent_image(&parent);
    let first = json_stdout(&upload(
        dir.path(),
        &moto.url(),
        &parent,
        &["--name", "api-v1"],
    ));
    let parent_snapshot = first["snapshot_id"].as_str().unwrap();
    let child = dir.path().join("api-next.raw");
    child_image(&child);
    let args = [
        "--name",
        "api-v2",
        "--parent",
        parent_snapshot,
        "--workers",
        "1",
    ];
    let mut failing_args = args.to_vec();
    failing_args.extend(["--max-attempts", "1", "--keep-snapshot"]);
    let out = upload(dir.path(), &failing.url(), &child, &failing_args);
    assert!(!out.status.success(), "the proxy fails half the blocks");
    let journal: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("api-next.raw.upload-journal.json")).unwrap(),
    )
    .unwrap();
    let snapshot = journal["snapshot_id"].as_str().unwrap().to_string();
    assert_eq!(journal["params"]["parent_snapshot_id"], parent_snapshot);
    let handled: u64 = ["confirmed", "skipped"]
        .iter()
        .flat_map(|k| journal[k].as_array().unwrap().iter())
        .map(|r| r[1].as_u64().unwrap() - r[0].as_u64().unwrap())
        .sum();
    assert!(handled > 0, "the first run handled some blocks: {journal}");

    let rerun = upload(dir.path(), &moto.url(), &child, &args);
    let result = json_stdout(&rerun);
    assert!(stderr(&rerun).contains(&format!("resuming snapshot {snapshot}")));
    assert_eq!(result["snapshot_id"], snapshot.as_str());
    assert_eq!(result["blocks_total"], 4);
    assert_eq!(
        result["blocks_sent"].as_u64().unwrap()
            + result["blocks_already_confirmed"].as_u64().unwrap(),
        4
    );
    assert_eq!(result["blocks_unchanged"], 10);
    assert_eq!(
        listed_blocks(moto, &snapshot),
        [3, 20, 41, 60].into_iter().collect()
    );
}
