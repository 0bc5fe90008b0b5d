//! `imgforge upload` and `imgforge download` against moto's server (the
//! local AWS peer), through a recording, fault-injecting proxy
//! (tests/support/aws_proxy.py). Real SDK, real HTTP.
//!
//! One moto for the file (`common::aws::moto()`), shared by tests running
//! in parallel: each test has a proxy of its own (what it asserts on the
//! wire is only its own requests), its own images and AMI names, and reads
//! back only the snapshots it made.
//!
//! Needs `pip install 'moto[server]'`; without it these tests fail and say so.

mod common;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn journal_confirmed(journal: &Value) -> BTreeSet<u64> {
    journal["confirmed"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r[0].as_u64().unwrap()..r[1].as_u64().unwrap())
        .collect()
}

/// An image with data in a few extents, a block of explicit zeros, holes,
/// and a size that is not a multiple of 512 (the last block is padded).
fn sample_image(dir: &Path) -> (PathBuf, u64, Vec<u64>) {
    let path = dir.join("sample.raw");
    let size = 96 * MIB + 1000;
    make_image(
        &path,
        size,
        &[
            (0, pattern(1, 3 * MIB as usize + 17)),
            (10 * MIB + 4096, pattern(2, 200_000)),
            (20 * MIB, vec![0u8; BLOCK as usize]), // data to the file system, zeros to EBS
            (50 * MIB - 10, pattern(3, 20)),       // straddles two blocks
            (96 * MIB + 100, pattern(4, 900)),     // the partial last block
        ],
    );
    // Blocks holding non-zero bytes.
    let expected = vec![0, 1, 2, 3, 4, 5, 6, 20, 99, 100, 192];
    (path, size, expected)
}

