//! UEFI variable stores read by independent tools: AWS's python-uefivars
//! for UefiData blobs, virt-firmware's virt-fw-vars for edk2 stores.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::text;

/// The Secure Boot variables.
pub const SECURE_BOOT_NAMES: [&str; 4] = ["PK", "KEK", "db", "dbx"];

/// One variable as the independent tools print it: GUID, attributes, the
/// data's sha256 and the EFI_TIME (hex).
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Var {
    pub guid: String,
    pub attr: u64,
    pub data_sha256: String,
    pub time: String,
    pub data: Vec<u8>,
}

pub fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn var_of(v: &Value, time_key: &str) -> Var {
    let data = hex::decode(v["data"].as_str().unwrap()).unwrap();
    Var {
        guid: v["guid"].as_str().unwrap().to_lowercase(),
        attr: v["attr"].as_u64().unwrap(),
        data_sha256: hex::encode(Sha256::digest(&data)),
        time: v[time_key].as_str().unwrap_or_default().to_string(),
        data,
    }
}

/// A UefiData blob's variables, decoded by python-uefivars.
pub fn decode_blob(dir: &Path, blob: &str) -> BTreeMap<String, Var> {
    let input = dir.join("blob.b64");
    let output = dir.join("blob.json");
    std::fs::write(&input, blob).unwrap();
    let (input, output_arg) = (input.to_str().unwrap(), output.to_str().unwrap());
    tool(
        "uefivars",
        &["-i", "aws", "-I", input, "-o", "json", "-O", output_arg],
    );
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&output).unwrap()).unwrap();
    json["variables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_string(),
                var_of(v, "timestamp"),
            )
        })
        .collect()
}

/// An edk2 store's variables, read by virt-fw-vars.
pub fn read_store(dir: &Path, store: &Path) -> BTreeMap<String, Var> {
    let output = dir.join("store.json");
    tool(
        "virt-fw-vars",
        &[
            "-i",
            store.to_str().unwrap(),
            "--output-json",
            output.to_str().unwrap(),
        ],
    );
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&output).unwrap()).unwrap();
    json["variables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap().to_string(), var_of(v, "time")))
        .collect()
}

pub fn secure_boot_only(vars: &BTreeMap<String, Var>) -> BTreeMap<String, Var> {
    vars.iter()
        .filter(|(name, _)| SECURE_BOOT_NAMES.contains(&name.as_str()))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect()
}
