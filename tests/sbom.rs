//! SBOMs: the build writes `IMAGE.spdx.json` (SPDX 2.3) and `IMAGE.cdx.json`
//! (CycloneDX 1.5) beside the image and the same bytes inside it;
//! `imgforge sbom IMAGE` writes them again for an existing image, byte for
//! byte. Both documents pass independent validators (pyspdxtools, and
//! cyclonedx-python-lib's strict JSON validation), and list exactly the
//! packages of the image's own dpkg database, read here with debugfs.
//!
//! Needs root (the shared image's build), debugfs and the validators
//! (`.ci/setup` installs them; under CI=true a missing one fails the test).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::{BUILD, IMGFORGE, Need, prerequisites, text};
use serde_json::Value;

const VALIDATORS: &[Need] = &[Need::Tool("pyspdxtools"), Need::Tool("debugfs")];

/// A file of the image's root filesystem, through debugfs (no mount).
fn root_file(image: &Path, manifest: &Value, path: &str) -> String {
    let first_lba = manifest["disk"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["filesystem"] == "ext4")
        .unwrap()["first_lba"]
        .as_u64()
        .unwrap();
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(format!("{}?offset={}", image.display(), first_lba * 512))
        .output()
        .unwrap();
    assert!(out.status.success(), "debugfs cat {path}: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// (name, version, architecture) of every installed package in a dpkg
/// status file: this test's own reading of it.
fn dpkg_installed(status: &str) -> BTreeSet<(String, String, String)> {
    status
        .split("\n\n")
        .filter(|p| p.lines().any(|l| l == "Status: install ok installed"))
        .map(|p| {
            let get = |key: &str| {
                p.lines()
                    .find_map(|l| l.strip_prefix(key))
                    .map(|v| v.trim().to_string())
                    .unwrap_or_default()
            };
            (get("Package:"), get("Version:"), get("Architecture:"))
        })
        .collect()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn sboms_are_valid_reproducible_and_list_the_dpkg_database() {
    if !prerequisites(
        "sboms_are_valid_reproducible_and_list_the_dpkg_database",
        &[BUILD, VALIDATORS],
    ) {
        return;
    }
    let shared = common::image::debian_small();
    let manifest = &shared.manifest;
    let dir = common::scratch("imgforge-sbom-");

    // `imgforge sbom` twice: the same bytes, also the build's (beside the
    // image and inside it).
    let sbom = |out_dir: &Path| -> Value {
        std::fs::create_dir_all(out_dir).unwrap();
        let out = Command::new(IMGFORGE)
            .arg("sbom")
            .arg(&shared.path)
            .arg("-o")
            .arg(out_dir)
            .arg("--json")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let first = sbom(&dir.path().join("a"));
    let second = sbom(&dir.path().join("b"));
    assert_eq!(first["spdx_sha256"], second["spdx_sha256"]);
    assert_eq!(first["cyclonedx_sha256"], second["cyclonedx_sha256"]);
    let spdx_path = Path::new(first["spdx"].as_str().unwrap()).to_path_buf();
    let cdx_path = Path::new(first["cyclonedx"].as_str().unwrap()).to_path_buf();
    let spdx_bytes = std::fs::read_to_string(&spdx_path).unwrap();
    let cdx_bytes = std::fs::read_to_string(&cdx_path).unwrap();
    assert_eq!(
        spdx_bytes,
        root_file(&shared.path, manifest, "/etc/imgforge/sbom.spdx.json"),
        "the image's own copy"
    );
    assert_eq!(
        cdx_bytes,
        root_file(&shared.path, manifest, "/etc/imgforge/sbom.cdx.json")
    );
    let beside = format!("{}.spdx.json", shared.path.display());
    if std::env::var_os("IMGFORGE_TEST_IMAGE").is_none() {
        assert_eq!(spdx_bytes, std::fs::read_to_string(&beside).unwrap());
        assert_eq!(
            cdx_bytes,
            std::fs::read_to_string(format!("{}.cdx.json", shared.path.display())).unwrap()
        );
        assert_eq!(
            shared.summary["sbom"]["spdx"].as_str(),
            Some(beside.as_str())
        );
    }

    common::sbom::validate(&spdx_path, &cdx_path);

    // The package list is the image's dpkg database, exactly.
    let dpkg = dpkg_installed(&root_file(&shared.path, manifest, "/var/lib/dpkg/status"));
    assert!(dpkg.len() > 100, "{} packages", dpkg.len());
    let cdx = read_json(&cdx_path);
    let components = cdx["components"].as_array().unwrap();
    let property = common::sbom::cdx_property;
    let listed: BTreeSet<(String, String, String)> = components
        .iter()
        .filter(|c| c["type"] == "library")
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["version"].as_str().unwrap().to_string(),
                property(c, "imgforge:architecture"),
            )
        })
        .collect();
    assert_eq!(
        listed, dpkg,
        "CycloneDX components vs the image's dpkg status"
    );
    let spdx = read_json(&spdx_path);
    let spdx_names: BTreeSet<String> = spdx["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["externalRefs"].is_array())
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    let dpkg_names: BTreeSet<String> = dpkg.iter().map(|(n, _, _)| n.clone()).collect();
    assert_eq!(spdx_names, dpkg_names, "SPDX packages vs dpkg");

    // A purl in Debian's form, the source package, a DEP-5 licence, the
    // kernel and the image; time from the build, not the clock.
    let bash = components.iter().find(|c| c["name"] == "bash").unwrap();
    let (_, version, _) = dpkg.iter().find(|(n, _, _)| n == "bash").unwrap();
    assert_eq!(
        bash["purl"],
        format!(
            "pkg:deb/debian/bash@{}?arch=amd64&distro=debian-12",
            version.replace('+', "%2B")
        )
    );
    assert_eq!(property(bash, "imgforge:source-package"), "bash");
    let zlib = components.iter().find(|c| c["name"] == "zlib1g").unwrap();
    assert_eq!(property(zlib, "imgforge:source-package"), "zlib");
    assert_eq!(zlib["licenses"][0]["license"]["id"], "Zlib", "{zlib:#}");
    let kernel = components
        .iter()
        .find(|c| c["bom-ref"] == "kernel")
        .unwrap();
    assert_eq!(kernel["version"], manifest["kernel_version"]);
    assert_eq!(cdx["metadata"]["component"]["type"], "operating-system");
    let epoch = manifest["build_time"].as_u64().unwrap();
    let created = spdx["creationInfo"]["created"].as_str().unwrap();
    assert_eq!(created, cdx["metadata"]["timestamp"].as_str().unwrap());
    let date = Command::new("date")
        .args(["-u", "-d", &format!("@{epoch}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    assert_eq!(created, text(&date).trim(), "the build's SOURCE_DATE_EPOCH");
}

#[test]
fn sbom_of_a_file_that_is_not_an_image_is_bad_input() {
    let dir = common::scratch("imgforge-sbom-bad-");
    let file = dir.path().join("notes.raw");
    std::fs::write(&file, vec![0u8; 1 << 20]).unwrap();
    let out = Command::new(IMGFORGE)
        .arg("sbom")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("not a GPT disk image"),
        "{}",
        text(&out)
    );
    assert!(!dir.path().join("notes.raw.spdx.json").exists());
}

#[test]
fn an_upload_tags_the_snapshot_and_ami_with_the_sbom_digests() {
    if !prerequisites(
        "an_upload_tags_the_snapshot_and_ami_with_the_sbom_digests",
        &[BUILD, &[Need::Tool("debugfs")]],
    ) {
        return;
    }
    let shared = common::image::debian_small();
    let moto = common::aws::moto();
    let dir = common::scratch("imgforge-sbom-upload-");
    let out = common::aws::run(
        common::aws::imgforge(dir.path())
            .arg("upload")
            .arg(&shared.path)
            .args(["--endpoint-url", &moto.url(), "--json"])
            .args(["--name", "sbom-tags-test", "--output-dir"])
            .arg(dir.path()),
    );
    let result = common::aws::json_stdout(&out);
    let ami = result["ami_id"].as_str().unwrap();
    let snapshot = result["snapshot_id"].as_str().unwrap();
    let tags = common::aws::boto(
        &moto.url(),
        &format!(
            "ec2 = client('ec2')\n\
             tags = lambda items: {{t['Key']: t['Value'] for t in items}}\n\
             image = ec2.describe_images(ImageIds=['{ami}'])['Images'][0]\n\
             snap = ec2.describe_snapshots(SnapshotIds=['{snapshot}'])['Snapshots'][0]\n\
             print(json.dumps({{'ami': tags(image.get('Tags', [])), \
             'snapshot': tags(snap.get('Tags', []))}}))"
        ),
    );
    // The digests of the files the build wrote beside the image: the tags
    // are made again from the image, and must match them byte for byte.
    let beside = |suffix: &str| {
        common::aws::sha256_file(Path::new(&format!("{}{suffix}", shared.path.display())))
    };
    assert_eq!(
        result["sbom_sha256"]["imgforge:sbom-spdx-sha256"],
        beside(".spdx.json").as_str(),
        "upload --json: {result:#}"
    );
    for on in ["ami", "snapshot"] {
        assert_eq!(
            tags[on]["imgforge:sbom-spdx-sha256"],
            beside(".spdx.json").as_str(),
            "{on}: {tags:#}"
        );
        assert_eq!(
            tags[on]["imgforge:sbom-cdx-sha256"],
            beside(".cdx.json").as_str(),
            "{on}: {tags:#}"
        );
    }
}