#[test]
fn round_trip_is_byte_identical_and_register_image_carries_what_was_asked() {
    let dir = tempfile::tempdir().unwrap();
    let moto = moto();
    let proxy = Proxy::start(moto, dir.path(), &[]);
    let (image, size, expected_blocks) = sample_image(dir.path());

    let out = run(imgforge(dir.path())
        .arg("upload")
        .arg(&image)
        .args(["--endpoint-url", &proxy.url()])
        .args(["--name", "imgforge-test-v1", "--description", "test image"])
        .args(["--tag", "team=infra", "--tag", "purpose=test"])
        .args([
            "--boot-mode",
            "uefi-preferred",
            "--architecture",
            "arm64",
            "--tpm",
        ])
        .args(["--volume-size", "2", "--workers", "8", "--json"]));
    let result = json_stdout(&out);
    assert!(
        stderr(&out).contains("not a multiple of 512"),
        "the padding is announced"
    );
    let ami = result["ami_id"].as_str().unwrap();
    let snapshot = result["snapshot_id"].as_str().unwrap();
    assert!(ami.starts_with("ami-"), "{ami}");
    assert!(snapshot.starts_with("snap-"), "{snapshot}");
    assert_eq!(result["blocks_total"], expected_blocks.len());
    assert_eq!(result["blocks_sent"], expected_blocks.len());
    assert_eq!(result["resumed"], false);

    let requests = proxy.requests();
    // StartSnapshot: size, tags, timeout, a token derived from the content.
    let starts = Proxy::operations(&requests, "StartSnapshot");
    assert_eq!(starts.len(), 1);
    let start = &starts[0]["body"];
    assert_eq!(start["VolumeSize"], 2);
    assert_eq!(start["Description"], "test image");
    assert_eq!(start["Timeout"], 240);
    assert_eq!(start["ClientToken"].as_str().unwrap().len(), 64);
    let tags: Vec<(String, String)> = start["Tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["Key"].as_str().unwrap().into(),
                t["Value"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        tags,
        vec![
            ("team".into(), "infra".into()),
            ("purpose".into(), "test".into()),
            ("imgforge:image-sha256".into(), sha256_file(&image)),
            ("imgforge:family".into(), "imgforge-test".into()),
        ],
        "the snapshot names the image it holds and its family"
    );

    // PutSnapshotBlock: only non-zero data blocks, 524288 bytes each, with
    // the SHA-256 of what the image holds there.
    let bytes = std::fs::read(&image).unwrap();
    let puts = Proxy::operations(&requests, "PutSnapshotBlock");
    let mut indices: Vec<u64> = puts
        .iter()
        .map(|p| p["block_index"].as_u64().unwrap())
        .collect();
    indices.sort();
    assert_eq!(indices, expected_blocks);
    let mut digests = Vec::new();
    for &index in &expected_blocks {
        let put = puts.iter().find(|p| p["block_index"] == index).unwrap();
        let block = image_block(&bytes, index);
        assert_eq!(put["data_length"], "524288");
        assert_eq!(put["body_length"], BLOCK);
        assert_eq!(put["checksum"].as_str().unwrap(), b64_sha256(&block));
        assert_eq!(put["headers"]["x-amz-checksum-algorithm"], "SHA256");
        digests.extend_from_slice(&Sha256::digest(&block));
    }

    // CompleteSnapshot: the block count and the LINEAR aggregate.
    let completes = Proxy::operations(&requests, "CompleteSnapshot");
    assert_eq!(completes.len(), 1);
    let headers = &completes[0]["headers"];
    assert_eq!(
        headers["x-amz-changedblockscount"],
        expected_blocks.len().to_string()
    );
    assert_eq!(
        headers["x-amz-checksum"].as_str().unwrap(),
        b64_sha256(&digests)
    );
    assert_eq!(headers["x-amz-checksum-aggregation-method"], "LINEAR");

    // RegisterImage, as sent on the wire (moto keeps only Name and Description).
    let registers = Proxy::operations(&requests, "RegisterImage");
    assert_eq!(registers.len(), 1);
    let p = &registers[0]["params"];
    for (key, value) in [
        ("Name", "imgforge-test-v1"),
        ("Description", "test image"),
        ("VirtualizationType", "hvm"),
        ("Architecture", "arm64"),
        ("RootDeviceName", "/dev/xvda"),
        ("BlockDeviceMapping.1.DeviceName", "/dev/xvda"),
        ("BlockDeviceMapping.1.Ebs.SnapshotId", snapshot),
        ("BlockDeviceMapping.1.Ebs.VolumeType", "gp3"),
        ("BlockDeviceMapping.1.Ebs.VolumeSize", "2"),
        ("BlockDeviceMapping.1.Ebs.DeleteOnTermination", "true"),
        ("EnaSupport", "true"),
        ("ImdsSupport", "v2.0"),
        ("BootMode", "uefi-preferred"),
        ("TpmSupport", "v2.0"),
        ("TagSpecification.1.ResourceType", "image"),
        ("TagSpecification.1.Tag.1.Key", "team"),
        ("TagSpecification.1.Tag.1.Value", "infra"),
    ] {
        assert_eq!(p[key], value, "RegisterImage {key}");
    }

    // Outputs.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("ami-latest.txt")).unwrap(),
        format!("{ami}\n")
    );
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("packer-manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        manifest["builds"][0]["artifact_id"],
        format!("us-east-1:{ami}")
    );
    assert_eq!(
        manifest["last_run_uuid"],
        manifest["builds"][0]["packer_run_uuid"]
    );
    assert!(
        !dir.path().join("sample.raw.upload-journal.json").exists(),
        "the journal is removed after success"
    );

    // The round trip: byte-identical, and unwritten blocks stay holes.
    let back = assert_reads_back(dir.path(), &proxy.url(), snapshot, size, &image);
    let allocated = std::fs::metadata(&back).unwrap().blocks() * 512;
    assert!(
        allocated <= (expected_blocks.len() as u64 + 2) * BLOCK,
        "download wrote {allocated} bytes for a sparse image"
    );
}

