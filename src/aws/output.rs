//! What an upload leaves behind for people and pipelines: the result as
//! JSON, `ami-latest.txt`, and a Packer-compatible `packer-manifest.json`
//! (appended, as Packer does, so CI that parses Packer output keeps working).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Value, json};

use super::publish::{RegionResult, SourceImage};

pub const PACKER_MANIFEST: &str = "packer-manifest.json";
pub const AMI_LATEST: &str = "ami-latest.txt";

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} exists but is not a Packer manifest ({reason}); move it away or pass another --output-dir"
    )]
    NotAManifest { path: PathBuf, reason: String },
}

/// The whole result of an upload (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct UploadResult {
    /// None with --no-register.
    pub ami_id: Option<String>,
    pub name: Option<String>,
    pub region: String,
    pub snapshot_id: String,
    /// The image's sha256 (tagged `imgforge:image-sha256` on the snapshot
    /// and every AMI).
    pub image_sha256: String,
    /// The image family (tagged `imgforge:family`).
    pub family: String,
    /// The image's SBOM documents' sha256 by tag name
    /// (`imgforge:sbom-spdx-sha256`, `imgforge:sbom-cdx-sha256`), tagged on
    /// the snapshot and every AMI; empty when no SBOM could be made for the
    /// image or an existing AMI was reused.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub sbom_sha256: std::collections::BTreeMap<String, String>,
    /// `--instance-types`: each type's verdict.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub instance_types: Vec<crate::aws::ami::instance_types::TypeCheck>,
    /// An AMI of this name holding the same image existed and was reused;
    /// nothing was uploaded.
    pub reused_existing_ami: bool,
    /// The AMI this run replaced (--force-deregister).
    pub replaced_ami_id: Option<String>,
    /// This run continued a snapshot an earlier run started.
    pub resumed: bool,
    pub image: PathBuf,
    pub image_size_bytes: u64,
    pub volume_size_gib: u64,
    pub encrypted: bool,
    pub architecture: String,
    pub boot_mode: Option<String>,
    /// The snapshot this one is incremental to (--parent).
    pub parent_snapshot_id: Option<String>,
    /// Blocks of the image that hold data (not all zeros).
    pub data_blocks: u64,
    /// Data blocks not written because the parent holds the same (delta).
    pub blocks_unchanged: u64,
    /// Blocks the snapshot was written with (its ChangedBlocksCount); for
    /// a delta, the changed ones and those that became zeros.
    pub blocks_total: u64,
    /// Blocks sent by this run.
    pub blocks_sent: u64,
    /// Blocks an earlier run had already confirmed.
    pub blocks_already_confirmed: u64,
    /// Image bytes read by this run.
    pub bytes_read: u64,
    pub elapsed_seconds: f64,
    /// Data sent by this run over the upload phase's duration.
    pub upload_mib_per_second: f64,
    /// Every region's AMI (the source region's and each copy's), sorted by
    /// region; empty with --no-register.
    pub regions: Vec<RegionResult>,
}

impl UploadResult {
    /// The snapshot's figures, in the log.
    pub fn log_summary(&self) {
        log::info!(
            "snapshot {}: {} blocks written ({} of the image's {} data blocks unchanged from the \
    parent), {} sent by this run ({:.1} MiB/s), {} already confirmed",
            self.snapshot_id,
            self.blocks_total,
            self.blocks_unchanged,
            self.data_blocks,
            self.blocks_sent,
            self.upload_mib_per_second,
            self.blocks_already_confirmed
        );
    }

    /// The AMI publishing starts from; None without one (--no-register).
    pub fn source_image(&self) -> Option<SourceImage> {
        Some(SourceImage {
            image_id: self.ami_id.clone()?,
            name: self.name.clone()?,
            region: self.region.clone(),
            snapshot_id: (!self.snapshot_id.is_empty()).then(|| self.snapshot_id.clone()),
        })
    }

    /// Regions that have their AMI, and regions that failed with the reason.
    pub fn succeeded_and_failed(&self) -> (Vec<String>, Vec<(String, String)>) {
        let mut succeeded = Vec::new();
        let mut failed = Vec::new();
        for region in &self.regions {
            match &region.error {
                None => succeeded.push(region.region.clone()),
                Some(err) => failed.push((region.region.clone(), err.clone())),
            }
        }
        (succeeded, failed)
    }

