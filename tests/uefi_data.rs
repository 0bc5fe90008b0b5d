//! EC2's UefiData (issue 23, item 3): `upload --uefi-data auto|none|FILE`
//! against moto behind the recording proxy. moto 5 drops RegisterImage's
//! UefiData (its RegisterImage keeps only the name and description, and its
//! image has no UefiData for DescribeImageAttribute `uefiData` to answer), so
//! the tests read what went on the wire, and decode it with AWS's own
//! python-uefivars, not with imgforge; edk2 stores are read with
//! virt-firmware's virt-fw-vars. `boot-test --secure-boot` booting the same
//! set is tests/secure_boot.rs.
//!
//! Needs root and mmdebstrap (one --secure-boot build from the shared
//! image's cached tree), moto, openssl, uefivars, virt-fw-vars and ovmf.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::aws::{MIB, Proxy, imgforge, make_image, moto, pattern, run, stderr};
use common::uefi::{decode_blob, read_store, secure_boot_only, tool};
use common::{BUILD, IMGFORGE, Need, prerequisites, text};
use serde_json::Value;

const MS_STORE: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";
const ARM_MS_STORE: &str = "/usr/share/AAVMF/AAVMF_VARS.ms.fd";
const TOOLS: &[Need] = &[
    Need::Tool("uefivars"),
    Need::Tool("virt-fw-vars"),
    Need::Tool("openssl"),
    Need::File(MS_STORE),
    Need::File(ARM_MS_STORE),
];

/// The subjects virt-fw-vars prints for a blob's variables (the blob made
/// into an edk2 store by uefivars): `VARIABLE: CN=...` lines.
fn subjects(dir: &Path, blob: &str) -> Vec<String> {
    let input = dir.join("subjects.b64");
    let store = dir.join("subjects.fd");
    std::fs::write(&input, blob).unwrap();
    tool(
        "uefivars",
        &[
            "-i",
            "aws",
            "-I",
            input.to_str().unwrap(),
            "-o",
            "edk2",
            "-O",
            store.to_str().unwrap(),
        ],
    );
    let printed = tool(
        "virt-fw-vars",
        &["-i", store.to_str().unwrap(), "--print", "--verbose"],
    );
    let mut current = String::new();
    let mut out = Vec::new();
    for line in printed.lines() {
        if let Some(rest) = line.strip_prefix("name=") {
            current = rest.split(' ').next().unwrap().to_string();
        } else if let Some(subject) = line.trim().strip_prefix("subject ") {
            out.push(format!("{current}: {subject}"));
        }
    }
    out
}

/// The params of every RegisterImage the proxy saw, in order.
fn registrations(proxy: &Proxy) -> Vec<Value> {
    Proxy::operations(&proxy.requests(), "RegisterImage")
        .into_iter()
        .map(|r| r["params"].clone())
        .collect()
}

/// A certificate's DER bytes (openssl reads PEM).
fn der(cert: &Path) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(cert)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    out.stdout
}

fn build_secure_boot_image(dir: &Path, name: &str) -> PathBuf {
    let image = dir.join(name);
    let out = Command::new(IMGFORGE)
        .args([
            "build",
            "--distro",
            "debian",
            "--size-class",
            "small",
            "--secure-boot",
        ])
        .arg("-o")
        .arg(&image)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    image
}

fn upload(dir: &Path, proxy: &Proxy, image: &Path, args: &[&str]) -> std::process::Output {
    run(imgforge(dir)
        .arg("upload")
        .arg(image)
        .args(["--endpoint-url", &proxy.url(), "--workers", "4"])
        .args(args))
}