/// With a trusted build manifest the token is derived from the manifest's
/// sha256 and the parameters; without one, from the sha256 of a pass over
/// the image (the digest tagged on the snapshot).
#[test]
fn client_token_is_derived_from_the_manifest_and_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let moto = moto();
    let proxy = Proxy::start(moto, dir.path(), &[]);
    let image = dir.path().join("token.raw");
    make_image(&image, 4 * MIB, &[(0, pattern(9, 70_000))]);
    write_build_manifest(&image);
    let upload = |extra: &[&str]| {
        let out = run(imgforge(dir.path())
            .arg("upload")
            .arg(&image)
            .args(["--endpoint-url", &proxy.url(), "--no-register", "--json"])
            .args(extra));
        json_stdout(&out)
    };
    let first = upload(&[]);
    assert!(
        first["snapshot_id"].as_str().unwrap().starts_with("snap-"),
        "--no-register makes only the snapshot"
    );
    assert_eq!(first["bytes_read"], BLOCK, "one block of data, read once");
    upload(&[]);
    upload(&["--tag", "x=y"]);
    std::thread::sleep(Duration::from_millis(20));
    make_image(&image, 4 * MIB, &[(0, pattern(10, 70_000))]);
    write_build_manifest(&image);
    upload(&[]);
    // Modified after its manifest: the manifest is not trusted; the image is hashed.
    std::thread::sleep(Duration::from_millis(20));
    make_image(&image, 4 * MIB, &[(0, pattern(10, 70_000))]);
    upload(&[]);
    upload(&[]);
    let tokens: Vec<String> = Proxy::operations(&proxy.requests(), "StartSnapshot")
        .iter()
        .map(|s| s["body"]["ClientToken"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(tokens.len(), 6);
    assert_eq!(
        tokens[0], tokens[1],
        "same image, same parameters: same token"
    );
    assert_ne!(tokens[0], tokens[2], "other parameters: other token");
    assert_ne!(tokens[0], tokens[3], "other content: other token");
    assert_ne!(tokens[4], tokens[3], "untrusted manifest: not its token");
    assert_eq!(
        tokens[4], tokens[5],
        "no trusted manifest: the token derives from the image's own sha256"
    );
    assert!(Proxy::operations(&proxy.requests(), "RegisterImage").is_empty());
}

#[test]
fn a_completed_snapshot_answered_for_the_token_is_reused() {
    let dir = tempfile::tempdir().unwrap();
    let moto = moto();
    let proxy = Proxy::start(moto, dir.path(), &["--start-status", "completed"]);
    let image = dir.path().join("done.raw");
    make_image(&image, 4 * MIB, &[(0, pattern(81, 700_000))]);
    let out = run(imgforge(dir.path()).arg("upload").arg(&image).args([
        "--endpoint-url",
        &proxy.url(),
        "--no-register",
        "--json",
    ]));
    let result = json_stdout(&out);
    assert!(stderr(&out).contains("holds this image already"));
    assert_eq!(result["blocks_total"], 2);
    assert_eq!(result["blocks_sent"], 0);
    let requests = proxy.requests();
    assert!(Proxy::operations(&requests, "PutSnapshotBlock").is_empty());
    assert!(Proxy::operations(&requests, "CompleteSnapshot").is_empty());
}

#[test]
fn kill_9_halfway_then_rerun_resumes_the_same_snapshot_and_sends_only_missing_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let moto = moto();
    // Slow blocks make the upload long enough to kill halfway.
    let proxy = Proxy::start(moto, dir.path(), &["--delay-ms", "60"]);
    let image = dir.path().join("resume.raw");
    let total_blocks = 120u64;
    make_image(
        &image,
        256 * MIB,
        &[
            (0, pattern(11, (total_blocks / 2 * BLOCK) as usize)),
            (128 * MIB, pattern(12, (total_blocks / 2 * BLOCK) as usize)),
        ],
    );
    let journal_path = dir.path().join("resume.raw.upload-journal.json");
    let args = |cmd: &mut Command| {
        cmd.arg("upload")
            .arg(&image)
            .args(["--endpoint-url", &proxy.url(), "--name", "resume-test"])
            .args(["--boot-mode", "uefi", "--architecture", "x86_64"])
            .args(["--workers", "2", "--json"]);
    };

    let mut first = imgforge(dir.path());
    args(&mut first);
    let mut child = first
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "the upload never got going");
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the kill"
        );
        if let Ok(text) = std::fs::read_to_string(&journal_path)
            && let Ok(journal) = serde_json::from_str::<Value>(&text)
            && journal_confirmed(&journal).len() >= 30
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let journal: Value =
        serde_json::from_str(&std::fs::read_to_string(&journal_path).unwrap()).unwrap();
    let snapshot = journal["snapshot_id"].as_str().unwrap().to_string();
    let confirmed = journal_confirmed(&journal);
    assert!(confirmed.len() >= 30 && (confirmed.len() as u64) < total_blocks);
    // Requests the killed process had in flight are still logged by the
    // proxy once their (delayed) answer is sent; let them drain first.
    let mut seen_before = proxy.requests().len();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = proxy.requests().len();
        if now == seen_before {
            break;
        }
        seen_before = now;
    }

    let mut rerun = imgforge(dir.path());
    args(&mut rerun);
    let out = run(&mut rerun);
    let result = json_stdout(&out);
    assert!(stderr(&out).contains(&format!("resuming snapshot {snapshot}")));
    assert_eq!(result["snapshot_id"], snapshot.as_str(), "same snapshot");
    assert_eq!(result["resumed"], true);
    assert_eq!(result["blocks_total"], total_blocks);
    assert_eq!(result["blocks_already_confirmed"], confirmed.len());
    let missing = total_blocks - confirmed.len() as u64;
    assert_eq!(result["blocks_sent"], missing);

    let requests = proxy.requests();
    let rerun_requests = &requests[seen_before..];
    assert!(Proxy::operations(rerun_requests, "StartSnapshot").is_empty());
    let sent: Vec<u64> = Proxy::operations(rerun_requests, "PutSnapshotBlock")
        .iter()
        .map(|p| p["block_index"].as_u64().unwrap())
        .collect();
    assert_eq!(
        sent.len() as u64,
        missing,
        "only the missing blocks are sent"
    );
    assert!(sent.iter().all(|i| !confirmed.contains(i)));

    assert_reads_back(dir.path(), &moto.url(), &snapshot, 256 * MIB, &image);
}