    /// Packer's artifact_id: `region:ami,region:ami`, sorted by region.
    pub fn artifact_id(&self) -> String {
        let mut pairs: Vec<(String, String)> = self
            .regions
            .iter()
            .filter(|r| r.error.is_none())
            .filter_map(|r| Some((r.region.clone(), r.ami_id.clone()?)))
            .collect();
        if pairs.is_empty() {
            pairs.push((self.region.clone(), self.ami_id.clone().unwrap_or_default()));
        }
        pairs.sort();
        pairs
            .iter()
            .map(|(r, a)| format!("{r}:{a}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> OutputError + '_ {
    move |source| OutputError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `contents` to `path` through a sibling file and a rename, so a
/// reader never sees half a file.
fn replace_file(path: &Path, contents: &[u8]) -> Result<(), OutputError> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut file = std::fs::File::create(&tmp).map_err(write_err(path))?;
    file.write_all(contents).map_err(write_err(path))?;
    file.sync_all().map_err(write_err(path))?;
    std::fs::rename(&tmp, path).map_err(write_err(path))
}

pub fn write_ami_latest(dir: &Path, ami_id: &str) -> Result<PathBuf, OutputError> {
    let path = dir.join(AMI_LATEST);
    replace_file(&path, format!("{ami_id}\n").as_bytes())?;
    Ok(path)
}

/// Appends one build to `packer-manifest.json`:
/// `{"builds":[{name, builder_type, build_time, files, artifact_id,
/// packer_run_uuid, custom_data}], "last_run_uuid"}`.
pub fn append_packer_manifest(
    dir: &Path,
    result: &UploadResult,
    build_time: u64,
) -> Result<PathBuf, OutputError> {
    let path = dir.join(PACKER_MANIFEST);
    let mut manifest: Value = match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| OutputError::NotAManifest {
            path: path.clone(),
            reason: e.to_string(),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => json!({"builds": []}),
        Err(source) => return Err(OutputError::Write { path, source }),
    };
    let Some(builds) = manifest.get_mut("builds").and_then(Value::as_array_mut) else {
        return Err(OutputError::NotAManifest {
            path,
            reason: "no `builds` array".into(),
        });
    };
    let run_uuid = uuid::Uuid::new_v4().to_string();
    builds.push(json!({
        "name": result.name.as_deref().unwrap_or("imgforge"),
        "builder_type": "imgforge-upload",
        "build_time": build_time,
        "files": null,
        "artifact_id": result.artifact_id(),
        "packer_run_uuid": run_uuid,
        "custom_data": {
            "snapshot_id": result.snapshot_id,
            "image": result.image,
            "boot_mode": result.boot_mode,
            "architecture": result.architecture,
            "reused_existing_ami": result.reused_existing_ami,
            "source_region": result.region,
        },
    }));
    manifest["last_run_uuid"] = Value::String(run_uuid);
    let text = serde_json::to_string_pretty(&manifest).expect("manifest serializes") + "\n";
    replace_file(&path, text.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(ami: &str) -> UploadResult {
        UploadResult {
            image_sha256: "ab".repeat(32),
            family: "f".into(),
            sbom_sha256: Default::default(),
            instance_types: Vec::new(),
            ami_id: Some(ami.into()),
            name: Some("n".into()),
            region: "us-east-1".into(),
            snapshot_id: "snap-1".into(),
            reused_existing_ami: false,
            replaced_ami_id: None,
            resumed: false,
            image: "i.raw".into(),
            image_size_bytes: 1,
            volume_size_gib: 1,
            encrypted: false,
            architecture: "x86_64".into(),
            boot_mode: Some("uefi".into()),
            parent_snapshot_id: None,
            data_blocks: 1,
            blocks_unchanged: 0,
            blocks_total: 1,
            blocks_sent: 1,
            blocks_already_confirmed: 0,
            bytes_read: 1,
            elapsed_seconds: 1.0,
            upload_mib_per_second: 1.0,
            regions: Vec::new(),
        }
    }

    #[test]
    fn packer_manifest_appends() {
        let dir = tempfile::tempdir().unwrap();
        append_packer_manifest(dir.path(), &result("ami-1"), 10).unwrap();
        append_packer_manifest(dir.path(), &result("ami-2"), 11).unwrap();
        let text = std::fs::read_to_string(dir.path().join(PACKER_MANIFEST)).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        let builds = v["builds"].as_array().unwrap();
        assert_eq!(builds.len(), 2);
        assert_eq!(builds[0]["artifact_id"], "us-east-1:ami-1");
        assert_eq!(builds[1]["artifact_id"], "us-east-1:ami-2");
        assert_eq!(v["last_run_uuid"], builds[1]["packer_run_uuid"]);

        let mut multi = result("ami-1");
        for (region, ami) in [
            ("us-west-2", "ami-3"),
            ("eu-west-1", "ami-2"),
            ("us-east-1", "ami-1"),
        ] {
            let mut r = RegionResult::new(region);
            r.ami_id = Some(ami.into());
            multi.regions.push(r);
        }
        assert_eq!(
            multi.artifact_id(),
            "eu-west-1:ami-2,us-east-1:ami-1,us-west-2:ami-3"
        );

        std::fs::write(dir.path().join(PACKER_MANIFEST), "[]").unwrap();
        assert!(append_packer_manifest(dir.path(), &result("ami-3"), 12).is_err());
    }
}