#[test]
fn auto_ships_the_family_keys_and_microsofts_cas() {
    if !prerequisites(
        "auto_ships_the_family_keys_and_microsofts_cas",
        &[BUILD, TOOLS],
    ) {
        return;
    }
    let dir = common::scratch("imgforge-uefi-data-");
    let _shared = common::image::debian_small(); // its tree is the build's cache
    let image = build_secure_boot_image(dir.path(), "fleet.raw");
    let proxy = Proxy::start(moto(), dir.path(), &[]);

    // First upload of the family: keys generated, the user told where.
    let out = upload(dir.path(), &proxy, &image, &["--name", "fleet-v1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let keys = dir.path().join(".local/state/imgforge/secure-boot/fleet");
    let said = stderr(&out);
    assert!(
        said.contains(&format!(
            "generated Secure Boot keys for image family `fleet` in {}",
            keys.display()
        )),
        "{said}"
    );
    assert!(said.contains("Whoever holds PK.key controls"), "{said}");
    for key in ["PK.key", "KEK.key"] {
        let mode = std::fs::metadata(keys.join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    let registered = registrations(&proxy);
    let params = &registered[0];
    assert_eq!(params["BootMode"], "uefi", "{params:#}");
    let blob = params["UefiData"].as_str().expect("UefiData sent");
    assert!(blob.len() <= 64_000, "{} characters", blob.len());

    // python-uefivars reads exactly the four Secure Boot variables.
    let vars = decode_blob(dir.path(), blob);
    assert_eq!(vars.keys().collect::<Vec<_>>(), ["KEK", "PK", "db", "dbx"]);
    let global = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
    let security_db = "d719b2cb-3d3a-4596-a3bc-dad00e67656f";
    for (name, guid) in [
        ("PK", global),
        ("KEK", global),
        ("db", security_db),
        ("dbx", security_db),
    ] {
        assert_eq!(vars[name].guid, guid, "{name}");
        // NV | BS | RT | time-based authenticated write access.
        assert_eq!(vars[name].attr, 0x27, "{name}");
    }
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    assert!(contains(&vars["PK"].data, &der(&keys.join("PK.crt"))));
    assert!(contains(&vars["KEK"].data, &der(&keys.join("KEK.crt"))));
    // Microsoft's certificates where they belong, nothing else of the store.
    let subjects = subjects(dir.path(), blob);
    assert_eq!(
        subjects,
        [
            "KEK: CN=imgforge fleet Secure Boot KEK",
            "KEK: CN=Microsoft Corporation KEK CA 2011",
            "PK: CN=imgforge fleet Secure Boot PK",
            "db: CN=Microsoft Corporation UEFI CA 2011",
        ]
    );
    // The dbx is the one Debian's ovmf enrolled, byte for byte.
    let debian = read_store(dir.path(), Path::new(MS_STORE));
    assert_eq!(vars["dbx"].data_sha256, debian["dbx"].data_sha256);

    // The family's next AMI: the same keys, nothing generated; `none` and a
    // BIOS boot mode.
    let out = upload(dir.path(), &proxy, &image, &["--name", "fleet-v2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("generated Secure Boot keys"));
    let again = decode_blob(
        dir.path(),
        registrations(&proxy)[1]["UefiData"].as_str().unwrap(),
    );
    assert_eq!(again["PK"], vars["PK"]);
    assert_eq!(again["KEK"], vars["KEK"]);

    let out = upload(
        dir.path(),
        &proxy,
        &image,
        &["--name", "fleet-v3", "--uefi-data", "none"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let third = &registrations(&proxy)[2];
    assert_eq!(third["UefiData"], Value::Null, "{third:#}");
    assert_eq!(
        third["BootMode"], "uefi-preferred",
        "a hybrid image, as before"
    );

    let snapshots = Proxy::operations(&proxy.requests(), "StartSnapshot").len();
    let out = upload(
        dir.path(),
        &proxy,
        &image,
        &["--name", "fleet-v4", "--boot-mode", "legacy-bios"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--uefi-data: UefiData is for UEFI"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        Proxy::operations(&proxy.requests(), "StartSnapshot").len(),
        snapshots
    );
}

#[test]
fn a_store_file_is_converted_and_a_blob_is_checked() {
    if !prerequisites("a_store_file_is_converted_and_a_blob_is_checked", &[TOOLS]) {
        return;
    }
    let dir = common::scratch("imgforge-uefi-file-");
    let proxy = Proxy::start(moto(), dir.path(), &[]);
    let image = dir.path().join("file.raw");
    make_image(&image, 4 * MIB, &[(MIB, pattern(23, 50_000))]);
    let with = |name: &str, data: &Path| {
        let args = [
            "--name",
            name,
            "--arch",
            "x86_64",
            "--uefi-data",
            data.to_str().unwrap(),
        ];
        upload(dir.path(), &proxy, &image, &args)
    };

    // An edk2 store (x86's OVMF and arm64's AAVMF with Microsoft's keys):
    // its Secure Boot variables, as virt-fw-vars reads them (names, GUIDs,
    // attributes, data, times); no boot entries.
    let out = with("file-v1", Path::new(MS_STORE));
    assert!(out.status.success(), "{}", stderr(&out));
    let params = &registrations(&proxy)[0];
    assert_eq!(params["BootMode"], "uefi");
    let blob = params["UefiData"].as_str().unwrap().to_string();
    let store = read_store(dir.path(), Path::new(MS_STORE));
    assert!(store.contains_key("Boot0000"), "the store has boot entries");
    assert_eq!(decode_blob(dir.path(), &blob), secure_boot_only(&store));
    let out = with("file-arm", Path::new(ARM_MS_STORE));
    assert!(out.status.success(), "{}", stderr(&out));
    let arm_blob = registrations(&proxy)[1]["UefiData"]
        .as_str()
        .unwrap()
        .to_string();
    let arm_store = secure_boot_only(&read_store(dir.path(), Path::new(ARM_MS_STORE)));
    assert_eq!(arm_store.len(), 4);
    assert_eq!(decode_blob(dir.path(), &arm_blob), arm_store);

    // A blob: sent as it is, one imgforge made and one python-uefivars made
    // (with its preset zlib dictionary).
    let ours = dir.path().join("ours.b64");
    std::fs::write(&ours, format!("{blob}\n")).unwrap();
    let theirs = dir.path().join("theirs.b64");
    tool(
        "uefivars",
        &[
            "-i",
            "edk2",
            "-I",
            MS_STORE,
            "-o",
            "aws",
            "-O",
            theirs.to_str().unwrap(),
        ],
    );
    for (name, file) in [("file-v2", &ours), ("file-v3", &theirs)] {
        let out = with(name, file);
        assert!(out.status.success(), "{}", stderr(&out));
        let sent = registrations(&proxy).last().unwrap()["UefiData"].clone();
        let text = std::fs::read_to_string(file).unwrap();
        assert_eq!(sent.as_str().unwrap(), text.trim());
    }

    // A damaged blob, a file of neither kind, --no-register: bad input.
    let damaged = dir.path().join("damaged.b64");
    let mut bytes = base64_decode(&blob);
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&damaged, base64_encode(&bytes)).unwrap();
    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, [0xffu8, 0, 1, 2]).unwrap();
    for (file, says) in [
        (&damaged, "CRC32C"),
        (&junk, "neither an edk2 variable store"),
    ] {
        let out = with("file-v4", file);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains(says), "{}", stderr(&out));
    }
    let out = upload(
        dir.path(),
        &proxy,
        &image,
        &["--no-register", "--uefi-data", ours.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(registrations(&proxy).len(), 4);
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .unwrap()
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