#[test]
fn throttling_5xx_and_dropped_connections_are_retried_visibly() {
    let dir = tempfile::tempdir().unwrap();
    let moto = moto();
    let proxy = Proxy::start(
        moto,
        dir.path(),
        &[
            "--throttle",
            "0.15",
            "--server-error",
            "0.1",
            "--drop",
            "0.1",
            "--seed",
            "7",
        ],
    );
    let image = dir.path().join("faults.raw");
    make_image(
        &image,
        64 * MIB,
        &[
            (0, pattern(21, 20 * MIB as usize)),
            (40 * MIB, pattern(22, 10 * MIB as usize)),
        ],
    );
    let out = run(imgforge(dir.path())
        .arg("upload")
        .arg(&image)
        .args(["--endpoint-url", &proxy.url(), "--no-register", "--json"])
        .args(["--workers", "16", "--max-attempts", "20"]));
    let result = json_stdout(&out);
    let requests = proxy.requests();
    let puts = Proxy::operations(&requests, "PutSnapshotBlock");
    let count = |fault: &str| puts.iter().filter(|p| p["fault"] == fault).count();
    let (throttled, failed, dropped) = (count("throttle"), count("server-error"), count("drop"));
    assert!(
        throttled > 0 && failed > 0 && dropped > 0,
        "faults were injected"
    );

    let log = stderr(&out);
    let retries = |needle: &str| {
        log.lines()
            .filter(|l| l.contains("; retry ") && l.contains(needle))
            .count()
    };
    assert_eq!(retries("ThrottlingException"), throttled);
    assert_eq!(retries("InternalServerException"), failed);
    assert_eq!(
        log.lines().filter(|l| l.contains("; retry ")).count(),
        throttled + failed + dropped,
        "every retry is in the log"
    );
    assert_eq!(result["blocks_total"], 60);

    let snapshot = result["snapshot_id"].as_str().unwrap();
    assert_reads_back(dir.path(), &proxy.url(), snapshot, 64 * MIB, &image);
}

#[test]
fn access_denied_is_not_retried_and_the_snapshot_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let moto = moto();
    let proxy = Proxy::start(moto, dir.path(), &["--access-denied", "1"]);
    let image = dir.path().join("denied.raw");
    make_image(&image, 8 * MIB, &[(0, pattern(31, 3 * MIB as usize))]);
    let out = run(imgforge(dir.path()).arg("upload").arg(&image).args([
        "--endpoint-url",
        &proxy.url(),
        "--no-register",
        "--workers",
        "1",
    ]));
    assert!(!out.status.success());
    let log = stderr(&out);
    assert!(log.contains("AccessDeniedException"), "{log}");
    assert!(!log.contains("; retry "), "no retry on AccessDenied");
    assert!(log.contains("deleted snapshot"), "{log}");
    let requests = proxy.requests();
    assert_eq!(Proxy::operations(&requests, "PutSnapshotBlock").len(), 1);
    let snapshot = Proxy::operations(&requests, "DeleteSnapshot");
    assert_eq!(snapshot.len(), 1);
    // The journal stays for the next run, with a new attempt (and token).
    let journal: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("denied.raw.upload-journal.json")).unwrap(),
    )
    .unwrap();
    assert!(journal["snapshot_id"].is_null());
    assert_eq!(journal["attempt"], 2);
}

#[test]
fn a_vanished_snapshot_is_detected_and_the_upload_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let moto = moto();
    let failing = Proxy::start(moto, dir.path(), &["--server-error", "1"]);
    let image = dir.path().join("gone.raw");
    make_image(&image, 8 * MIB, &[(0, pattern(41, 2 * MIB as usize))]);
    let upload = |url: &str, extra: &[&str]| {
        run(imgforge(dir.path())
            .arg("upload")
            .arg(&image)
            .args(["--endpoint-url", url, "--no-register", "--json"])
            .args(["--max-attempts", "2"])
            .args(extra))
    };
    // A failure with --keep-snapshot keeps the snapshot and the journal.
    let out = upload(&failing.url(), &["--keep-snapshot"]);
    assert!(!out.status.success());
    let log = stderr(&out);
    assert!(
        log.contains("InternalServerException") && log.contains("kept snapshot"),
        "{log}"
    );
    let journal_path = dir.path().join("gone.raw.upload-journal.json");
    let journal: Value =
        serde_json::from_str(&std::fs::read_to_string(&journal_path).unwrap()).unwrap();
    let old = journal["snapshot_id"].as_str().unwrap().to_string();

    // Someone (or EBS's Timeout) removes the pending snapshot.
    let deleted = Command::new("python3")
        .args([
            "-c",
            "import boto3,sys; boto3.client('ec2', endpoint_url=sys.argv[1], region_name='us-east-1', \
             aws_access_key_id='test', aws_secret_access_key='test').delete_snapshot(SnapshotId=sys.argv[2])",
            &moto.url(),
            &old,
        ])
        .status()
        .unwrap();
    assert!(
        deleted.success(),
        "boto3 (installed with moto) deletes the snapshot"
    );

    let out = upload(&moto.url(), &[]);
    let result = json_stdout(&out);
    let log = stderr(&out);
    assert!(
        log.contains("no longer exists") && log.contains("starting over"),
        "{log}"
    );
    assert_ne!(result["snapshot_id"], old.as_str());
    let snapshot = result["snapshot_id"].as_str().unwrap();
    assert_reads_back(dir.path(), &moto.url(), snapshot, 8 * MIB, &image);
}

#[test]
fn a_snapshot_in_error_state_is_replaced_and_an_error_after_completion_fails_fast() {
    let dir = tempfile::tempdir().unwrap();
    let moto = moto();
    let failing = Proxy::start(moto, dir.path(), &["--server-error", "1"]);
    let image = dir.path().join("err.raw");
    make_image(&image, 8 * MIB, &[(0, pattern(71, 2 * MIB as usize))]);
    let upload = |url: &str, extra: &[&str]| {
        run(imgforge(dir.path())
            .arg("upload")
            .arg(&image)
            .args(["--endpoint-url", url, "--no-register"])
            .args(["--max-attempts", "2"])
            .args(extra))
    };
    let out = upload(&failing.url(), &["--keep-snapshot"]);
    assert!(!out.status.success());
    let journal_path = dir.path().join("err.raw.upload-journal.json");
    let journal: Value =
        serde_json::from_str(&std::fs::read_to_string(&journal_path).unwrap()).unwrap();
    let old = journal["snapshot_id"].as_str().unwrap().to_string();

    // EC2 now reports every snapshot as `error` (as a timed-out one would be).
    let erroring = Proxy::start(moto, dir.path(), &["--snapshot-state", "error"]);
    let out = upload(&erroring.url(), &[]);
    assert!(!out.status.success());
    let log = stderr(&out);
    assert!(
        log.contains(&format!("snapshot {old} is in state `error`"))
            && log.contains("starting over"),
        "{log}"
    );
    let requests = erroring.requests();
    let starts = Proxy::operations(&requests, "StartSnapshot");
    assert_eq!(starts.len(), 1, "a new snapshot");
    assert_ne!(
        starts[0]["body"]["ClientToken"], journal["client_token"],
        "with a new token, or EBS would answer the failed snapshot again"
    );
    // The new snapshot "fails" too: reported at once, then deleted.
    assert!(
        log.contains("went to state `error` after CompleteSnapshot"),
        "{log}"
    );
    assert_eq!(Proxy::operations(&requests, "DescribeSnapshots").len(), 2);
    let deleted: Vec<&Value> = Proxy::operations(&requests, "DeleteSnapshot");
    assert_eq!(deleted.len(), 2, "the old snapshot and the failed new one");
    assert_eq!(deleted[0]["params"]["SnapshotId"], old.as_str());
    let journal: Value =
        serde_json::from_str(&std::fs::read_to_string(&journal_path).unwrap()).unwrap();
    assert!(journal["snapshot_id"].is_null());
    assert_eq!(
        journal["attempt"], 3,
        "each failed snapshot moved the token on"
    );
}

#[test]
fn a_journal_for_a_changed_image_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let moto = moto();
    let failing = Proxy::start(moto, dir.path(), &["--server-error", "1"]);
    let recording = Proxy::start(moto, dir.path(), &[]);
    let image = dir.path().join("changed.raw");
    make_image(&image, 8 * MIB, &[(0, pattern(91, 2 * MIB as usize))]);
    let out = run(imgforge(dir.path())
        .arg("upload")
        .arg(&image)
        .args(["--endpoint-url", &failing.url(), "--no-register"])
        .args(["--max-attempts", "1", "--keep-snapshot"]));
    assert!(!out.status.success());
    let journal: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("changed.raw.upload-journal.json")).unwrap(),
    )
    .unwrap();
    let old = journal["snapshot_id"].as_str().unwrap().to_string();

    // New content (and mtime): the old journal's digests no longer apply.
    std::thread::sleep(Duration::from_millis(20));
    make_image(&image, 8 * MIB, &[(MIB, pattern(92, 3 * MIB as usize))]);
    let out = run(imgforge(dir.path()).arg("upload").arg(&image).args([
        "--endpoint-url",
        &recording.url(),
        "--no-register",
        "--json",
    ]));
    let result = json_stdout(&out);
    let log = stderr(&out);
    assert!(
        log.contains("another image or with other parameters"),
        "{log}"
    );
    assert_ne!(result["snapshot_id"], old.as_str());
    assert_eq!(result["blocks_sent"], 6);
    let deletes = Proxy::operations(&recording.requests(), "DeleteSnapshot")
        .iter()
        .map(|d| d["params"]["SnapshotId"].as_str().unwrap().to_string())
        .collect::<Vec<_>>();
    assert_eq!(
        deletes,
        vec![old],
        "the abandoned pending snapshot is deleted"
    );
    let snapshot = result["snapshot_id"].as_str().unwrap();
    assert_reads_back(dir.path(), &moto.url(), snapshot, 8 * MIB, &image);
}

#[test]
fn encrypted_uploads_write_zero_blocks_too() {
    let dir = tempfile::tempdir().unwrap();
    let moto = moto();
    let proxy = Proxy::start(moto, dir.path(), &[]);
    let image = dir.path().join("enc.raw");
    make_image(&image, 8 * MIB, &[(3 * MIB, pattern(51, 1000))]);
    // A key that exists (the ARN is checked with KMS DescribeKey first).
    let created = Command::new("python3")
        .args([
            "-c",
            "import boto3,sys; print(boto3.client('kms', endpoint_url=sys.argv[1], \
             region_name='us-east-1', aws_access_key_id='test', aws_secret_access_key='test')\
             .create_key()['KeyMetadata']['Arn'])",
            &moto.url(),
        ])
        .output()
        .unwrap();
    assert!(created.status.success());
    let key = String::from_utf8(created.stdout)
        .unwrap()
        .trim()
        .to_string();
    let key = key.as_str();
    let out = run(imgforge(dir.path())
        .arg("upload")
        .arg(&image)
        .args(["--endpoint-url", &proxy.url(), "--no-register", "--json"])
        .args(["--encrypted", "--kms-key-id", key]));
    let result = json_stdout(&out);
    assert_eq!(result["blocks_total"], 16, "every block, holes included");
    let requests = proxy.requests();
    let start = &Proxy::operations(&requests, "StartSnapshot")[0]["body"];
    assert_eq!(start["Encrypted"], true);
    assert_eq!(start["KmsKeyArn"], key);
    assert_eq!(Proxy::operations(&requests, "PutSnapshotBlock").len(), 16);
    let snapshot = result["snapshot_id"].as_str().unwrap();
    assert_reads_back(dir.path(), &proxy.url(), snapshot, 8 * MIB, &image);
}

#[test]
fn ctrl_c_stops_cleanly_and_keeps_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let moto = moto();
    let proxy = Proxy::start(moto, dir.path(), &["--delay-ms", "50"]);
    let image = dir.path().join("int.raw");
    make_image(&image, 64 * MIB, &[(0, pattern(61, 40 * MIB as usize))]);
    let journal_path = dir.path().join("int.raw.upload-journal.json");
    let mut cmd = imgforge(dir.path());
    cmd.arg("upload").arg(&image).args([
        "--endpoint-url",
        &proxy.url(),
        "--no-register",
        "--workers",
        "2",
    ]);
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Proxy::operations(&proxy.requests(), "PutSnapshotBlock").len() < 10 {
        assert!(Instant::now() < deadline, "the upload never got going");
        std::thread::sleep(Duration::from_millis(50));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(stderr(&out).contains("rerun the same command to resume"));
    let journal: Value =
        serde_json::from_str(&std::fs::read_to_string(&journal_path).unwrap()).unwrap();
    assert!(!journal_confirmed(&journal).is_empty());
    assert!(Proxy::operations(&proxy.requests(), "DeleteSnapshot").is_empty());
}

// Bad input: every case fails with a message that says what to do.

fn expect_failure(dir: &Path, args: &[&str], needles: &[&str]) -> Output {
    let out = run(imgforge(dir).args(args));
    assert!(!out.status.success(), "should fail: {args:?}");
    let log = stderr(&out);
    for needle in needles {
        assert!(log.contains(needle), "{needle:?} missing from: {log}");
    }
    out
}

#[test]
fn bad_images_and_flags_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("empty.raw"), b"").unwrap();
    make_image(&d.join("ok.raw"), 3 * (1 << 30) / 2, &[(0, pattern(1, 10))]);
    let url = ["--endpoint-url", "http://127.0.0.1:9"];
    expect_failure(d, &["upload", d.to_str().unwrap()], &["is a directory"]);
    expect_failure(
        d,
        &["upload", "missing.raw"],
        &["missing.raw", "No such file"],
    );
    expect_failure(d, &["upload", "empty.raw"], &["empty.raw", "is empty"]);
    expect_failure(
        d,
        &["upload", "ok.raw", "--volume-size", "1", url[0], url[1]],
        &[
            "--volume-size 1 GiB is smaller than the image",
            "--volume-size 2",
        ],
    );
    expect_failure(
        d,
        &["upload", "ok.raw", "--kms-key-id", "k"],
        &["--encrypted"],
    );
    expect_failure(d, &["upload", "ok.raw", "--tag", "novalue"], &["KEY=VALUE"]);
    expect_failure(
        d,
        &["upload", "ok.raw", "--endpoint-url", "127.0.0.1:5000"],
        &["not an http:// or https:// URL"],
    );
    expect_failure(
        d,
        &[
            "upload",
            "ok.raw",
            "--tpm",
            "--boot-mode",
            "legacy-bios",
            url[0],
            url[1],
        ],
        &["--tpm needs UEFI"],
    );
}

#[test]
fn missing_credentials_or_region_say_how_to_set_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_image(&d.join("ok.raw"), MIB, &[(0, pattern(1, 10))]);
    let out = run(imgforge(d)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .args(["upload", "ok.raw", "--endpoint-url", "http://127.0.0.1:9"]));
    assert!(!out.status.success());
    let log = stderr(&out);
    assert!(
        log.contains("no AWS credentials") && log.contains("AWS_ACCESS_KEY_ID"),
        "{log}"
    );
    assert!(log.contains("--profile"), "{log}");

    let out = run(imgforge(d).env_remove("AWS_REGION").args([
        "upload",
        "ok.raw",
        "--endpoint-url",
        "http://127.0.0.1:9",
    ]));
    assert!(!out.status.success());
    let log = stderr(&out);
    assert!(
        log.contains("no AWS region") && log.contains("--region"),
        "{log}"
    );
}

#[test]
fn credentials_and_region_come_from_a_named_profile() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let moto = moto();
    make_image(&d.join("ok.raw"), MIB, &[(0, pattern(1, 10))]);
    std::fs::write(
        d.join("credentials"),
        "[builder]\naws_access_key_id = test\naws_secret_access_key = test\n",
    )
    .unwrap();
    std::fs::write(d.join("config"), "[profile builder]\nregion = eu-west-1\n").unwrap();
    let out = run(imgforge(d)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_REGION")
        .env("AWS_SHARED_CREDENTIALS_FILE", d.join("credentials"))
        .env("AWS_CONFIG_FILE", d.join("config"))
        .args([
            "upload",
            "ok.raw",
            "--profile",
            "builder",
            "--no-register",
            "--json",
        ])
        .args(["--endpoint-url", &moto.url()]));
    let result = json_stdout(&out);
    assert_eq!(result["region"], "eu-west-1");
}

#[test]
fn refused_and_silent_endpoints_fail_in_bounded_time() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_image(&d.join("ok.raw"), MIB, &[(0, pattern(1, 10))]);

    // Nothing listens: connection refused, retried, then a clear error.
    let refused = free_port();
    let started = Instant::now();
    let out = run(imgforge(d)
        .args([
            "upload",
            "ok.raw",
            "--boot-mode",
            "uefi",
            "--architecture",
            "x86_64",
        ])
        .args([
            "--endpoint-url",
            &format!("http://127.0.0.1:{refused}"),
            "--max-attempts",
            "3",
        ]));
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(30));
    let log = stderr(&out);
    assert!(log.contains("DescribeImages failed"), "{log}");
    assert!(
        log.contains("Connection refused") || log.contains("ConnectionError"),
        "{log}"
    );

    // Accepts connections, never answers: the attempt timeout ends it.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let started = Instant::now();
    let out = run(imgforge(d)
        .args([
            "upload",
            "ok.raw",
            "--boot-mode",
            "uefi",
            "--architecture",
            "x86_64",
        ])
        .args([
            "--endpoint-url",
            &format!("http://127.0.0.1:{port}"),
            "--attempt-timeout",
            "2",
            "--max-attempts",
            "2",
        ]));
    let elapsed = started.elapsed();
    assert!(!out.status.success());
    assert!(elapsed < Duration::from_secs(20), "took {elapsed:?}");
    let log = stderr(&out);
    assert!(log.contains("Timeout"), "{log}");
    drop(silent);
}
